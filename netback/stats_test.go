package netback

import (
	"context"
	"testing"
)

// TestBatchCounters: the performance counters count grant copy batches,
// the notifications actually sent (not one per batch: the frontend's
// rsp_event suppresses them) and GSO packets.
func TestBatchCounters(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	frame := BuildFrame(FrameOpts{Payload: 1000})
	for i := 0; i < 3; i++ {
		r.sendTx(frame, 0)
	}
	if err := r.q.txWork(); err != nil {
		t.Fatal(err)
	}
	r.reapTx() // consumes without re-arming rsp_event
	r.sendTx(frame, 0)
	if err := r.q.txWork(); err != nil {
		t.Fatal(err)
	}
	s := r.q.stats.snapshot()
	if s.TxPackets != 4 || s.TxBatches != 2 || s.TxNotify != 1 || s.TxGSO != 0 {
		t.Errorf("tx: %+v: want 4 packets in 2 batches, 1 notification, no GSO", s)
	}

	r.postRx()
	plain := make([]byte, VnetHdrSize+len(frame))
	copy(plain[VnetHdrSize:], frame)
	big := BuildFrame(FrameOpts{Payload: 20000})
	gso := make([]byte, VnetHdrSize+len(big))
	VnetHdr{Flags: VnetFNeedsCsum, GSOType: VnetGSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}.Encode(gso)
	copy(gso[VnetHdrSize:], big)
	for _, p := range [][]byte{plain, gso, plain} {
		if err := r.tap.Inject(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.rxBatch(t); got != 1+6+1 { // the GSO frame (20054 bytes): 5 data slots and the extra
		t.Fatalf("rx batch: %d responses", got)
	}
	s = r.q.stats.snapshot()
	if s.RxPackets != 3 || s.RxBatches != 1 || s.RxNotify != 1 || s.RxGSO != 1 || s.RxDropped != 0 {
		t.Errorf("rx: %+v: want 3 packets in 1 batch, 1 notification, 1 GSO", s)
	}
}
