package blkback

import (
	"encoding/binary"
	"testing"
)

// FuzzDecodeValidate feeds arbitrary ring slots and indirect pages, in
// either ABI, through decode and validation: nothing may panic, and an
// accepted request must stay inside the device and the segment rules.
func FuzzDecodeValidate(f *testing.F) {
	for _, abi := range []ABI{ABI32, ABI64} {
		for _, r := range []Request{
			{Operation: OpRead, NrSegments: 1, Segs: [11]Segment{{1, 0, 7}}},
			{Operation: OpWrite, NrSegments: 11, Sector: 8},
			{Operation: OpFlushDiskcache},
			{Operation: OpDiscard, Flag: 1, Sector: 8, NrSectors: 8},
			{Operation: OpIndirect, IndirectOp: OpRead, NrSegments: 256, IndirectGrefs: [8]uint32{9}},
			{Operation: OpIndirect, IndirectOp: OpWrite, NrSegments: 3},
		} {
			b := make([]byte, abi.RequestSize())
			EncodeRequest(abi, b, &r)
			page := make([]byte, PageSize)
			for i := 0; i < 512; i++ {
				EncodeSegment(page[i*8:], Segment{uint32(i), 0, 7})
			}
			f.Add(uint8(abi), b, page, uint64(1<<20), uint8(0), false)
		}
	}
	f.Fuzz(func(t *testing.T, abiB uint8, slot, pages []byte, sectors uint64, shift uint8, ro bool) {
		abi := ABI(abiB & 1)
		g := &Geometry{Sectors: sectors, LogicalBlock: 512 << (shift % 4), ReadOnly: ro, Discard: shift&4 != 0, SecureDiscard: shift&8 != 0}
		var r Request
		if err := DecodeRequest(abi, slot, &r); err != nil {
			if len(slot) >= abi.RequestSize() {
				t.Fatalf("decode failed on %d bytes: %v", len(slot), err)
			}
			return
		}
		if err := ValidateHeader(&r, g); err != nil {
			if StatusOf(err) == StatusOkay {
				t.Fatal("error with okay status")
			}
			return
		}
		if r.Operation == OpDiscard {
			if r.Sector+r.NrSectors < r.Sector || r.Sector+r.NrSectors > sectors {
				t.Fatalf("discard out of range accepted: %+v", r)
			}
			return
		}
		if g.ReadOnly && r.Op() != OpRead {
			t.Fatalf("write accepted on read-only: %+v", r)
		}
		segs := r.Segs[:min(int(r.NrSegments), MaxSegmentsPerRequest)]
		if r.Operation == OpIndirect {
			var ind [MaxIndirectSegments]Segment
			segs = ind[:r.NrSegments]
			if err := DecodeIndirectSegments(pages, segs); err != nil {
				return
			}
		}
		n, err := ValidateSegments(&r, segs, g)
		if err != nil {
			return
		}
		var sum uint64
		for _, s := range segs {
			if s.LastSect > 7 || s.FirstSect > s.LastSect {
				t.Fatalf("bad segment accepted: %+v", s)
			}
			sum += uint64(s.Sectors())
		}
		if sum != n || (n > 0 && (r.Sector+n > sectors || r.Sector+n < r.Sector)) {
			t.Fatalf("range accepted: sector %d + %d of %d", r.Sector, n, sectors)
		}
		if k := uint64(g.LogicalBlock / 512); n > 0 && (r.Sector%k != 0 || n%k != 0) {
			t.Fatalf("misaligned accepted: sector %d n %d block %d", r.Sector, n, g.LogicalBlock)
		}
		// The response for this request encodes and decodes back.
		rsp := make([]byte, 16)
		EncodeResponse(rsp, r.ID, r.Op(), StatusOkay)
		if d := DecodeResponse(rsp); d.ID != r.ID || d.Operation != r.Op() || binary.LittleEndian.Uint16(rsp[10:]) != 0 {
			t.Fatalf("response %+v", d)
		}
	})
}
