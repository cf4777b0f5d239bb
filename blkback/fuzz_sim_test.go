package blkback_test

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"drvdom/blkback"
)

// FuzzBackendRequest puts arbitrary ring slots (and an arbitrary indirect
// page the slot may point at) on a live backend in the simulator, on both
// ABIs: every request must be answered, with its own id, the right echoed
// operation and a defined status, and the backend must keep serving.
func FuzzBackendRequest(f *testing.F) {
	e := newEnv(f, func(d *blkback.Driver) { d.StatsInterval, d.ResizeInterval, d.MaxPersistentGrants = -1, -1, 64 })
	fronts := []*rawFront{
		newRawFrontDev(f, e, 51712, tempDisk(f, 1<<20), blkback.ProtoX86_64, true, blkback.OpRead, 1),
		newRawFrontDev(f, e, 51728, tempDisk(f, 1<<20), "", false, blkback.OpRead, 1),
	}
	for fi, rf := range fronts {
		refs := rf.share.Refs()
		ind := make([]byte, blkback.PageSize)
		for i := 0; i < 16; i++ {
			blkback.EncodeSegment(ind[i*8:], blkback.Segment{Gref: uint32(refs[2+i]), LastSect: 7})
		}
		for _, r := range []blkback.Request{
			{Operation: blkback.OpRead, NrSegments: 1, ID: 5, Segs: [11]blkback.Segment{{Gref: uint32(refs[1]), LastSect: 7}}},
			{Operation: blkback.OpWrite, NrSegments: 2, ID: 6, Sector: 8, Segs: [11]blkback.Segment{{Gref: uint32(refs[1]), FirstSect: 1, LastSect: 3}, {Gref: uint32(refs[2]), LastSect: 7}}},
			{Operation: blkback.OpIndirect, IndirectOp: blkback.OpWrite, NrSegments: 16, ID: 7, IndirectGrefs: [8]uint32{uint32(refs[0])}},
			{Operation: blkback.OpDiscard, Sector: 8, NrSectors: 8, ID: 8},
			{Operation: blkback.OpFlushDiskcache, ID: 9},
			{Operation: blkback.OpWriteBarrier, ID: 10, NrSegments: 1, Segs: [11]blkback.Segment{{Gref: uint32(refs[3]), LastSect: 7}}},
		} {
			b := make([]byte, rf.abi.RequestSize())
			blkback.EncodeRequest(rf.abi, b, &r)
			f.Add(uint8(fi), b, ind)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, slot, ind []byte) {
		rf := fronts[which&1]
		n := rf.abi.RequestSize()
		raw := make([]byte, n)
		copy(raw, slot)
		page := rf.share.Bytes()[:blkback.PageSize]
		clear(page)
		copy(page, ind)
		// A frontend that offers its own ring page as a data buffer can
		// overwrite its ring indices: the backend then stops that ring, as
		// it must (ErrOverflow), but that is the frontend harming itself.
		var r blkback.Request
		blkback.DecodeRequest(rf.abi, raw, &r)
		segs := r.Segs[:min(int(r.NrSegments), blkback.MaxSegmentsPerRequest)]
		if r.Operation == blkback.OpIndirect {
			segs = make([]blkback.Segment, min(int(r.NrSegments), blkback.SegmentsPerIndirectPage))
			if p := pageOfRef(fronts, r.IndirectGrefs[0]); p != nil {
				blkback.DecodeIndirectSegments(p, segs)
			}
		}
		for _, sg := range segs {
			for _, other := range fronts {
				if sg.Gref == other.ringRef {
					t.Skip("request targets a frontend's own ring page")
				}
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rsp := rf.one(t, ctx, raw)
		idOff := 8
		if rf.abi == blkback.ABI32 {
			idOff = 4
		}
		if id := binary.LittleEndian.Uint64(raw[idOff:]); rsp.ID != id {
			t.Fatalf("response id %#x for request id %#x", rsp.ID, id)
		}
		op := raw[0]
		if op == blkback.OpIndirect {
			op = raw[1]
		}
		if rsp.Operation != op {
			t.Fatalf("response operation %d for %d", rsp.Operation, op)
		}
		if rsp.Status != 0 && rsp.Status != -1 && rsp.Status != -2 {
			t.Fatalf("status %d", rsp.Status)
		}
		// Still serving: a good read on the same ring.
		good := make([]byte, n)
		blkback.EncodeRequest(rf.abi, good, &blkback.Request{Operation: blkback.OpRead, NrSegments: 1, ID: 1,
			Segs: [11]blkback.Segment{{Gref: uint32(rf.share.Refs()[1]), LastSect: 7}}})
		if r := rf.one(t, ctx, good); r.Status != 0 || r.ID != 1 {
			t.Fatalf("backend broken after a fuzzed request: %+v", r)
		}
	})
}

// pageOfRef returns the frontend page granted as ref, if it is a data page.
func pageOfRef(fronts []*rawFront, ref uint32) []byte {
	for _, rf := range fronts {
		for i, r := range rf.share.Refs() {
			if uint32(r) == ref {
				return rf.share.Bytes()[i*blkback.PageSize : (i+1)*blkback.PageSize]
			}
		}
	}
	return nil
}
