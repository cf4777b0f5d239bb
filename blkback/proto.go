// Package blkback is a userspace backend for Xen's paravirtual block
// protocol (blkif, xen/include/public/io/blkif.h), served to Linux (or any)
// blkfront from a driver domain.
//
// A request's whole path, one file per layer:
//   - proto.go: the wire layout of requests, segments and responses for both
//     ABIs (x86_32 without a protocol key, x86_64 native), decoded from a
//     private copy of the ring slot, each field read once;
//   - validate.go: everything a hostile frontend could get wrong, refused
//     with BLKIF_RSP_ERROR or BLKIF_RSP_EOPNOTSUPP (preallocated errors);
//   - queue.go: one goroutine per ring: event channel, ring.Back, copy,
//     validate, indirect segments, data pages, dispatch, respond;
//   - grants.go: persistent grants (bounded per ring, LRU purge as Linux);
//     bounce.go: the grant-copy alternative (Driver.GrantCopy);
//   - exec.go, uring_linux.go: the I/O engines (io_uring by default, a
//     worker pool otherwise); disk.go, disk_linux.go: the backing (raw file
//     or block device with O_DIRECT, the null disk);
//   - driver.go: the xenbus.Driver: probe, connect (multi-queue, multi-page
//     rings), online resize, statistics, teardown;
//   - journal.go: the crash-only journal a restarted process replays.
//
// Non-persistent grants are unmapped before the response is written.
// Statistics are Device.Stats and, as JSON, the backend key drvdom-stats
// (StatsKey), rewritten when they change.
package blkback

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Operations (BLKIF_OP_*).
const (
	OpRead           = 0
	OpWrite          = 1
	OpWriteBarrier   = 2
	OpFlushDiskcache = 3
	OpReserved1      = 4 // never valid
	OpDiscard        = 5
	OpIndirect       = 6
)

// Response status (BLKIF_RSP_*).
const (
	StatusOkay       int16 = 0
	StatusError      int16 = -1
	StatusEOPNOTSUPP int16 = -2
)

// Protocol limits.
const (
	// SectorSize is the unit of sector_number, first_sect, last_sect and
	// nr_sectors, whatever the device's logical block size.
	SectorSize = 512
	// PageSize is the Xen page size (grants are always 4 KiB).
	PageSize = 4096
	// SectorsPerPage is how many 512-byte sectors a segment page holds.
	SectorsPerPage = PageSize / SectorSize
	// MaxSegmentsPerRequest is BLKIF_MAX_SEGMENTS_PER_REQUEST.
	MaxSegmentsPerRequest = 11
	// MaxIndirectPagesPerRequest is BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST.
	MaxIndirectPagesPerRequest = 8
	// SegmentSize is sizeof(struct blkif_request_segment): gref u32,
	// first_sect u8, last_sect u8, 2 bytes of padding.
	SegmentSize = 8
	// SegmentsPerIndirectPage is how many segments one indirect page holds.
	SegmentsPerIndirectPage = PageSize / SegmentSize
	// MaxIndirectSegments is what this backend advertises in
	// feature-max-indirect-segments (Linux's MAX_INDIRECT_SEGMENTS).
	MaxIndirectSegments = 256
	// DiscardSecure is BLKIF_DISCARD_SECURE in the discard flag.
	DiscardSecure = 1 << 0
	// VDiskReadOnly is VDISK_READONLY in the info key.
	VDiskReadOnly = 0x4
	// VDiskCDROM and VDiskRemovable are VDISK_CDROM and VDISK_REMOVABLE.
	VDiskCDROM     = 0x1
	VDiskRemovable = 0x2
)

// Segment layout (struct blkif_request_segment), both ABIs.
const (
	segOffGref      = 0
	segOffFirstSect = 4
	segOffLastSect  = 5
)

// Request layouts. The union after the operation byte differs between the
// two ABIs only in the 4 bytes of padding x86_64 puts before the 64-bit id.
const (
	offOperation = 0
	offNrSegs    = 1 // rw: nr_segments u8
	offHandle    = 2 // rw: handle u16
	offFlag      = 1 // discard: flag u8
	offIndOp     = 1 // indirect: indirect_op u8
	offIndNrSegs = 2 // indirect: nr_segments u16

	// x86_64 (native here).
	off64ID        = 8
	off64Sector    = 16
	off64Segs      = 24
	off64NrSectors = 24 // discard
	off64IndHandle = 24
	off64IndGrefs  = 28
	RequestSize64  = 112
	responseSize64 = 16

	// x86_32: no padding before id.
	off32ID        = 4
	off32Sector    = 12
	off32Segs      = 20
	off32NrSectors = 20 // discard
	off32IndHandle = 20
	off32IndGrefs  = 24
	RequestSize32  = 108
	responseSize32 = 12
)

// Response layout (struct blkif_response), both ABIs.
const (
	rspOffID        = 0
	rspOffOperation = 8
	rspOffStatus    = 10
)

// ABI is the frontend's layout of requests.
type ABI uint8

const (
	// ABI64 is x86_64-abi, the native ABI of this backend.
	ABI64 ABI = iota
	// ABI32 is x86_32-abi, the ABI of a frontend that writes no protocol key.
	ABI32
)

// Protocol key values (XEN_IO_PROTO_ABI_*).
const (
	ProtoX86_32 = "x86_32-abi"
	ProtoX86_64 = "x86_64-abi"
)

// ErrProtocol is returned for an unknown protocol key.
var ErrProtocol = errors.New("blkback: unknown protocol")

// ParseProtocol maps the frontend's protocol key to an ABI. An absent key
// (empty string) means x86_32, as in Linux's BLKIF_PROTOCOL_DEFAULT.
func ParseProtocol(s string) (ABI, error) {
	switch s {
	case "", ProtoX86_32:
		return ABI32, nil
	case ProtoX86_64:
		return ABI64, nil
	}
	return 0, fmt.Errorf("%w %q", ErrProtocol, s)
}

func (a ABI) String() string {
	if a == ABI32 {
		return ProtoX86_32
	}
	return ProtoX86_64
}

// RequestSize is sizeof(union blkif_sring_entry) for the ABI: the ring entry size.
func (a ABI) RequestSize() int {
	if a == ABI32 {
		return RequestSize32
	}
	return RequestSize64
}

// Segment is one decoded blkif_request_segment.
type Segment struct {
	Gref      uint32
	FirstSect uint8
	LastSect  uint8
}

// Sectors returns how many 512-byte sectors the segment covers (valid
// segments only).
func (s Segment) Sectors() int { return int(s.LastSect) - int(s.FirstSect) + 1 }

// Request is a decoded request, copied out of the ring.
type Request struct {
	Operation  uint8
	IndirectOp uint8  // INDIRECT only
	NrSegments uint16 // rw: u8 on the wire; INDIRECT: u16
	Handle     uint16
	ID         uint64
	Sector     uint64
	NrSectors  uint64 // DISCARD only
	Flag       uint8  // DISCARD only
	Segs       [MaxSegmentsPerRequest]Segment
	// IndirectGrefs holds the indirect pages of an INDIRECT request.
	IndirectGrefs [MaxIndirectPagesPerRequest]uint32
}

// Op returns the effective operation: indirect_op for INDIRECT requests.
func (r *Request) Op() uint8 {
	if r.Operation == OpIndirect {
		return r.IndirectOp
	}
	return r.Operation
}

// ErrShort is returned when a buffer is smaller than the ABI's request.
var ErrShort = errors.New("blkback: short request buffer")

// DecodeRequest decodes a request of the given ABI from b (which must be a
// private copy: each field is read once). Segments beyond the 11 direct
// slots and the indirect segments are not decoded here. It fails only for a
// short buffer; everything else is Validate's job.
func DecodeRequest(abi ABI, b []byte, r *Request) error {
	if len(b) < abi.RequestSize() {
		return fmt.Errorf("%w: %d bytes for %v", ErrShort, len(b), abi)
	}
	offID, offSector, offSegs, offNrSectors, offIndHandle, offIndGrefs :=
		off64ID, off64Sector, off64Segs, off64NrSectors, off64IndHandle, off64IndGrefs
	if abi == ABI32 {
		offID, offSector, offSegs, offNrSectors, offIndHandle, offIndGrefs =
			off32ID, off32Sector, off32Segs, off32NrSectors, off32IndHandle, off32IndGrefs
	}
	le := binary.LittleEndian
	*r = Request{
		Operation: b[offOperation],
		ID:        le.Uint64(b[offID:]),
		Sector:    le.Uint64(b[offSector:]),
	}
	switch r.Operation {
	case OpDiscard:
		r.Flag = b[offFlag]
		r.NrSectors = le.Uint64(b[offNrSectors:])
	case OpIndirect:
		r.IndirectOp = b[offIndOp]
		r.NrSegments = le.Uint16(b[offIndNrSegs:])
		r.Handle = le.Uint16(b[offIndHandle:])
		for i := range r.IndirectGrefs {
			r.IndirectGrefs[i] = le.Uint32(b[offIndGrefs+4*i:])
		}
	default:
		r.NrSegments = uint16(b[offNrSegs])
		r.Handle = le.Uint16(b[offHandle:])
		n := int(r.NrSegments)
		if n > MaxSegmentsPerRequest {
			n = MaxSegmentsPerRequest // Validate refuses it; decode what fits
		}
		for i := 0; i < n; i++ {
			DecodeSegment(b[offSegs+SegmentSize*i:], &r.Segs[i])
		}
	}
	return nil
}

// DecodeSegment decodes one blkif_request_segment (b has at least 8 bytes).
func DecodeSegment(b []byte, s *Segment) {
	_ = b[SegmentSize-1]
	s.Gref = binary.LittleEndian.Uint32(b[segOffGref:])
	s.FirstSect = b[segOffFirstSect]
	s.LastSect = b[segOffLastSect]
}

// DecodeIndirectSegments decodes segs from indirect pages (each PageSize
// bytes, concatenated in pages); segment i lives in page i/512. Each field is
// read once, so pages may be frontend memory: segs is the private copy.
func DecodeIndirectSegments(pages []byte, segs []Segment) error {
	if len(segs)*SegmentSize > len(pages) {
		return fmt.Errorf("%w: %d indirect segments in %d bytes", ErrShort, len(segs), len(pages))
	}
	for i := range segs {
		DecodeSegment(pages[i*SegmentSize:], &segs[i])
	}
	return nil
}

// EncodeResponse writes a blkif_response into a ring slot (same layout in
// both ABIs). For INDIRECT requests op must be the indirect_op.
func EncodeResponse(b []byte, id uint64, op uint8, status int16) {
	_ = b[rspOffStatus+1]
	binary.LittleEndian.PutUint64(b[rspOffID:], id)
	b[rspOffOperation] = op
	b[rspOffOperation+1] = 0
	binary.LittleEndian.PutUint16(b[rspOffStatus:], uint16(status))
}

// Response is a decoded blkif_response (for frontends and tests).
type Response struct {
	ID        uint64
	Operation uint8
	Status    int16
}

// DecodeResponse decodes a blkif_response.
func DecodeResponse(b []byte) Response {
	_ = b[rspOffStatus+1]
	return Response{
		ID:        binary.LittleEndian.Uint64(b[rspOffID:]),
		Operation: b[rspOffOperation],
		Status:    int16(binary.LittleEndian.Uint16(b[rspOffStatus:])),
	}
}

// EncodeRequest writes r in the ABI's layout into b (a ring slot); used by
// frontends and tests. Only the fields the operation uses are written; for
// rw requests min(NrSegments, 11) segments are written.
func EncodeRequest(abi ABI, b []byte, r *Request) {
	offID, offSector, offSegs, offNrSectors, offIndHandle, offIndGrefs :=
		off64ID, off64Sector, off64Segs, off64NrSectors, off64IndHandle, off64IndGrefs
	if abi == ABI32 {
		offID, offSector, offSegs, offNrSectors, offIndHandle, offIndGrefs =
			off32ID, off32Sector, off32Segs, off32NrSectors, off32IndHandle, off32IndGrefs
	}
	clear(b[:abi.RequestSize()])
	le := binary.LittleEndian
	b[offOperation] = r.Operation
	le.PutUint64(b[offID:], r.ID)
	le.PutUint64(b[offSector:], r.Sector)
	switch r.Operation {
	case OpDiscard:
		b[offFlag] = r.Flag
		le.PutUint64(b[offNrSectors:], r.NrSectors)
	case OpIndirect:
		b[offIndOp] = r.IndirectOp
		le.PutUint16(b[offIndNrSegs:], r.NrSegments)
		le.PutUint16(b[offIndHandle:], r.Handle)
		for i, g := range r.IndirectGrefs {
			le.PutUint32(b[offIndGrefs+4*i:], g)
		}
	default:
		b[offNrSegs] = uint8(r.NrSegments)
		le.PutUint16(b[offHandle:], r.Handle)
		for i := 0; i < int(r.NrSegments) && i < MaxSegmentsPerRequest; i++ {
			EncodeSegment(b[offSegs+SegmentSize*i:], r.Segs[i])
		}
	}
}

// EncodeSegment writes one blkif_request_segment.
func EncodeSegment(b []byte, s Segment) {
	_ = b[SegmentSize-1]
	binary.LittleEndian.PutUint32(b[segOffGref:], s.Gref)
	b[segOffFirstSect] = s.FirstSect
	b[segOffLastSect] = s.LastSect
	b[segOffLastSect+1], b[segOffLastSect+2] = 0, 0
}
