package netback_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
)

func TestSimMultiQueueSplit(t *testing.T) {
	e := newEnv(t, nil)
	v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{Queues: 4, Split: true})
	ctx := ctxT(t)
	if v.f.Queues() != 4 || !v.f.Split() || v.tap.NumQueues() != 4 {
		t.Fatalf("queues %d split %v tap queues %d", v.f.Queues(), v.f.Split(), v.tap.NumQueues())
	}
	if got := e.mem.Bridge(netback.DefaultBridge); len(got) != 1 {
		t.Fatalf("default bridge = %v", got)
	}
	for round := 0; round < 3; round++ {
		for q := 0; q < 4; q++ {
			fr := netback.BuildFrame(netback.FrameOpts{Payload: 100 + q*1000 + round, Seed: byte(q)})
			if err := v.f.Send(ctx, q, netfront.Packet{Frame: fr}, 0); err != nil {
				t.Fatal(err)
			}
			if _, got := recvHost(t, v.tap, q); !bytes.Equal(got, fr) {
				t.Fatalf("queue %d: tx frame differs", q)
			}
			inject(t, v.tap, q, netback.VnetHdr{}, fr)
			if p := recvGuest(t, v.f, q); !bytes.Equal(p.Frame, fr) {
				t.Fatalf("queue %d: rx frame differs", q)
			}
		}
	}
}

func TestSimHostileChains(t *testing.T) {
	e := newEnv(t, nil)
	v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{})
	ctx := ctxT(t)
	data := make([]byte, 4096)
	long := []any{netfront.Slot{Req: netback.TxRequest{Flags: netback.TxMoreData, Size: 19 * 100}, Data: data}}
	for i := 1; i < 19; i++ {
		f := netback.TxMoreData
		if i == 18 {
			f = 0
		}
		long = append(long, netfront.Slot{Req: netback.TxRequest{Flags: f, Size: 100}, Data: data})
	}
	endless := []any{}
	for i := 0; i < 100; i++ {
		endless = append(endless, netback.TxRequest{Flags: netback.TxMoreData, Size: 60})
	}
	// It ends at last, or its tail would stay pending (a chain still
	// arriving) and swallow the next packet.
	endless[99] = netback.TxRequest{Size: 60}
	cases := []struct {
		name  string
		chain []any
		errs  uint64 // tx requests answered with an error
		nulls uint64
	}{
		{"19 slots", long, 19, 0},
		{"first slot shorter than ethernet", []any{netfront.Slot{Req: netback.TxRequest{Size: 10}, Data: data}}, 1, 0},
		{"slot crossing a page", []any{netfront.Slot{Req: netback.TxRequest{Offset: 4000, Size: 200}, Data: data}}, 1, 0},
		{"bad grant", []any{netfront.Slot{Req: netback.TxRequest{Gref: 0xdead, Size: 60}}}, 1, 0},
		{"bad grant in a follower", []any{
			netfront.Slot{Req: netback.TxRequest{Flags: netback.TxMoreData, Size: 160}, Data: data},
			netfront.Slot{Req: netback.TxRequest{Gref: 0xbeef, Size: 100}}}, 2, 0},
		{"bad extra type", []any{netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60}, netback.ExtraInfo{Type: 9}}, 1, 1},
		{"gso size 0", []any{netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60},
			netback.ExtraInfo{Type: netback.ExtraTypeGSO, GSOType: netback.GSOTypeTCPv4}}, 1, 1},
		{"follower bigger than packet", []any{netback.TxRequest{Flags: netback.TxMoreData, Size: 100}, netback.TxRequest{Size: 200}}, 2, 0},
		{"endless chain", endless, 100, 0},
		{"gso on a non-tcp frame", []any{
			netfront.Slot{Req: netback.TxRequest{Flags: netback.TxExtraInfo | netback.TxCsumBlank, Size: 60}, Data: netback.BuildFrame(netback.FrameOpts{UDP: true, Payload: 18})},
			netback.ExtraInfo{Type: netback.ExtraTypeGSO, GSOType: netback.GSOTypeTCPv4, GSOSize: 1000}}, 0, 1},
	}
	for _, c := range cases {
		before := v.f.Counters(0)
		if err := v.f.SendRaw(ctx, 0, c.chain...); err != nil {
			t.Fatal(err)
		}
		if err := v.f.WaitTxIdle(ctx, 0); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		after := v.f.Counters(0)
		if after.TxError-before.TxError != c.errs || after.TxNull-before.TxNull != c.nulls || after.TxBad != 0 {
			t.Fatalf("%s: responses %+v -> %+v, want %d errors %d nulls", c.name, before, after, c.errs, c.nulls)
		}
		if c.errs == 0 && after.TxDropped-before.TxDropped != 1 {
			t.Fatalf("%s: want one DROPPED, got %+v", c.name, after)
		}
		noHost(t, v.tap, 0)
		// The vif keeps working.
		fr := netback.BuildFrame(netback.FrameOpts{Payload: 500, Seed: 4})
		if err := v.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
			t.Fatal(err)
		}
		if _, got := recvHost(t, v.tap, 0); !bytes.Equal(got, fr) {
			t.Fatalf("%s: frame after the hostile chain differs", c.name)
		}
	}
}

// TestSimHostileVifIsolated: one guest floods bad chains and then corrupts
// its ring; its vif is disabled with an error in xenstore, while another
// guest's vif on the same backend keeps passing traffic throughout.
func TestSimHostileVifIsolated(t *testing.T) {
	e := newEnv(t, nil)
	bad := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{})
	good := e.attach(t, 3, 0, netfront.Nic{MAC: "00:16:3e:00:00:03"}, netfront.Config{Queues: 2})
	ctx := ctxT(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			bad.f.SendRaw(ctx, 0, netback.TxRequest{Flags: netback.TxMoreData, Size: 60}, netback.TxRequest{Gref: 0xdead, Size: 10})
			bad.f.SendRaw(ctx, 0, netback.TxRequest{Size: 3})
		}
	}()
	for i := 0; i < 50; i++ {
		fr := netback.BuildFrame(netback.FrameOpts{Payload: 1000 + i, Seed: byte(i)})
		q := i % 2
		if err := good.f.Send(ctx, q, netfront.Packet{Frame: fr}, 0); err != nil {
			t.Fatal(err)
		}
		if _, got := recvHost(t, good.tap, q); !bytes.Equal(got, fr) {
			t.Fatal("good vif: frame differs")
		}
	}
	<-done
	if err := bad.f.WaitTxIdle(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if c := bad.f.Counters(0); c.TxError != 600 || c.TxOkay != 0 {
		t.Fatalf("hostile vif responses %+v", c)
	}
	// Corrupt the shared ring: req_prod far beyond the ring.
	r, mem, mu := bad.f.TxRing(0)
	mu.Lock()
	binary.LittleEndian.PutUint32(mem[0:], binary.LittleEndian.Uint32(mem[0:])+1000)
	_ = r
	mu.Unlock()
	bad.f.Kick(0)
	errPath := "/local/domain/" + strconv.Itoa(ddID) + "/error/backend/vif/2/0/error"
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, err := e.d0.Read(ctx, errPath); err == nil && s != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no error written for the corrupted ring")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := 0; i < 20; i++ {
		fr := netback.BuildFrame(netback.FrameOpts{Payload: 64, Seed: byte(i)})
		inject(t, good.tap, 1, netback.VnetHdr{}, fr)
		if p := recvGuest(t, good.f, 1); !bytes.Equal(p.Frame, fr) {
			t.Fatal("good vif rx differs after the other vif failed")
		}
	}
}

// TestSimTeardown: after the guest closes and the toolstack removes the
// vif, no grant stays mapped, no event channel bound, no TAP left and no
// goroutine running.
func TestSimTeardown(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	// The baseline is the idle backend: each xenstored connection served
	// (the server starts a connection's writer goroutine when it first
	// reads from it: any answer says so) and the Manager watching. A 20 ms
	// sleep left that to the scheduler, and on a loaded machine a writer
	// started after the baseline would have counted as a leak.
	e.d0.Directory(ctx, "/local/domain")
	for deadline := time.Now().Add(20 * time.Second); e.host.Store.WatchCount() == 0; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the Manager never set its watch")
		}
	}
	base := runtime.NumGoroutine()
	for round := 0; round < 2; round++ {
		v := e.attach(t, 2, 5, netfront.Nic{}, netfront.Config{Queues: 2, Split: round == 1})
		for q := 0; q < 2; q++ {
			fr := netback.BuildFrame(netback.FrameOpts{Payload: 9000})
			if err := v.f.Send(ctx, q, netfront.Packet{Frame: fr}, 0); err != nil {
				t.Fatal(err)
			}
			recvHost(t, v.tap, q)
			inject(t, v.tap, q, netback.VnetHdr{}, fr)
			recvGuest(t, v.f, q)
		}
		if e.host.Grants.Mapped(ddID) != 4 || e.host.Events.BoundPorts(ddID) == 0 {
			t.Fatalf("while connected: %d pages mapped, %d ports", e.host.Grants.Mapped(ddID), e.host.Events.BoundPorts(ddID))
		}
		if err := v.f.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := netfront.RemoveNic(ctx, e.d0, v.nic); err != nil {
			t.Fatal(err)
		}
		v.gsto.Close() // its connection's goroutines are not the backend's
		deadline := time.Now().Add(5 * time.Second)
		for e.mem.Taps() != 0 || e.host.Grants.Mapped(ddID) != 0 || e.host.Events.BoundPorts(ddID) != 0 || runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				buf = filterStacks(buf[:n], "netback", "netfront")
				n = len(buf)
				t.Fatalf("leak after teardown: %d taps, %d pages mapped, %d ports, %d goroutines (base %d)\n%s",
					e.mem.Taps(), e.host.Grants.Mapped(ddID), e.host.Events.BoundPorts(ddID), runtime.NumGoroutine(), base, buf[:n])
			}
			time.Sleep(5 * time.Millisecond)
		}
		if !v.tap.Closed() {
			t.Fatal("tap not closed")
		}
		// The toolstack removes the directories before the next attach.
		e.d0.Rm(ctx, v.nic.BackPath())
		e.d0.Rm(ctx, v.nic.FrontPath())
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSimReconnect: the guest closes and reconnects (a reboot); the vif
// serves again on the same TAP.
func TestSimReconnect(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{})
	fr := netback.BuildFrame(netback.FrameOpts{Payload: 300})
	if err := v.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
		t.Fatal(err)
	}
	recvHost(t, v.tap, 0)
	if !v.tap.Carrier() {
		t.Fatal("no carrier while connected")
	}
	if err := v.f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// The guest reboots (which takes longer than the backend needs to close).
	for deadline := time.Now().Add(5 * time.Second); v.f.BackendState(ctx) != 6; {
		if time.Now().After(deadline) {
			t.Fatalf("backend state %d after the frontend closed", v.f.BackendState(ctx))
		}
		time.Sleep(2 * time.Millisecond)
	}
	if v.tap.Carrier() {
		t.Fatal("carrier still on with the guest gone")
	}
	if err := v.gsto.Write(ctx, v.nic.FrontPath()+"/state", "1"); err != nil {
		t.Fatal(err)
	}
	f, err := netfront.Attach(ctx, v.gsto, v.dom.Sharer(), v.dom.Evtchn(), v.nic.FrontPath(), netfront.Config{Queues: 2})
	if err != nil {
		t.Fatal(err)
	}
	if e.mem.Tap("vif2.0") != v.tap {
		t.Fatal("tap replaced on reconnect")
	}
	if !v.tap.Carrier() {
		t.Fatal("no carrier after reconnect")
	}
	for q := 0; q < 2; q++ {
		if err := f.Send(ctx, q, netfront.Packet{Frame: fr}, 0); err != nil {
			t.Fatal(err)
		}
		if _, got := recvHost(t, v.tap, q); !bytes.Equal(got, fr) {
			t.Fatal("after reconnect: frame differs")
		}
		inject(t, v.tap, q, netback.VnetHdr{}, fr)
		if p := recvGuest(t, f, q); !bytes.Equal(p.Frame, fr) {
			t.Fatal("after reconnect: rx frame differs")
		}
	}
	if e.host.Grants.Mapped(ddID) != 4 {
		t.Fatalf("%d pages mapped after reconnect, want 4 (old rings unmapped)", e.host.Grants.Mapped(ddID))
	}
}

// TestSimRxWaitsForBuffers: a packet waits for the guest's rx buffers,
// woken by the rx port's event (the only port, or the rx one of split
// event channels).
func TestSimRxWaitsForBuffers(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(fmt.Sprint("split=", split), func(t *testing.T) {
			e := newEnv(t, nil)
			v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{RxBuffers: 2, Split: split})
			fr := netback.BuildFrame(netback.FrameOpts{Payload: 10000})
			inject(t, v.tap, 0, netback.VnetHdr{}, fr)
			select {
			case <-v.f.RecvChan(0):
				t.Fatal("a 3-slot packet was delivered into 2 buffers")
			case <-time.After(50 * time.Millisecond):
			}
			v.f.PostRx(0, 0)
			if p := recvGuest(t, v.f, 0); !bytes.Equal(p.Frame, fr) {
				t.Fatal("frame differs")
			}
		})
	}
}

func TestSimNoSG(t *testing.T) {
	e := newEnv(t, nil)
	v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{NoSG: true})
	if o := v.tap.Offload(); o != netback.TunFCsum {
		t.Fatalf("offload %#x for a guest without sg, want csum only", o)
	}
	inject(t, v.tap, 0, netback.VnetHdr{}, netback.BuildFrame(netback.FrameOpts{Payload: 5000}))
	small := netback.BuildFrame(netback.FrameOpts{Payload: 1000})
	inject(t, v.tap, 0, netback.VnetHdr{}, small)
	if p := recvGuest(t, v.f, 0); !bytes.Equal(p.Frame, small) {
		t.Fatal("guest without sg: got the multi-page frame or garbage")
	}
}

func TestSimRateLimit(t *testing.T) {
	e := newEnv(t, nil)
	v := e.attach(t, 2, 0, netfront.Nic{Rate: "20000,50000"}, netfront.Config{})
	ctx := ctxT(t)
	fr := netback.BuildFrame(netback.FrameOpts{Payload: 1000 - 54})
	start := time.Now()
	go func() {
		for i := 0; i < 100; i++ {
			if err := v.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
				return
			}
		}
	}()
	for i := 0; i < 100; i++ {
		recvHost(t, v.tap, 0)
	}
	// 100 kB at 20 kB per 50 ms, the first 20 kB at once: >= 200 ms.
	if d := time.Since(start); d < 150*time.Millisecond || d > 10*time.Second {
		t.Fatalf("100 kB took %v at 400 kB/s", d)
	}
}

func TestSimMulticastControl(t *testing.T) {
	e := newEnv(t, nil)
	v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{MulticastControl: true})
	ctx := ctxT(t)
	group := [6]byte{0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb}
	other := [6]byte{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}
	bcast := [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	ctl := func(typ uint8) {
		before := v.f.Counters(0)
		if err := v.f.SendRaw(ctx, 0, netback.TxRequest{Flags: netback.TxExtraInfo}, netback.ExtraInfo{Type: typ, Mcast: group}); err != nil {
			t.Fatal(err)
		}
		if err := v.f.WaitTxIdle(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if after := v.f.Counters(0); after.TxOkay != before.TxOkay+1 || after.TxNull != before.TxNull+1 {
			t.Fatalf("mcast control responses %+v -> %+v", before, after)
		}
	}
	ctl(netback.ExtraTypeMcastAdd)
	noHost(t, v.tap, 0)
	for i, dst := range [][6]byte{other, group, bcast} {
		inject(t, v.tap, 0, netback.VnetHdr{}, netback.BuildFrame(netback.FrameOpts{UDP: true, Payload: 10, Dst: dst, Seed: byte(i)}))
	}
	for _, want := range [][6]byte{group, bcast} {
		if p := recvGuest(t, v.f, 0); !bytes.Equal(p.Frame[:6], want[:]) {
			t.Fatalf("got frame to % x, want % x", p.Frame[:6], want)
		}
	}
	ctl(netback.ExtraTypeMcastDel)
	inject(t, v.tap, 0, netback.VnetHdr{}, netback.BuildFrame(netback.FrameOpts{UDP: true, Payload: 10, Dst: group}))
	inject(t, v.tap, 0, netback.VnetHdr{}, netback.BuildFrame(netback.FrameOpts{UDP: true, Payload: 10, Dst: bcast}))
	if p := recvGuest(t, v.f, 0); !bytes.Equal(p.Frame[:6], bcast[:]) {
		t.Fatal("frame to an unsubscribed group delivered")
	}
}

// filterStacks keeps the goroutine dumps that mention any of words.
func filterStacks(dump []byte, words ...string) []byte {
	var out []byte
	for _, g := range bytes.Split(dump, []byte("\n\n")) {
		for _, w := range words {
			if bytes.Contains(g, []byte(w)) {
				out = append(append(out, g...), "\n\n"...)
				break
			}
		}
	}
	return out
}

// BenchmarkSimVif measures packets/s end to end in the simulator: the Go
// netfront sending (tx) or receiving (rx) 1514-byte frames through the
// backend and the in-memory TAP. Allocations include the test frontend's.
func BenchmarkSimVif(b *testing.B) {
	for _, dir := range []string{"tx", "rx"} {
		b.Run(dir, func(b *testing.B) {
			e := newEnv(b, nil)
			v := e.attach(b, 2, 0, netfront.Nic{}, netfront.Config{})
			ctx := ctxT(b)
			fr := netback.BuildFrame(netback.FrameOpts{Payload: 1460})
			pkt := make([]byte, netback.VnetHdrSize+len(fr))
			copy(pkt[netback.VnetHdrSize:], fr)
			q := v.tap.MemQueue(0)
			b.ReportAllocs()
			b.SetBytes(int64(len(fr)))
			b.ResetTimer()
			start := time.Now()
			done := make(chan error, 1)
			if dir == "tx" {
				go func() {
					for i := 0; i < b.N; i++ {
						if err := v.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
							done <- err
							return
						}
					}
					done <- nil
				}()
				for i := 0; i < b.N; i++ {
					f, err := q.Recv(ctx)
					if err != nil {
						b.Fatal(err)
					}
					q.Release(f)
				}
			} else {
				go func() {
					for i := 0; i < b.N; i++ {
						if err := q.Inject(ctx, pkt); err != nil {
							done <- err
							return
						}
					}
					done <- nil
				}()
				for i := 0; i < b.N; i++ {
					if _, err := v.f.Recv(ctx, 0); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pkts/s")
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestSimBackendRestart: the backend process stops (its rings unmapped, its
// event channels closed) while the guest stays Connected and keeps queueing
// packets; a new process resumes the vif from the shared ring state and
// the queued packets go out. The frontend sees no state change.
func TestSimBackendRestart(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{Queues: 2})
	for i := 0; i < 3; i++ {
		fr := netback.BuildFrame(netback.FrameOpts{Payload: 700, Seed: byte(i)})
		if err := v.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
			t.Fatal(err)
		}
		recvHost(t, v.tap, 0)
		inject(t, v.tap, 1, netback.VnetHdr{}, fr)
		recvGuest(t, v.f, 1)
	}
	if err := v.f.WaitTxIdle(ctx, 0); err != nil {
		t.Fatal(err)
	}
	e.stop()
	if e.host.Grants.Mapped(ddID) != 0 || e.host.Events.BoundPorts(ddID) != 0 {
		t.Fatalf("stopped backend still holds %d pages, %d ports", e.host.Grants.Mapped(ddID), e.host.Events.BoundPorts(ddID))
	}
	// The guest keeps sending while the backend is away.
	queued := netback.BuildFrame(netback.FrameOpts{Payload: 5000, Seed: 42})
	if err := v.f.Send(ctx, 0, netfront.Packet{Frame: queued}, 0); err != nil {
		t.Fatal(err)
	}
	e.stop = e.startManager()
	var tap *netback.MemTap
	for deadline := time.Now().Add(5 * time.Second); tap == nil; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("restarted backend made no tap")
		}
		tap = e.mem.Tap("vif2.0")
	}
	if _, got := recvHost(t, tap, 0); !bytes.Equal(got, queued) {
		t.Fatal("packet queued during the restart differs")
	}
	if err := v.f.WaitTxIdle(ctx, 0); err != nil {
		t.Fatal(err)
	}
	for q := 0; q < 2; q++ {
		fr := netback.BuildFrame(netback.FrameOpts{Payload: 9000, Seed: byte(q)})
		if err := v.f.Send(ctx, q, netfront.Packet{Frame: fr}, 0); err != nil {
			t.Fatal(err)
		}
		if _, got := recvHost(t, tap, q); !bytes.Equal(got, fr) {
			t.Fatal("after restart: tx frame differs")
		}
		inject(t, tap, q, netback.VnetHdr{}, fr)
		if p := recvGuest(t, v.f, q); !bytes.Equal(p.Frame, fr) {
			t.Fatal("after restart: rx frame differs")
		}
	}
	if c := v.f.Counters(0); c.TxError+c.TxDropped+c.TxBad != 0 {
		t.Fatalf("guest saw bad responses across the restart: %+v", c)
	}
	// The new process took up exactly where the old one stopped: it did not
	// re-read answered slots (whose first bytes now hold responses).
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := e.d0.Read(ctx, v.nic.BackPath()+"/"+netback.StatsKey)
		var s netback.Stats
		if err == nil && jsonUnmarshal(st, &s) == nil && s.TxPackets == 3 && s.RxPackets == 2 {
			if s.TxErrors != 0 || s.RxErrors != 0 {
				t.Fatalf("restarted backend stats %+v", s)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted backend stats %q %v", st, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSimRxDrainTimeout: a packet the guest has no buffers for is dropped
// after the drain timeout, and the queue goes on with the next one.
func TestSimRxDrainTimeout(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(fmt.Sprint("split=", split), func(t *testing.T) {
			e := newEnv(t, func(d *netback.Driver) { d.RxDrainTimeout = 30 * time.Millisecond })
			v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{RxBuffers: 2, Split: split})
			inject(t, v.tap, 0, netback.VnetHdr{}, netback.BuildFrame(netback.FrameOpts{Payload: 10000}))
			small := netback.BuildFrame(netback.FrameOpts{Payload: 100, Seed: 3})
			inject(t, v.tap, 0, netback.VnetHdr{}, small)
			if p := recvGuest(t, v.f, 0); !bytes.Equal(p.Frame, small) {
				t.Fatal("frame after the stalled one differs")
			}
			e.drvStats(t, v, func(s netback.Stats) bool { return s.RxDropped == 1 && s.RxPackets == 1 })
		})
	}
}

// TestSimRxChecksumForGuestsWithoutOffload: partial checksums are finished
// in the backend for a guest that cannot take them (no IPv6 checksum
// offload; feature-no-csum-offload), and the TAP offloads follow.
func TestSimRxChecksumForGuestsWithoutOffload(t *testing.T) {
	e := newEnv(t, nil)
	v6 := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{NoIPv6Csum: true})
	none := e.attach(t, 3, 0, netfront.Nic{}, netfront.Config{NoCsumOffload: true})
	if o := v6.tap.Offload(); o != netback.TunFCsum|netback.TunFTSO4|netback.TunFTSOECN {
		t.Fatalf("no-ipv6-csum guest: offload %#x", o)
	}
	if o := none.tap.Offload(); o != 0 {
		t.Fatalf("no-csum-offload guest: offload %#x", o)
	}
	u6 := netback.BuildFrame(netback.FrameOpts{IPv6: true, UDP: true, Payload: 333, PartialSum: true})
	inject(t, v6.tap, 0, netback.VnetHdr{Flags: netback.VnetFNeedsCsum, CsumStart: 54, CsumOffset: 6}, u6)
	p := recvGuest(t, v6.f, 0)
	if p.Flags != netback.RxDataValidated || !netback.L4CsumOK(p.Frame) {
		t.Fatalf("ipv6 to a guest without ipv6 csum offload: flags %#x, checksum ok %v", p.Flags, netback.L4CsumOK(p.Frame))
	}
	t4 := netback.BuildFrame(netback.FrameOpts{Payload: 500, PartialSum: true})
	inject(t, v6.tap, 0, netback.VnetHdr{Flags: netback.VnetFNeedsCsum, CsumStart: 34, CsumOffset: 16}, t4)
	if p := recvGuest(t, v6.f, 0); p.Flags != netback.RxCsumBlank|netback.RxDataValidated || netback.L4CsumOK(p.Frame) {
		t.Fatalf("ipv4 to the same guest should stay partial: flags %#x", p.Flags)
	}
	inject(t, none.tap, 0, netback.VnetHdr{Flags: netback.VnetFNeedsCsum, CsumStart: 34, CsumOffset: 16}, t4)
	if p := recvGuest(t, none.f, 0); p.Flags != netback.RxDataValidated || !netback.L4CsumOK(p.Frame) {
		t.Fatalf("no-csum-offload guest: flags %#x, checksum ok %v", p.Flags, netback.L4CsumOK(p.Frame))
	}
	// A bogus csum_start from the host side is dropped, not followed.
	inject(t, none.tap, 0, netback.VnetHdr{Flags: netback.VnetFNeedsCsum, CsumStart: 60000, CsumOffset: 16}, t4)
	inject(t, none.tap, 0, netback.VnetHdr{}, t4)
	if p := recvGuest(t, none.f, 0); p.Flags != 0 {
		t.Fatalf("after a bogus header: flags %#x", p.Flags)
	}
}

// TestSimBadFrontendKeys: a frontend that publishes nonsense (or refs it
// never granted) gets its vif closed with an error in xenstore; nothing
// stays mapped or bound, and another guest's vif works meanwhile.
func TestSimBadFrontendKeys(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	good := e.attach(t, 3, 0, netfront.Nic{}, netfront.Config{})
	// TX/RX stand for refs of two ring pages the guest really granted,
	// EV for a port it really offered: each case breaks one thing.
	cases := []map[string]string{
		{"tx-ring-ref": "abc", "rx-ring-ref": "RX", "event-channel": "EV", "_err": `frontend tx-ring-ref = "abc"`},
		{"tx-ring-ref": "12345", "rx-ring-ref": "RX", "event-channel": "EV"},                // never granted
		{"tx-ring-ref": "TX", "rx-ring-ref": "RX", "_err": "read frontend event-channel: "}, // no event channel
		{"tx-ring-ref": "TX", "rx-ring-ref": "RX", "event-channel": "77"},                   // not offered
		{"tx-ring-ref": "TX", "rx-ring-ref": "RX", "event-channel-tx": "EV", "event-channel-rx": "EV"},
		{"multi-queue-num-queues": "99", "tx-ring-ref": "TX", "rx-ring-ref": "RX", "event-channel": "EV"},
		{"multi-queue-num-queues": "0", "tx-ring-ref": "TX", "rx-ring-ref": "RX", "event-channel": "EV"},
		{"multi-queue-num-queues": "2", "queue-0/tx-ring-ref": "TX", "queue-0/rx-ring-ref": "RX", "queue-0/event-channel": "EV",
			"_err": "read frontend queue-1/tx-ring-ref: "},
		{"request-rx-copy": "0", "tx-ring-ref": "TX", "rx-ring-ref": "RX", "event-channel": "EV"},
		{"tx-ring-ref": "-1", "rx-ring-ref": "99999999999", "event-channel": "EV", "_err": `frontend tx-ring-ref = "-1"`},
		// Control: the same pages and port, published right, connect.
		{"tx-ring-ref": "TX", "rx-ring-ref": "RX", "event-channel": "EV", "_ok": ""},
	}
	for i, keys := range cases {
		dom := uint16(10 + i)
		g := e.host.NewDomain(dom)
		nic := netfront.Nic{BackDom: ddID, FrontDom: dom, DevID: 0, MAC: "00:16:3e:00:01:01"}
		if err := netfront.AddNic(ctx, e.d0, nic); err != nil {
			t.Fatal(err)
		}
		gs := g.Xenstore()
		defer gs.Close()
		// Wait for InitWait as a frontend would, then publish garbage.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(2 * time.Millisecond) {
			if s, _ := gs.Read(ctx, nic.BackPath()+"/state"); s == "2" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("case %d: backend never reached InitWait", i)
			}
		}
		if _, ok := keys["request-rx-copy"]; !ok {
			keys["request-rx-copy"] = "1"
		}
		rings, err := g.Sharer().Share(ddID, 2, true)
		if err != nil {
			t.Fatal(err)
		}
		defer rings.Close()
		gev := g.Evtchn()
		defer gev.Close()
		port, err := gev.BindUnbound(ddID)
		if err != nil {
			t.Fatal(err)
		}
		subst := map[string]string{"TX": strconv.Itoa(int(rings.Refs()[0])), "RX": strconv.Itoa(int(rings.Refs()[1])),
			"EV": strconv.Itoa(int(port))}
		_, wantOK := keys["_ok"]
		wantErr := keys["_err"] // the error node names the bad key
		delete(keys, "_ok")
		delete(keys, "_err")
		for k, v := range keys {
			if r, ok := subst[v]; ok {
				v = r
			}
			if err := gs.Write(ctx, nic.FrontPath()+"/"+k, v); err != nil {
				t.Fatal(err)
			}
		}
		if err := gs.Write(ctx, nic.FrontPath()+"/state", "4"); err != nil {
			t.Fatal(err)
		}
		if wantOK {
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(2 * time.Millisecond) {
				if s, _ := gs.Read(ctx, nic.BackPath()+"/state"); s == "4" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("control case did not connect")
				}
			}
			if m := e.host.Grants.Mapped(ddID); m != 4 {
				t.Fatalf("control case: %d pages mapped, want 4", m)
			}
			continue
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(2 * time.Millisecond) {
			s, _ := gs.Read(ctx, nic.BackPath()+"/state")
			if s == "5" || s == "6" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("case %d (%v): backend state %q, want Closing", i, keys, s)
			}
		}
		errPath := "/local/domain/" + strconv.Itoa(ddID) + "/error/backend/vif/" + strconv.Itoa(int(dom)) + "/0/error"
		if s, err := e.d0.Read(ctx, errPath); err != nil || s == "" {
			t.Fatalf("case %d: no error node (%q, %v)", i, s, err)
		} else if !strings.Contains(s, wantErr) {
			t.Fatalf("case %d: error node %q does not say %q", i, s, wantErr)
		}
		// Only the good vif's two ring pages are mapped.
		if m := e.host.Grants.Mapped(ddID); m != 2 {
			t.Fatalf("case %d: %d pages mapped, want the good vif's 2", i, m)
		}
		fr := netback.BuildFrame(netback.FrameOpts{Payload: 100, Seed: byte(i)})
		if err := good.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
			t.Fatal(err)
		}
		if _, got := recvHost(t, good.tap, 0); !bytes.Equal(got, fr) {
			t.Fatal("good vif frame differs")
		}
	}
}

// TestSimOddValidChains: legal but unusual chains (followers at page
// offsets, an empty follower, data_validated only) arrive intact.
func TestSimOddValidChains(t *testing.T) {
	e := newEnv(t, nil)
	v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{})
	ctx := ctxT(t)
	fr := netback.BuildFrame(netback.FrameOpts{Payload: 6000, Seed: 8})
	a, b, c := fr[:100], fr[100:4000], fr[4000:]
	if err := v.f.SendRaw(ctx, 0,
		netfront.Slot{Req: netback.TxRequest{Offset: 3996, Flags: netback.TxMoreData | netback.TxDataValidated, Size: uint16(len(fr))}, Data: a},
		netfront.Slot{Req: netback.TxRequest{Offset: 196, Flags: netback.TxMoreData, Size: uint16(len(b))}, Data: b},
		netfront.Slot{Req: netback.TxRequest{Offset: 7, Flags: netback.TxMoreData, Size: 0}},
		netfront.Slot{Req: netback.TxRequest{Offset: 2000, Size: uint16(len(c))}, Data: c},
	); err != nil {
		t.Fatal(err)
	}
	h, got := recvHost(t, v.tap, 0)
	if !bytes.Equal(got, fr) || h != (netback.VnetHdr{Flags: netback.VnetFDataValid}) {
		t.Fatalf("odd chain: %d bytes (want %d), vnet %+v", len(got), len(fr), h)
	}
	if err := v.f.WaitTxIdle(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if c := v.f.Counters(0); c.TxOkay != 4 || c.TxError != 0 {
		t.Fatalf("responses %+v", c)
	}
}

func TestSimDriverBridge(t *testing.T) {
	e := newEnv(t, func(d *netback.Driver) { d.Bridge = "br-lab" })
	e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{})
	e.attach(t, 3, 0, netfront.Nic{Bridge: "xenbr1"}, netfront.Config{})
	if got := e.mem.Bridge("br-lab"); len(got) != 1 || got[0] != "vif2.0" {
		t.Fatalf("br-lab = %v", got)
	}
	if got := e.mem.Bridge("xenbr1"); len(got) != 1 || got[0] != "vif3.0" {
		t.Fatalf("xenbr1 = %v (the bridge key wins)", got)
	}
}

// TestSimGuestDestroyed: the guest domain dies under a connected vif (its
// grants revoked, its event channels closed) and the toolstack removes its
// directories: the backend releases everything and the other vif goes on.
func TestSimGuestDestroyed(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxT(t)
	doomed := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{Queues: 2})
	good := e.attach(t, 3, 0, netfront.Nic{}, netfront.Config{})
	fr := netback.BuildFrame(netback.FrameOpts{Payload: 3000})
	for q := 0; q < 2; q++ {
		inject(t, doomed.tap, q, netback.VnetHdr{}, fr)
		recvGuest(t, doomed.f, q)
	}
	doomed.gsto.Close()
	e.host.Destroy(2)
	// Frames for the dead guest meanwhile: dropped or failed, no hang.
	for i := 0; i < 5; i++ {
		inject(t, doomed.tap, 0, netback.VnetHdr{}, fr)
	}
	e.d0.Rm(ctx, "/local/domain/2")
	e.d0.Rm(ctx, doomed.nic.BackPath())
	for deadline := time.Now().Add(5 * time.Second); e.mem.Tap("vif2.0") != nil || e.host.Grants.Mapped(ddID) != 2; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after the guest died: tap %v, %d pages mapped (want the other vif's 2)", e.mem.Tap("vif2.0") != nil, e.host.Grants.Mapped(ddID))
		}
	}
	inject(t, good.tap, 0, netback.VnetHdr{}, fr)
	if p := recvGuest(t, good.f, 0); !bytes.Equal(p.Frame, fr) {
		t.Fatal("other vif frame differs")
	}
}

// TestSimTxAnsweredAfterTapWrite: a tx frame is answered once the TAP has
// taken it, not as soon as it is copied out of the guest (a response that
// netfront's xmit path reaps first turns our notification into a spurious
// interrupt, and Linux delays a run of those by up to a second: flushTx).
// With the TAP queue full (the in-memory TAP holds MemQueueDepth frames,
// then Write waits for room), the next frame stays unanswered while its
// write waits, and is answered OKAY once the host reads.
func TestSimTxAnsweredAfterTapWrite(t *testing.T) {
	e := newEnv(t, nil)
	e.mem.WriteWait = time.Minute // the host reads late on purpose: no drop
	v := e.attach(t, 2, 0, netfront.Nic{}, netfront.Config{})
	ctx := ctxT(t)
	const depth = netback.MemQueueDepth
	frames := make([][]byte, depth+1)
	for i := range frames {
		frames[i] = netback.BuildFrame(netback.FrameOpts{Payload: 100, Seed: byte(i)})
	}
	for _, fr := range frames[:depth] {
		if err := v.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.f.WaitTxIdle(ctx, 0); err != nil {
		t.Fatal(err)
	}
	// The TAP is full now: the next write waits for the host.
	if err := v.f.Send(ctx, 0, netfront.Packet{Frame: frames[depth]}, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // time to answer it early, if it would
	if c := v.f.Counters(0); c.TxOkay != depth || c.TxError+c.TxDropped+c.TxBad != 0 {
		t.Fatalf("responses %+v while the last write waits, want %d OKAY", c, depth)
	}
	for i, fr := range frames {
		if _, got := recvHost(t, v.tap, 0); !bytes.Equal(got, fr) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if err := v.f.WaitTxIdle(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if c := v.f.Counters(0); c.TxOkay != depth+1 || c.TxError+c.TxDropped+c.TxBad != 0 {
		t.Fatalf("responses %+v, want %d OKAY", c, depth+1)
	}
	e.drvStats(t, v, func(s netback.Stats) bool { return s.TxPackets == depth+1 && s.TxDropped == 0 })
}
