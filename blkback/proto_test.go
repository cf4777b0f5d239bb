package blkback

import (
	"encoding/binary"
	"errors"
	"testing"
)

// TestLayoutPinned pins the wire numbers to xen/include/public/io/blkif.h and
// Linux's drivers/block/xen-blkback/common.h (blkif_x86_{32,64}_request*).
func TestLayoutPinned(t *testing.T) {
	pins := []struct {
		name      string
		got, want int
	}{
		{"BLKIF_OP_READ", OpRead, 0},
		{"BLKIF_OP_WRITE", OpWrite, 1},
		{"BLKIF_OP_WRITE_BARRIER", OpWriteBarrier, 2},
		{"BLKIF_OP_FLUSH_DISKCACHE", OpFlushDiskcache, 3},
		{"BLKIF_OP_RESERVED_1", OpReserved1, 4},
		{"BLKIF_OP_DISCARD", OpDiscard, 5},
		{"BLKIF_OP_INDIRECT", OpIndirect, 6},
		{"BLKIF_RSP_OKAY", int(StatusOkay), 0},
		{"BLKIF_RSP_ERROR", int(StatusError), -1},
		{"BLKIF_RSP_EOPNOTSUPP", int(StatusEOPNOTSUPP), -2},
		{"BLKIF_MAX_SEGMENTS_PER_REQUEST", MaxSegmentsPerRequest, 11},
		{"BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST", MaxIndirectPagesPerRequest, 8},
		{"sizeof(blkif_request_segment)", SegmentSize, 8},
		{"SEGS_PER_INDIRECT_FRAME", SegmentsPerIndirectPage, 512},
		{"MAX_INDIRECT_SEGMENTS", MaxIndirectSegments, 256},
		{"BLKIF_DISCARD_SECURE", DiscardSecure, 1},
		{"VDISK_CDROM", VDiskCDROM, 1},
		{"VDISK_REMOVABLE", VDiskRemovable, 2},
		{"VDISK_READONLY", VDiskReadOnly, 4},
		{"segment.gref", segOffGref, 0},
		{"segment.first_sect", segOffFirstSect, 4},
		{"segment.last_sect", segOffLastSect, 5},
		{"x86_64 sizeof(blkif_request)", RequestSize64, 112},
		{"x86_64 rw.id", off64ID, 8},
		{"x86_64 rw.sector_number", off64Sector, 16},
		{"x86_64 rw.seg", off64Segs, 24},
		{"x86_64 rw end", off64Segs + MaxSegmentsPerRequest*SegmentSize, 112},
		{"x86_64 discard.nr_sectors", off64NrSectors, 24},
		{"x86_64 indirect.handle", off64IndHandle, 24},
		{"x86_64 indirect.indirect_grefs", off64IndGrefs, 28},
		{"x86_64 sizeof(blkif_response)", responseSize64, 16},
		{"x86_32 sizeof(blkif_request)", RequestSize32, 108},
		{"x86_32 rw.id", off32ID, 4},
		{"x86_32 rw.sector_number", off32Sector, 12},
		{"x86_32 rw.seg", off32Segs, 20},
		{"x86_32 rw end", off32Segs + MaxSegmentsPerRequest*SegmentSize, 108},
		{"x86_32 discard.nr_sectors", off32NrSectors, 20},
		{"x86_32 indirect.handle", off32IndHandle, 20},
		{"x86_32 indirect.indirect_grefs", off32IndGrefs, 24},
		{"x86_32 sizeof(blkif_response)", responseSize32, 12},
		{"response.id", rspOffID, 0},
		{"response.operation", rspOffOperation, 8},
		{"response.status", rspOffStatus, 10},
		{"nr_segments", offNrSegs, 1},
		{"handle", offHandle, 2},
		{"discard.flag", offFlag, 1},
		{"indirect.indirect_op", offIndOp, 1},
		{"indirect.nr_segments", offIndNrSegs, 2},
	}
	for _, p := range pins {
		if p.got != p.want {
			t.Errorf("%s = %d, blkif.h says %d", p.name, p.got, p.want)
		}
	}
	// The indirect grefs end inside the request in both ABIs.
	if end := off64IndGrefs + 4*MaxIndirectPagesPerRequest; end > RequestSize64 {
		t.Errorf("x86_64 indirect grefs end at %d", end)
	}
	if end := off32IndGrefs + 4*MaxIndirectPagesPerRequest; end > RequestSize32 {
		t.Errorf("x86_32 indirect grefs end at %d", end)
	}
	// 32 blkif entries fit a one-page ring in both ABIs.
	for _, a := range []ABI{ABI32, ABI64} {
		if n := (PageSize - 64) / a.RequestSize(); n < 32 || n >= 64 {
			t.Errorf("%v: %d entries per page before rounding", a, n)
		}
	}
}

func TestParseProtocol(t *testing.T) {
	for in, want := range map[string]ABI{"": ABI32, "x86_32-abi": ABI32, "x86_64-abi": ABI64} {
		got, err := ParseProtocol(in)
		if err != nil || got != want {
			t.Errorf("ParseProtocol(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseProtocol("arm-abi"); !errors.Is(err, ErrProtocol) {
		t.Errorf("ParseProtocol(arm-abi) = %v, want ErrProtocol", err)
	}
}

// TestDecodeHandBuilt decodes requests laid out by hand from the C structs,
// not through EncodeRequest, so an offset mistake in both cannot cancel out.
func TestDecodeHandBuilt(t *testing.T) {
	le := binary.LittleEndian
	// x86_64 write, 2 segments.
	b := make([]byte, 112)
	b[0], b[1] = OpWrite, 2
	le.PutUint16(b[2:], 0xabcd)
	le.PutUint64(b[8:], 0x1122334455667788)
	le.PutUint64(b[16:], 4096)
	le.PutUint32(b[24:], 77)
	b[28], b[29] = 1, 6
	le.PutUint32(b[32:], 78)
	b[36], b[37] = 0, 7
	var r Request
	if err := DecodeRequest(ABI64, b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Operation != OpWrite || r.NrSegments != 2 || r.Handle != 0xabcd || r.ID != 0x1122334455667788 ||
		r.Sector != 4096 || r.Segs[0] != (Segment{77, 1, 6}) || r.Segs[1] != (Segment{78, 0, 7}) {
		t.Errorf("x86_64 rw decoded as %+v", r)
	}
	// x86_32 read: id at 4, sector at 12, segments at 20.
	b = make([]byte, 108)
	b[0], b[1] = OpRead, 1
	le.PutUint64(b[4:], 99)
	le.PutUint64(b[12:], 8)
	le.PutUint32(b[20:], 5)
	b[24], b[25] = 0, 7
	if err := DecodeRequest(ABI32, b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Operation != OpRead || r.ID != 99 || r.Sector != 8 || r.Segs[0] != (Segment{5, 0, 7}) {
		t.Errorf("x86_32 rw decoded as %+v", r)
	}
	// x86_32 discard: flag at 1, nr_sectors at 20.
	b = make([]byte, 108)
	b[0], b[1] = OpDiscard, DiscardSecure
	le.PutUint64(b[4:], 7)
	le.PutUint64(b[12:], 64)
	le.PutUint64(b[20:], 128)
	if err := DecodeRequest(ABI32, b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Flag != DiscardSecure || r.ID != 7 || r.Sector != 64 || r.NrSectors != 128 {
		t.Errorf("x86_32 discard decoded as %+v", r)
	}
	// x86_64 indirect: indirect_op 1, nr_segments u16 at 2, grefs at 28.
	b = make([]byte, 112)
	b[0], b[1] = OpIndirect, OpWrite
	le.PutUint16(b[2:], 256)
	le.PutUint64(b[8:], 5)
	le.PutUint64(b[16:], 1024)
	le.PutUint16(b[24:], 3)
	le.PutUint32(b[28:], 1000)
	le.PutUint32(b[28+28:], 1007)
	if err := DecodeRequest(ABI64, b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Op() != OpWrite || r.NrSegments != 256 || r.ID != 5 || r.Sector != 1024 || r.Handle != 3 ||
		r.IndirectGrefs[0] != 1000 || r.IndirectGrefs[7] != 1007 {
		t.Errorf("x86_64 indirect decoded as %+v", r)
	}
	// x86_32 indirect: grefs at 24.
	b = make([]byte, 108)
	b[0], b[1] = OpIndirect, OpRead
	le.PutUint16(b[2:], 12)
	le.PutUint64(b[4:], 6)
	le.PutUint32(b[24:], 2000)
	if err := DecodeRequest(ABI32, b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Op() != OpRead || r.NrSegments != 12 || r.ID != 6 || r.IndirectGrefs[0] != 2000 {
		t.Errorf("x86_32 indirect decoded as %+v", r)
	}
	if err := DecodeRequest(ABI64, make([]byte, 108), &r); !errors.Is(err, ErrShort) {
		t.Errorf("short buffer: %v", err)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, abi := range []ABI{ABI32, ABI64} {
		reqs := []Request{
			{Operation: OpRead, NrSegments: 11, ID: 1<<63 | 3, Sector: 1 << 40, Handle: 9},
			{Operation: OpDiscard, Flag: 1, ID: 2, Sector: 8, NrSectors: 16},
			{Operation: OpIndirect, IndirectOp: OpWrite, NrSegments: 200, ID: 4, Sector: 16, Handle: 2,
				IndirectGrefs: [8]uint32{1, 2, 3, 4, 5, 6, 7, 8}},
		}
		for i := range reqs[0].Segs {
			reqs[0].Segs[i] = Segment{uint32(i + 100), uint8(i % 8), 7}
		}
		for _, want := range reqs {
			b := make([]byte, abi.RequestSize())
			EncodeRequest(abi, b, &want)
			var got Request
			if err := DecodeRequest(abi, b, &got); err != nil || got != want {
				t.Errorf("%v: round trip %+v -> %+v (%v)", abi, want, got, err)
			}
		}
	}
	b := make([]byte, 16)
	EncodeResponse(b, 0xdeadbeefcafe, OpRead, StatusEOPNOTSUPP)
	if r := DecodeResponse(b); r != (Response{0xdeadbeefcafe, OpRead, StatusEOPNOTSUPP}) {
		t.Errorf("response round trip: %+v", r)
	}
	if binary.LittleEndian.Uint16(b[10:]) != 0xfffe {
		t.Errorf("status bytes %x", b[10:12])
	}
}

func geom() *Geometry {
	return &Geometry{Sectors: 1 << 20, LogicalBlock: 512, Discard: true}
}

func TestValidate(t *testing.T) {
	seg := func(first, last uint8) Segment { return Segment{Gref: 1, FirstSect: first, LastSect: last} }
	cases := []struct {
		name string
		r    Request
		segs []Segment
		g    func(*Geometry)
		want error
	}{
		{"read ok", Request{Operation: OpRead, NrSegments: 1, Sector: 0}, []Segment{seg(0, 7)}, nil, nil},
		{"read 0 segs", Request{Operation: OpRead}, nil, nil, ErrNrSegments},
		{"write 12 segs", Request{Operation: OpWrite, NrSegments: 12}, nil, nil, ErrNrSegments},
		{"flush 0 segs", Request{Operation: OpFlushDiskcache, Sector: 1 << 62}, nil, nil, nil},
		{"barrier 0 segs", Request{Operation: OpWriteBarrier}, nil, nil, nil},
		{"reserved op", Request{Operation: OpReserved1, NrSegments: 1}, nil, nil, ErrUnknownOp},
		{"op 200", Request{Operation: 200}, nil, nil, ErrUnknownOp},
		{"last > 7", Request{Operation: OpRead, NrSegments: 1}, []Segment{seg(0, 8)}, nil, ErrSegmentSectors},
		{"first > last", Request{Operation: OpRead, NrSegments: 1}, []Segment{seg(5, 4)}, nil, ErrSegmentSectors},
		{"end of device", Request{Operation: OpRead, NrSegments: 1, Sector: 1<<20 - 8}, []Segment{seg(0, 7)}, nil, nil},
		{"past the end", Request{Operation: OpRead, NrSegments: 1, Sector: 1<<20 - 7}, []Segment{seg(0, 7)}, nil, ErrOutOfRange},
		{"wraps", Request{Operation: OpRead, NrSegments: 1, Sector: ^uint64(0) - 2}, []Segment{seg(0, 7)}, nil, ErrOutOfRange},
		{"ro write", Request{Operation: OpWrite, NrSegments: 1}, []Segment{seg(0, 7)}, func(g *Geometry) { g.ReadOnly = true }, ErrReadOnly},
		{"ro read", Request{Operation: OpRead, NrSegments: 1}, []Segment{seg(0, 7)}, func(g *Geometry) { g.ReadOnly = true }, nil},
		{"ro flush", Request{Operation: OpFlushDiskcache}, nil, func(g *Geometry) { g.ReadOnly = true }, ErrReadOnly},
		{"ro discard", Request{Operation: OpDiscard, NrSectors: 8}, nil, func(g *Geometry) { g.ReadOnly = true }, ErrReadOnly},
		{"ro indirect write", Request{Operation: OpIndirect, IndirectOp: OpWrite, NrSegments: 1}, nil, func(g *Geometry) { g.ReadOnly = true }, ErrReadOnly},
		{"discard ok", Request{Operation: OpDiscard, Sector: 8, NrSectors: 1<<20 - 8}, nil, nil, nil},
		{"discard past end", Request{Operation: OpDiscard, Sector: 8, NrSectors: 1 << 20}, nil, nil, ErrOutOfRange},
		{"discard wraps", Request{Operation: OpDiscard, Sector: 8, NrSectors: ^uint64(0)}, nil, nil, ErrOutOfRange},
		{"discard off", Request{Operation: OpDiscard}, nil, func(g *Geometry) { g.Discard = false }, ErrNoDiscard},
		{"secure discard off", Request{Operation: OpDiscard, Flag: DiscardSecure}, nil, nil, ErrNoSecureDiscard},
		{"secure discard on", Request{Operation: OpDiscard, Flag: DiscardSecure, NrSectors: 8}, nil, func(g *Geometry) { g.SecureDiscard = true }, nil},
		{"indirect 256", Request{Operation: OpIndirect, IndirectOp: OpRead, NrSegments: 256}, nil, nil, nil},
		{"indirect 257", Request{Operation: OpIndirect, IndirectOp: OpRead, NrSegments: 257}, nil, nil, ErrNrSegments},
		{"indirect 0", Request{Operation: OpIndirect, IndirectOp: OpRead}, nil, nil, ErrNrSegments},
		{"indirect flush", Request{Operation: OpIndirect, IndirectOp: OpFlushDiskcache, NrSegments: 1}, nil, nil, ErrBadIndirectOp},
		{"indirect indirect", Request{Operation: OpIndirect, IndirectOp: OpIndirect, NrSegments: 1}, nil, nil, ErrBadIndirectOp},
		{"4k ok", Request{Operation: OpRead, NrSegments: 2, Sector: 8}, []Segment{seg(0, 7), seg(0, 7)}, func(g *Geometry) { g.LogicalBlock = 4096 }, nil},
		{"4k partial segment", Request{Operation: OpRead, NrSegments: 1, Sector: 8}, []Segment{seg(0, 3)}, func(g *Geometry) { g.LogicalBlock = 4096 }, ErrMisaligned},
		{"4k offset segment", Request{Operation: OpRead, NrSegments: 1, Sector: 8}, []Segment{seg(1, 7)}, func(g *Geometry) { g.LogicalBlock = 4096 }, ErrMisaligned},
		{"4k sector", Request{Operation: OpRead, NrSegments: 1, Sector: 4}, []Segment{seg(0, 7)}, func(g *Geometry) { g.LogicalBlock = 4096 }, ErrMisaligned},
		{"4k discard", Request{Operation: OpDiscard, Sector: 4, NrSectors: 8}, nil, func(g *Geometry) { g.LogicalBlock = 4096 }, ErrMisaligned},
	}
	for _, c := range cases {
		g := geom()
		if c.g != nil {
			c.g(g)
		}
		err := ValidateHeader(&c.r, g)
		if err == nil && c.r.Operation != OpDiscard {
			_, err = ValidateSegments(&c.r, c.segs, g)
		}
		if err != c.want {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	if StatusOf(ErrUnknownOp) != StatusEOPNOTSUPP || StatusOf(ErrOutOfRange) != StatusError ||
		StatusOf(nil) != StatusOkay || StatusOf(errors.New("x")) != StatusError {
		t.Error("StatusOf mapping")
	}
}

func TestValidateSectorsCount(t *testing.T) {
	r := Request{Operation: OpWrite, NrSegments: 3, Sector: 16}
	segs := []Segment{{1, 2, 7}, {2, 0, 7}, {3, 0, 0}}
	n, err := ValidateSegments(&r, segs, geom())
	if err != nil || n != 6+8+1 {
		t.Errorf("got %d, %v; want 15 sectors", n, err)
	}
}
