package netback

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"testing"
	"time"

	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/ring"
)

// rig is one queue wired by hand to a minimal frontend (no xenstore), for
// allocation checks and micro-benchmarks of the hot paths.
type rig struct {
	q        *queue
	tx, rx   *ring.Front
	txData   grant.Share // page i for tx id i
	rxData   grant.Share // page i for rx id i
	tap      *MemTapQueue
	rxPosted uint32
	rxCons   uint32 // ring index of the next rx response (FuzzQueueRx)
}

func newRig(tb testing.TB) *rig {
	tb.Helper()
	const back, front = 1, 2
	gs, evs := grant.NewSim(), evtchn.NewSim()
	gs.AddDomain(back)
	gs.AddDomain(front)
	sh := gs.Sharer(front)
	share := func(n int, w bool) grant.Share {
		s, err := sh.Share(back, n, w)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { s.Close() })
		return s
	}
	txRing, rxRing := share(1, true), share(1, true)
	r := &rig{txData: share(256, false), rxData: share(256, true)}
	var err error
	if r.tx, err = ring.NewFront(txRing.Bytes(), TxEntrySize); err != nil {
		tb.Fatal(err)
	}
	if r.rx, err = ring.NewFront(rxRing.Bytes(), RxEntrySize); err != nil {
		tb.Fatal(err)
	}
	fev := evs.Open(front)
	port, err := fev.BindUnbound(back)
	if err != nil {
		tb.Fatal(err)
	}
	mh := NewMemHost()
	tap, _ := mh.CreateTap("vif2.0", "xenbr0")
	r.tap = tap.(*MemTap).MemQueue(0)
	r.q, err = newQueue(queueConfig{
		front: front, txRef: txRing.Refs()[0], rxRef: rxRing.Refs()[0], txPort: port, rxPort: port,
		feat:   frontFeatures{rxCopy: true, sg: true, gsoTCPv4: true, gsoTCPv6: true},
		mapper: gs.Mapper(back), events: evs.Open(back), tap: r.tap,
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), stats: &counters{},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.q.release() })
	return r
}

// sendTx puts frame on the tx ring in one slot per page (id = slot index
// mod 256 so ids stay unique while at most 256 are outstanding).
func (r *rig) sendTx(frame []byte, flags uint16) {
	pages := r.txData.Bytes()
	refs := r.txData.Refs()
	first := true
	for rest := frame; first || len(rest) > 0; first = false {
		n := min(len(rest), PageSize)
		id := uint16(r.tx.Size()-r.tx.Free()) % 256
		copy(pages[int(id)*PageSize:], rest[:n])
		req := TxRequest{Gref: uint32(refs[id]), ID: id, Size: uint16(n)}
		if first {
			req.Size, req.Flags = uint16(len(frame)), flags
		}
		if len(rest) > n {
			req.Flags |= TxMoreData
		}
		req.Encode(r.tx.Request())
		rest = rest[n:]
	}
	r.tx.PushRequests()
}

// reapTx consumes every tx response and returns how many were not okay.
func (r *rig) reapTx() int {
	bad := 0
	for r.tx.Unconsumed() > 0 {
		if DecodeTxResponse(r.tx.Response()).Status != RspOkay {
			bad++
		}
	}
	return bad
}

// txWakeup is one round of the tx benchmarks: send(j) puts packet j < n
// on the ring, one tx wakeup takes them all, the responses are reaped (the
// count not okay is returned) and the n frames taken off the TAP.
func (r *rig) txWakeup(tb testing.TB, n int, send func(j int)) (bad int) {
	for j := range n {
		send(j)
	}
	if err := r.q.txWork(); err != nil {
		tb.Fatal(err)
	}
	bad = r.reapTx()
	for range n {
		f, _ := r.tap.Recv(context.Background())
		r.tap.Release(f)
	}
	return bad
}

// rxWakeup is one round of the rx benchmarks: n copies of pkt (virtio-net
// header and frame) wait in the TAP, rx wakeups run until the guest got
// them all, and the buffers are posted again.
func (r *rig) rxWakeup(tb testing.TB, pkt []byte, n int) {
	for range n {
		r.tap.Inject(context.Background(), pkt)
	}
	for got := 0; got < n; {
		c := r.rxBatch(tb)
		if c < 0 {
			tb.Fatal("rx error response")
		}
		got += c
	}
	r.postRx()
}

// postRx fills the rx ring with buffers (id = ring index mod size).
func (r *rig) postRx() {
	refs := r.rxData.Refs()
	for r.rx.Free() > 0 {
		id := uint16(r.rxPosted % r.rx.Size())
		RxRequest{ID: id, Gref: uint32(refs[id])}.Encode(r.rx.Request())
		r.rxPosted++
	}
	r.rx.PushRequests()
}

// rxBatch runs one wakeup of the rx goroutine over the frames waiting in
// the TAP queue and returns how many packets the guest got.
func (r *rig) rxBatch(tb testing.TB) int {
	if err := r.q.rxWakeup(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return r.reapRx()
}

func (r *rig) reapRx() (n int) {
	for r.rx.Unconsumed() > 0 {
		if DecodeRxResponse(r.rx.Response()).Status < 0 {
			n = -1 << 20
		}
		n++
	}
	return n
}

// TestHotPathsAllocateNothing: taking a packet off the tx ring, copying it,
// writing it to the TAP and answering it allocates nothing; nor does
// delivering a TAP frame into posted rx buffers.
func TestHotPathsAllocateNothing(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	frame := BuildFrame(FrameOpts{Payload: 1460, PartialSum: true})
	warm := func() {
		r.sendTx(frame, TxCsumBlank)
		if err := r.q.txWork(); err != nil {
			t.Fatal(err)
		}
		if bad := r.reapTx(); bad != 0 {
			t.Fatalf("%d bad tx responses", bad)
		}
		f, err := r.tap.Recv(ctx)
		if err != nil || len(f) != VnetHdrSize+len(frame) {
			t.Fatalf("tap got %d bytes, %v", len(f), err)
		}
		r.tap.Release(f)
	}
	warm()
	if a := testing.AllocsPerRun(200, warm); a != 0 {
		t.Errorf("tx path: %v allocs per packet", a)
	}

	pkt := make([]byte, VnetHdrSize+len(frame))
	VnetHdr{Flags: VnetFNeedsCsum, CsumStart: 34, CsumOffset: 16}.Encode(pkt)
	copy(pkt[VnetHdrSize:], frame)
	r.postRx()
	rx := func() {
		if err := r.tap.Inject(ctx, pkt); err != nil {
			t.Fatal(err)
		}
		n, err := r.tap.Read(ctx, r.q.rxBufs[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := r.q.rxPacket(ctx, r.q.rxBufs[0][:n]); err != nil {
			t.Fatal(err)
		}
		if got := r.reapRx(); got != 1 {
			t.Fatalf("rx: %d responses", got)
		}
		r.postRx()
	}
	rx()
	if a := testing.AllocsPerRun(200, rx); a != 0 {
		t.Errorf("rx path: %v allocs per packet", a)
	}
	// Batched: 32 frames waiting, taken in wakeups of rxReadMax frames
	// (one copy batch each) once the first ones found the TAP busy.
	batch := func() {
		for i := 0; i < 32; i++ {
			if err := r.tap.Inject(ctx, pkt); err != nil {
				t.Fatal(err)
			}
		}
		for want := 32; want > 0; want -= rxReadMax {
			if got := r.rxBatch(t); got != min(want, rxReadMax) {
				t.Fatalf("wakeup delivered %d of %d (asked for %d)", got, want, r.q.rxWant)
			}
		}
		r.postRx()
	}
	r.q.rxWant = rxReadMax
	batch()
	if a := testing.AllocsPerRun(50, batch); a != 0 {
		t.Errorf("batched rx path: %v allocs per batch", a)
	}
	if s := r.q.stats.snapshot(); s.TxPackets < 200 || s.RxPackets < 200 || s.TxErrors+s.RxErrors+s.TxDropped+s.RxDropped != 0 {
		t.Errorf("stats %+v", s)
	}
}

// BenchmarkQueueTx measures the backend's tx path alone (ring, validation,
// grant copy, virtio-net header, TAP write, responses) in batches of 64
// packets per wakeup.
func BenchmarkQueueTx(b *testing.B) {
	for _, size := range []int{64, 1514} {
		b.Run(itoa(size), func(b *testing.B) {
			r := newRig(b)
			frame := BuildFrame(FrameOpts{Payload: size - 54, PartialSum: true})
			b.ReportAllocs()
			b.SetBytes(int64(size))
			start := time.Now()
			for i := 0; i < b.N; i += 64 {
				r.txWakeup(b, min(64, b.N-i), func(int) { r.sendTx(frame, TxCsumBlank) })
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pkts/s")
		})
	}
}

// BenchmarkQueueRx measures the backend's rx path alone (TAP read,
// checks, grant copy into posted buffers, responses), batched as the rx
// goroutine does when frames are waiting.
func BenchmarkQueueRx(b *testing.B) {
	for _, size := range []int{64, 1514} {
		b.Run(itoa(size), func(b *testing.B) {
			r := newRig(b)
			frame := BuildFrame(FrameOpts{Payload: size - 54})
			pkt := make([]byte, VnetHdrSize+len(frame))
			copy(pkt[VnetHdrSize:], frame)
			r.postRx()
			b.ReportAllocs()
			b.SetBytes(int64(size))
			start := time.Now()
			for i := 0; i < b.N; i += 64 {
				r.rxWakeup(b, pkt, min(64, b.N-i))
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pkts/s")
		})
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestRateLimit(t *testing.T) {
	r, err := parseRate("10000,100000")
	if err != nil || r == nil || r.creditBytes != 10000 || r.interval != 100*time.Millisecond {
		t.Fatalf("parse: %+v %v", r, err)
	}
	now := time.Unix(1000, 0)
	if ok, _ := r.allow(6000, now); !ok {
		t.Fatal("first 6000 refused")
	}
	ok, wait := r.allow(6000, now)
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("over credit: ok %v wait %v", ok, wait)
	}
	if ok, _ := r.allow(6000, now.Add(100*time.Millisecond)); !ok {
		t.Fatal("refused after replenish")
	}
	// A 64 KiB packet with a 10 kB credit gets through once credit builds
	// up (capped at 128 KiB).
	big := 65535
	passed := false
	for i := 2; i < 20 && !passed; i++ {
		passed, _ = r.allow(big, now.Add(time.Duration(i)*100*time.Millisecond))
	}
	if !passed {
		t.Fatal("64 KiB packet never passes a 10 kB/100 ms limit")
	}
	for _, bad := range []string{"x", "1,", ",1", "1;2"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) accepted", bad)
		}
	}
	if r, err := parseRate(""); r != nil || err != nil {
		t.Errorf("empty rate: %v %v", r, err)
	}
}

// FuzzQueueTx puts arbitrary bytes on a tx ring as slots (grefs folded onto
// the shared data pages, or left wild) and runs the whole tx path: no
// panic, every consumed slot answered in order, no response for a slot
// never consumed, and only complete frames reach the TAP.
func FuzzQueueTx(f *testing.F) {
	f.Add(append(slotsBytes(TxRequest{Size: 60}), slotsBytes(TxRequest{Flags: TxMoreData | TxExtraInfo, Size: 5000}, ExtraInfo{Type: ExtraTypeGSO, GSOSize: 1000, GSOType: 1}, TxRequest{Size: 1000})...), true)
	f.Add(slotsBytes(TxRequest{Flags: TxCsumBlank, Size: 60}), false)
	var r *rig
	var cleanups []func()
	drop := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		cleanups = nil
	}
	f.Cleanup(drop)
	f.Fuzz(func(t *testing.T, data []byte, foldGrefs bool) {
		if r == nil || r.tx.Free() != r.tx.Size() {
			// A fresh rig, unless the last input left a chain pending. The
			// rig outlives this input's t: it is freed when replaced or
			// with the target.
			drop()
			r = newRig(keepTB{t, &cleanups})
		}
		refs := r.txData.Refs()
		n := 0
		for len(data) >= TxEntrySize && n < int(r.tx.Size()) {
			slot := r.tx.Request()
			copy(slot, data[:TxEntrySize])
			if foldGrefs {
				g := refs[DecodeTxRequest(slot).Gref%uint32(len(refs))]
				binary.LittleEndian.PutUint32(slot[offTxReqGref:], uint32(g))
			}
			data = data[TxEntrySize:]
			n++
		}
		r.tx.PushRequests()
		if err := r.q.txWork(); err != nil {
			t.Fatalf("txWork: %v", err)
		}
		got := 0
		for r.tx.Unconsumed() > 0 {
			rsp := DecodeTxResponse(r.tx.Response())
			if rsp.Status < RspDropped || rsp.Status > RspNull {
				t.Fatalf("response status %d", rsp.Status)
			}
			got++
		}
		pending := r.q.chain.nids
		if got+pending != n {
			t.Fatalf("%d slots, %d answered, %d pending in a chain", n, got, pending)
		}
		for {
			select {
			case fr := <-r.tap.toHost:
				if len(fr) < VnetHdrSize+EthHeaderLen || len(fr) > VnetHdrSize+MaxTxSize {
					t.Fatalf("tap got a %d-byte frame", len(fr))
				}
				continue
			default:
			}
			break
		}
	})
}

func slotsBytes(items ...any) []byte {
	var out []byte
	for _, s := range slots(items...) {
		out = append(out, s...)
	}
	return out
}

// keepTB defers cleanups to a list the fuzz target runs at its end.
type keepTB struct {
	*testing.T
	cleanups *[]func()
}

func (k keepTB) Cleanup(f func()) { *k.cleanups = append(*k.cleanups, f) }

// FuzzQueueRx feeds arbitrary TAP frames (virtio-net header included) to
// the rx path, for a guest with arbitrary features: no panic, and every rx
// request taken is answered in its own slot with a sane data length.
func FuzzQueueRx(f *testing.F) {
	fr := BuildFrame(FrameOpts{Payload: 5000, PartialSum: true})
	pkt := make([]byte, VnetHdrSize+len(fr))
	VnetHdr{Flags: VnetFNeedsCsum, GSOType: VnetGSOTCPv4, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}.Encode(pkt)
	copy(pkt[VnetHdrSize:], fr)
	f.Add(pkt, uint8(0xff))
	f.Add(pkt[:40], uint8(0))
	var r *rig
	var cleanups []func()
	f.Cleanup(func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	})
	f.Fuzz(func(t *testing.T, pkt []byte, feat uint8) {
		if len(pkt) > rxBufSize {
			return
		}
		if r == nil {
			r = newRig(keepTB{t, &cleanups})
			r.postRx()
		}
		r.q.feat = frontFeatures{rxCopy: true, sg: feat&1 != 0, gsoTCPv4: feat&2 != 0, gsoTCPv6: feat&4 != 0,
			ipv6Csum: feat&8 != 0, noCsumOffload: feat&16 != 0}
		r.q.mcast = nil
		if feat&32 != 0 {
			r.q.mcast = &mcastList{}
		}
		buf := append([]byte(nil), pkt...)
		if err := r.q.rxPacket(context.Background(), buf); err != nil {
			t.Fatal(err)
		}
		idx := r.rxCons
		for r.rx.Unconsumed() > 0 {
			slot := r.rx.Response()
			rsp := DecodeRxResponse(slot)
			if rsp.Flags&RxExtraInfo == 0 && rsp.ID != uint16(idx%r.rx.Size()) && DecodeExtraInfo(slot).Type != ExtraTypeGSO {
				t.Fatalf("response at %d has id %d", idx, rsp.ID)
			}
			if rsp.Status > PageSize {
				t.Fatalf("response claims %d bytes", rsp.Status)
			}
			idx++
		}
		r.rxCons = idx
		r.postRx()
	})
}

// TestRxWakeupTakesAFullBatch: frames waiting on the TAP are delivered up
// to rxReadMax per wakeup in one grant copy batch with at most one
// notification, and the rest in the next wakeup.
func TestRxWakeupTakesAFullBatch(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	pkt := make([]byte, VnetHdrSize+1514)
	copy(pkt[VnetHdrSize:], BuildFrame(FrameOpts{Payload: 1460}))
	r.postRx()
	n := rxReadMax + rxReadMax/2
	for i := 0; i < n; i++ {
		if err := r.tap.Inject(ctx, pkt); err != nil {
			t.Fatal(err)
		}
	}
	r.q.rxWant = rxReadMax // as after a wakeup that found the queue busy
	before := r.q.stats.snapshot()
	if got := r.rxBatch(t); got != rxReadMax {
		t.Fatalf("first wakeup delivered %d of %d waiting, want %d", got, n, rxReadMax)
	}
	s := r.q.stats.snapshot()
	if b, no := s.RxBatches-before.RxBatches, s.RxNotify-before.RxNotify; b != 1 || no > 1 {
		t.Errorf("%d frames took %d copy batches and %d notifications, want 1 and at most 1", rxReadMax, b, no)
	}
	r.postRx()
	if got := r.rxBatch(t); got != n-rxReadMax {
		t.Fatalf("second wakeup delivered %d, want the other %d", got, n-rxReadMax)
	}
}
