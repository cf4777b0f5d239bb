package blkback_test

import (
	"testing"

	"drvdom/blkback"
	"drvdom/evtchn"
)

// TestGrantCopyPoolFullBatch: in grant-copy mode with io_uring, a batch
// whose second request needs bounce pages the first one holds (two
// 256-segment indirect writes against a 256-page pool) is served: the ring
// submits its queued I/O before it waits for pages. It deadlocked before
// (the queued write was submitted only at the end of the batch), wedging
// the ring and every later Disconnect of the device.
func TestGrantCopyPoolFullBatch(t *testing.T) {
	for _, engine := range []string{blkback.EngineURing, blkback.EnginePool} {
		t.Run(engine, func(t *testing.T) {
			e := newEnv(t, func(d *blkback.Driver) {
				d.GrantCopy, d.CopyPoolPages, d.Engine = true, 256, engine
				d.StatsInterval, d.ResizeInterval = -1, -1
			})
			rf := newRawFrontDev(t, e, 51712, tempDisk(t, 1<<20), blkback.ProtoX86_64, false, blkback.OpWrite, 1)
			refs := rf.share.Refs()
			ind := rf.share.Bytes()[:blkback.PageSize]
			for i := 0; i < blkback.MaxIndirectSegments; i++ {
				blkback.EncodeSegment(ind[i*blkback.SegmentSize:], blkback.Segment{Gref: uint32(refs[1+i%8]), LastSect: 7})
			}
			for id := uint64(1); id <= 2; id++ {
				blkback.EncodeRequest(rf.abi, rf.r.Request(), &blkback.Request{Operation: blkback.OpIndirect,
					IndirectOp: blkback.OpWrite, NrSegments: blkback.MaxIndirectSegments, ID: id,
					IndirectGrefs: [8]uint32{uint32(refs[0])}})
			}
			rf.r.PushRequests()
			rf.evh.Notify(rf.port)
			ctx := ctxT(t)
			ports := make([]evtchn.Port, 1)
			for got := 0; got < 2; {
				for rf.r.Unconsumed() > 0 {
					if r := blkback.DecodeResponse(rf.r.Response()); r.Status != blkback.StatusOkay {
						t.Fatalf("response %+v", r)
					}
					got++
				}
				if got < 2 && !rf.r.FinalCheckForResponses() {
					if _, err := rf.evh.Wait(ctx, ports); err != nil {
						t.Fatalf("%d of 2 responses: %v", got, err)
					}
					rf.evh.Unmask(rf.port)
				}
			}
		})
	}
}
