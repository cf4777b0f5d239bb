package netback

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"drvdom/grant"
)

// Host -> guest. The rx goroutine: TAP read (frame + virtio-net header),
// checks (GSO type the guest accepts, multicast filter, size), wait for
// enough posted rx buffers, grant copy into them, responses in the slots of
// the requests they consume (data, then the GSO extra after the first data
// slot, then more data), notify.

const (
	// rxBufSize holds the largest frame a TSO-enabled TAP hands out
	// (64 KiB of GSO payload and headers) with its virtio-net header.
	rxBufSize = VnetHdrSize + 65536 + 1024
	// rxMaxSlots is the most slots one packet can take: 17 data pages + the
	// GSO extra.
	rxMaxSlots = (rxBufSize+PageSize-1)/PageSize + 1
	// rxFirstAt is where a frame buffer of the arena starts: its
	// virtio-net header just below a page boundary, so the frame itself
	// starts on a page (the arena is page aligned: the Go allocator gives
	// objects larger than 32 KiB whole pages). The kernel's grant copy
	// (gntdev) splits every segment at the pages of its local side and
	// hands Xen 16 ops per hypercall, so a 4 KiB guest slot filled from a
	// frame that does not start on a page would cost two copy ops and two
	// page pins.
	rxFirstAt = PageSize - VnetHdrSize
	// rxStride is the distance between two frame buffers of the arena.
	rxStride = (rxBufSize + PageSize - 1) / PageSize * PageSize
	// rxReadMax is the most frames one wakeup reads, copies in one grant
	// copy batch and announces with one notification (and the arena's
	// buffers: 1.1 MiB per queue, of which a stream of small frames
	// touches two pages per buffer); rxReadMin the fewest it asks for.
	// 64 was tried (stop 22): dom0->guest the guest took more frames per
	// interrupt, ACKed less and drvdomd spent 0.42-0.62 instead of
	// 0.55-0.73 ms per frame, but guest->dom0 fell to 0.005-0.008 Gbit/s
	// in the bench (kernel 0.018-0.074): on a kernel that reads a TAP one
	// read(2) per frame, the first of 64 ACKs waits for the other reads
	// before the guest sees it, and the guest's TCP, measuring a longer
	// round trip, sent 4 KB frames (the kernel's netback got 57 KB).
	rxReadMax = 16
	rxReadMin = 4
	// rxArenaSize holds rxReadMax frame buffers.
	rxArenaSize = rxFirstAt + rxReadMax*rxStride
	// rxBatchMax bounds the packets delivered per grant copy batch.
	rxBatchMax = 64
	// rxMaxOut bounds the response slots of one batch.
	rxMaxOut = 256 + rxMaxSlots
)

// tryReader is implemented by TAP queues that can read a frame without
// blocking; readOneByOne then takes every frame already waiting.
type tryReader interface {
	// TryRead reads one frame if one is waiting: (n, true, nil); (0, false,
	// nil) if none.
	TryRead(b []byte) (int, bool, error)
}

// readBatch is BatchReader.ReadBatch for any TAP queue: its own if it has
// one, else readOneByOne.
func readBatch(ctx context.Context, tq TapQueue, bufs [][]byte, ns []int) (int, error) {
	if br, ok := tq.(BatchReader); ok {
		return br.ReadBatch(ctx, bufs, ns)
	}
	tr, _ := tq.(tryReader)
	return readOneByOne(ctx, tq, tr, bufs, ns)
}

// readOneByOne reads a batch with a blocking Read, then (with tr) a TryRead
// per frame already waiting.
func readOneByOne(ctx context.Context, tq TapQueue, tr tryReader, bufs [][]byte, ns []int) (int, error) {
	n, err := tq.Read(ctx, bufs[0])
	if err != nil {
		return 0, err
	}
	ns[0] = n
	k := 1
	for tr != nil && k < len(bufs) {
		m, ok, err := tr.TryRead(bufs[k])
		if err != nil || !ok {
			break // an error shows again on the next call
		}
		ns[k] = m
		k++
	}
	return k, nil
}

// rxOut is one rx ring slot of the current batch, in ring order.
type rxOut struct {
	id    uint16
	extra bool // the GSO extra-info slot
	seg   int  // data slot: its copy segment
	flags uint16
}

// rxPkt is one packet of the current batch.
type rxPkt struct {
	outStart, outEnd int
	segStart, segEnd int
	gso              ExtraInfo
	n                int
}

type rxState struct {
	rxArena []byte
	rxBufs  [][]byte // the arena's frame buffers (ReadBatch may swap them)
	rxNs    []int
	rxWant  int // buffers the next wakeup reads into
	rxSegs  []grant.CopySeg
	rxOuts  []rxOut
	rxPkts  []rxPkt
}

func (q *queue) initRx() {
	q.rxArena = make([]byte, rxArenaSize)
	q.rxBufs = make([][]byte, rxReadMax)
	for i := range q.rxBufs {
		at := rxFirstAt + i*rxStride
		q.rxBufs[i] = q.rxArena[at : at+rxBufSize : at+rxBufSize]
	}
	q.rxNs = make([]int, rxReadMax)
	q.rxWant = rxReadMin
	q.rxSegs = make([]grant.CopySeg, 0, rxMaxOut)
	q.rxOuts = make([]rxOut, 0, rxMaxOut)
	q.rxPkts = make([]rxPkt, 0, rxBatchMax)
}

// serveRx is the rx goroutine. It owns the TAP queue's reads and the rx ring.
func (q *queue) serveRx(ctx context.Context) error {
	told := false
	for {
		if err := q.rxWakeup(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !told {
			if s, ok := q.tap.(batchReadState); ok {
				if err := s.BatchReadErr(); err != nil {
					q.log.Info("tap: batched reads refused, one read(2) per frame", "queue", q.id, "err", err)
				}
			}
			told = true
		}
	}
}

// batchReadState is implemented by TAP queues whose batched reads can be
// refused by the kernel (older ones, the lab's 6.1 among them, refuse
// RWF_NOWAIT on a TAP: EOPNOTSUPP).
type batchReadState interface {
	// BatchReadErr is why reads are not batched (nil: they are).
	BatchReadErr() error
}

// rxWakeup waits for frames from the TAP and delivers those waiting, read
// in one batch (BatchReader), in one grant copy batch and one
// notification. A wakeup asks for twice as many frames as the last one
// found (rxReadMin to rxReadMax): a batch's reads that find the queue
// empty cost little, but not nothing.
func (q *queue) rxWakeup(ctx context.Context) error {
	bufs := q.rxBufs[:q.rxWant]
	k, err := readBatch(ctx, q.tap, bufs, q.rxNs)
	if err != nil {
		return fmt.Errorf("queue %d: tap: %w", q.id, err)
	}
	for i := 0; i < k && err == nil; i++ {
		err = q.rxAdd(ctx, bufs[i][:q.rxNs[i]])
	}
	q.rxFlush()
	q.rxWant = min(max(2*k, rxReadMin), rxReadMax)
	return err
}

// rxPacket delivers one frame read from the TAP at once.
func (q *queue) rxPacket(ctx context.Context, pkt []byte) error {
	err := q.rxAdd(ctx, pkt)
	q.rxFlush()
	return err
}

// rxAdd checks one frame read from the TAP, takes the rx requests it needs
// (waiting for the guest to post them) and queues its copies and responses
// in the batch; pkt must stay untouched until rxFlush. It returns an error
// only when the queue cannot go on (a corrupted ring, ctx ended).
func (q *queue) rxAdd(ctx context.Context, pkt []byte) error {
	if len(pkt) < VnetHdrSize+EthHeaderLen {
		q.stats.rxDropped.Add(1)
		return nil
	}
	vh := DecodeVnetHdr(pkt)
	meta, err := rxMetaOf(vh, q.feat.gsoMask())
	if err != nil {
		q.stats.rxDropped.Add(1)
		return nil
	}
	frame := pkt[VnetHdrSize:]
	if meta.flags&RxCsumBlank != 0 && !meta.hasGSO && (q.feat.noCsumOffload ||
		!q.feat.ipv6Csum && binary.BigEndian.Uint16(frame[12:]) == etherTypeIPv6) {
		// The guest cannot take this partial checksum: finish it here.
		if err := completeCsum(frame, vh); err != nil {
			q.stats.rxDropped.Add(1)
			return nil
		}
		meta.flags = RxDataValidated
	}
	if q.mcast != nil && !q.mcast.accepts(frame) {
		q.stats.rxDropped.Add(1)
		return nil
	}
	slots := (len(frame) + PageSize - 1) / PageSize
	if slots > 1 && !q.feat.sg {
		q.stats.rxDropped.Add(1) // the guest cannot take multi-slot packets
		return nil
	}
	if meta.hasGSO {
		slots++
	}
	if len(q.rxOuts)+slots > cap(q.rxOuts) || len(q.rxPkts) == cap(q.rxPkts) {
		q.rxFlush()
	}
	avail, err := q.rx.Unconsumed()
	if err != nil {
		return fmt.Errorf("queue %d: rx: %w: %w", q.id, ErrRing, err)
	}
	if int(avail) < slots {
		q.rxFlush() // the guest needs these responses to post more
		if err := q.waitRxSlots(ctx, slots); err != nil {
			if errors.Is(err, errRxStalled) {
				q.stats.rxDropped.Add(1) // the guest posts no buffers: drop, keep draining the TAP
				return nil
			}
			return err
		}
	}
	p := rxPkt{outStart: len(q.rxOuts), segStart: len(q.rxSegs), gso: meta.gso, n: len(frame)}
	pos := 0
	for i := 0; i < slots; i++ {
		r := DecodeRxRequest(q.rx.Request()) // copied out before use
		if meta.hasGSO && i == 1 {
			q.rxOuts = append(q.rxOuts, rxOut{id: r.ID, extra: true})
			continue
		}
		n := min(PageSize, len(frame)-pos)
		var flags uint16
		if i == 0 {
			flags = meta.flags
			if meta.hasGSO {
				flags |= RxExtraInfo
			}
		}
		if pos+n < len(frame) {
			flags |= RxMoreData
		}
		q.rxOuts = append(q.rxOuts, rxOut{id: r.ID, seg: len(q.rxSegs), flags: flags})
		q.rxSegs = append(q.rxSegs, grant.CopySeg{
			Src: grant.CopyPtr{Local: frame[pos : pos+n]},
			Dst: grant.CopyPtr{Ref: grant.Ref(r.Gref), Dom: q.front},
			Len: uint16(n),
		})
		pos += n
	}
	p.outEnd, p.segEnd = len(q.rxOuts), len(q.rxSegs)
	q.rxPkts = append(q.rxPkts, p)
	return nil
}

// rxFlush copies the batch into the guest's buffers, writes every response
// in the slot of the request it consumed, pushes and notifies once.
func (q *queue) rxFlush() {
	if len(q.rxOuts) == 0 {
		return
	}
	batchErr := q.mapper.Copy(q.rxSegs)
	for i := range q.rxPkts {
		p := &q.rxPkts[i]
		failed := batchErr != nil
		for _, s := range q.rxSegs[p.segStart:p.segEnd] {
			failed = failed || s.Status != 0
		}
		for _, o := range q.rxOuts[p.outStart:p.outEnd] {
			slot := q.rx.Response() // rsp_prod_pvt == the request's index
			if o.extra {
				p.gso.Encode(slot)
				continue
			}
			s := &q.rxSegs[o.seg]
			rsp := RxResponse{ID: o.id, Flags: o.flags, Status: int16(s.Len)}
			if batchErr != nil || s.Status != 0 {
				rsp.Status = RspError
			}
			rsp.Encode(slot)
		}
		if failed {
			q.stats.rxErrors.Add(1)
		} else {
			q.stats.rxPackets.Add(1)
			q.stats.rxBytes.Add(uint64(p.n))
			if p.gso.Type != 0 {
				q.stats.rxGSO.Add(1)
			}
		}
	}
	q.stats.rxBatches.Add(1)
	if q.rx.PushResponses() {
		q.stats.rxNotify.Add(1)
		if err := q.events.Notify(q.localRx); err != nil {
			q.log.Warn("notify rx", "queue", q.id, "err", err)
		}
	}
	q.rxSegs = q.rxSegs[:0]
	q.rxOuts = q.rxOuts[:0]
	q.rxPkts = q.rxPkts[:0]
}

// waitRxSlots blocks until the frontend has posted at least n rx buffers,
// arming req_event (as Linux's xenvif_rx_ring_slots_available does:
// req_event = req_prod + 1) so that its next post notifies us.
//
// If the guest posts nothing for rxDrain it returns errRxStalled and the
// packet is dropped, as Linux netback's rx_drain_timeout does, so a guest
// that stopped receiving cannot hold the TAP queue (and the host's
// senders) forever.
func (q *queue) waitRxSlots(ctx context.Context, n int) error {
	var stall *time.Timer
	defer func() {
		if stall != nil {
			stall.Stop()
		}
	}()
	for {
		avail, err := q.rx.Unconsumed()
		if err != nil {
			return fmt.Errorf("queue %d: rx: %w: %w", q.id, ErrRing, err)
		}
		if int(avail) >= n {
			return nil
		}
		if n > int(q.rx.Size()) {
			return fmt.Errorf("queue %d: rx: packet needs %d slots of %d", q.id, n, q.rx.Size())
		}
		// Ask for an event at the first request past the avail already
		// posted (a final check's req_cons+1 would be behind req_prod and
		// never fire), then look again to close the race.
		q.rx.SetReqEvent(q.rx.ReqCons() + avail + 1)
		again, err := q.rx.Unconsumed()
		if err != nil {
			return fmt.Errorf("queue %d: rx: %w: %w", q.id, ErrRing, err)
		}
		if again > avail {
			continue
		}
		if stall == nil {
			stall = time.NewTimer(q.rxDrainTimeout()) // slow path only
		}
		select {
		case <-q.rxWake:
		case <-stall.C:
			return errRxStalled
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

var errRxStalled = errors.New("netback: guest posts no rx buffers")

// DefaultRxDrainTimeout is how long a packet waits for rx buffers before it
// is dropped (Linux's rx_drain_timeout_msecs).
const DefaultRxDrainTimeout = 10 * time.Second

func (q *queue) rxDrainTimeout() time.Duration {
	if q.rxDrain > 0 {
		return q.rxDrain
	}
	return DefaultRxDrainTimeout
}

// mcastList is a vif's multicast filter (request-multicast-control): rx
// frames to a multicast group the guest did not subscribe are dropped.
// Safe for concurrent use (tx goroutines add, rx goroutines read).
type mcastList struct {
	mu    sync.RWMutex
	addrs [][6]byte
}

var errMcastNotFound = errors.New("netback: multicast address not subscribed")

func (q *queue) applyMcast(c *txChain) error {
	if q.mcast == nil {
		return nil // filtering off: accept and ignore, as Linux does
	}
	for t := ExtraTypeMcastAdd; t <= ExtraTypeMcastDel; t++ {
		if c.extraSeen&(1<<t) == 0 {
			continue
		}
		addr := c.extras[t].Mcast
		var err error
		if t == ExtraTypeMcastAdd {
			err = q.mcast.add(addr)
		} else {
			err = q.mcast.del(addr)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (m *mcastList) add(a [6]byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, x := range m.addrs {
		if x == a {
			return nil
		}
	}
	if len(m.addrs) >= McastMax {
		return errMcastFull
	}
	m.addrs = append(m.addrs, a)
	return nil
}

func (m *mcastList) del(a [6]byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, x := range m.addrs {
		if x == a {
			m.addrs = append(m.addrs[:i], m.addrs[i+1:]...)
			return nil
		}
	}
	return errMcastNotFound
}

// accepts reports whether frame passes the filter: unicast and broadcast
// always do, multicast only to a subscribed group.
func (m *mcastList) accepts(frame []byte) bool {
	if frame[0]&1 == 0 {
		return true
	}
	var dst [6]byte
	copy(dst[:], frame[:6])
	if dst == [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff} {
		return true
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, x := range m.addrs {
		if x == dst {
			return true
		}
	}
	return false
}
