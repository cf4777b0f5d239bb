package netback_test

import (
	"encoding/binary"
	"testing"
	"time"

	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
	"drvdom/ring"
)

// TestSimRestartNotifiesGuest: a backend process killed after it published
// a tx response but before it notified leaves the guest waiting (netfront
// looks at its rings only when notified); the next process notifies every
// queue at connect, so the guest collects that response without any new
// traffic.
func TestSimRestartNotifiesGuest(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{})
	fr := netback.BuildFrame(netback.FrameOpts{Payload: 700, Seed: 1})
	if err := v.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
		t.Fatal(err)
	}
	recvHost(t, v.tap, 0)
	if err := v.f.WaitTxIdle(ctx, 0); err != nil {
		t.Fatal(err)
	}
	e.stop()
	before := v.f.Counters(0).TxOkay
	// The guest sends one more packet; the dead process "answered" it:
	// response written in the request's slot and rsp_prod published, no
	// event sent.
	if err := v.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
		t.Fatal(err)
	}
	_, mem, mu := v.f.TxRing(0)
	mu.Lock()
	const offRspProd = 8
	rspProd := binary.LittleEndian.Uint32(mem[offRspProd:])
	slots := uint32((len(mem) - ring.HeaderSize) / netback.TxEntrySize)
	for slots&(slots-1) != 0 {
		slots &= slots - 1
	}
	slot := mem[ring.HeaderSize+int(rspProd%slots)*netback.TxEntrySize:][:netback.TxEntrySize]
	req := netback.DecodeTxRequest(slot)
	netback.TxResponse{ID: req.ID, Status: netback.RspOkay}.Encode(slot)
	binary.LittleEndian.PutUint32(mem[offRspProd:], rspProd+1)
	mu.Unlock()

	e.stop = e.startManager()
	deadline := time.Now().Add(5 * time.Second)
	for v.f.Counters(0).TxOkay != before+1 { // no TxIdle: it would poll the ring itself
		if time.Now().After(deadline) {
			t.Fatalf("guest collected %d tx responses after the restart, want 1: the new backend never notified it", v.f.Counters(0).TxOkay-before)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
