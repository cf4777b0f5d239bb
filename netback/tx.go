package netback

import (
	"context"
	"fmt"
	"time"

	"drvdom/evtchn"
	"drvdom/grant"
)

// Guest -> host. The tx goroutine: event channel wake, tx ring, chain
// validation (chain.go), batched grant copy into a local arena, virtio-net
// header (vnet.go), TAP write, one response per slot, notify.

const (
	// txArenaSize holds a batch of copied packets, each with room for its
	// virtio-net header in front: two maximal GSO packets, or ~85 of 1500
	// bytes (about 130 KiB per queue), plus the page a packet may be moved
	// by txPlace.
	txArenaSize = 2*(VnetHdrSize+MaxTxSize+1) + PageSize
	// txMaxSegs bounds the grant copy segments of one batch (one per slot).
	txMaxSegs = 256
)

// txRsp is one consumed tx slot waiting for its response.
type txRsp struct {
	id     uint16
	status int16
	extra  bool // extra-info slot: answered RspNull
}

// txPkt is a validated packet of the current batch.
type txPkt struct {
	rspStart, rspEnd int // its slots in txState.rsps
	segStart, segEnd int // its copy segments
	off, n           int // arena[off:off+VnetHdrSize+n]: header room + frame
	flags            uint16
	gso              ExtraInfo
	hasGSO           bool
	status           int16 // flushTx: RspOkay while the frame is to be sent
}

type txState struct {
	chain    txChain
	slot     [TxEntrySize]byte
	held     bool // slot holds the first request of a rate-limited packet
	arena    []byte
	used     int
	segs     []grant.CopySeg
	pkts     []txPkt
	rsps     []txRsp
	frames   [][]byte // flushTx: the batch's frames to send
	sendErrs []error  // flushTx: frames[i]'s write error
	waitRate time.Duration
	ports    [4]evtchn.Port
}

func (q *queue) initTx() {
	q.arena = make([]byte, txArenaSize)
	q.segs = make([]grant.CopySeg, 0, txMaxSegs)
	q.pkts = make([]txPkt, 0, txMaxSegs)
	q.rsps = make([]txRsp, 0, int(q.tx.Size())+maxChainSlots)
	q.frames = make([][]byte, 0, txMaxSegs)
	q.sendErrs = make([]error, txMaxSegs)
}

// serveTx is the tx goroutine. It owns the queue's event channel handle.
func (q *queue) serveTx(ctx context.Context) error {
	for {
		if err := q.txWork(); err != nil {
			return err
		}
		wctx, cancel := ctx, context.CancelFunc(nil)
		if q.waitRate > 0 {
			wctx, cancel = context.WithTimeout(ctx, q.waitRate)
		}
		n, err := q.events.Wait(wctx, q.ports[:])
		if cancel != nil {
			cancel()
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if wctx.Err() != nil {
				continue // rate limit timer
			}
			return fmt.Errorf("queue %d: wait for events: %w", q.id, err)
		}
		for _, p := range q.ports[:n] {
			if err := q.events.Unmask(p); err != nil {
				return fmt.Errorf("queue %d: unmask %d: %w", q.id, p, err)
			}
			if p == q.localRx {
				q.wakeRx()
			}
		}
	}
}

// txWork consumes every tx request available, answers them and returns
// with the ring's req_event armed, or early when the rate limit stops it
// (q.waitRate > 0).
func (q *queue) txWork() error {
	q.waitRate = 0
	for {
		n, err := q.tx.Unconsumed()
		if err != nil {
			q.flushTx()
			return fmt.Errorf("queue %d: tx: %w: %w", q.id, ErrRing, err)
		}
		if n == 0 && !q.held {
			q.flushTx()
			more, err := q.tx.FinalCheckForRequests()
			if err != nil {
				return fmt.Errorf("queue %d: tx: %w: %w", q.id, ErrRing, err)
			}
			if !more {
				return nil
			}
			continue
		}
		for q.held || n > 0 {
			if !q.held {
				copy(q.slot[:], q.tx.Request()) // copy before looking at it
				n--
			}
			if q.chain.state == csStart && q.rate != nil {
				size := int(DecodeTxRequest(q.slot[:]).Size)
				if ok, wait := q.rate.allow(size, time.Now()); !ok {
					q.held = true
					q.waitRate = wait
					q.flushTx()
					return nil
				}
			}
			q.held = false
			if q.chain.feed(q.slot[:], LegacySlotsMax) {
				q.endChain()
			}
		}
	}
}

// endChain queues the responses of a complete chain and, for a valid
// packet, its copy segments.
func (q *queue) endChain() {
	c := &q.chain
	defer c.reset()
	status := RspOkay
	switch {
	case c.mcast():
		if err := q.applyMcast(c); err != nil {
			status = RspError
			q.log.Debug("multicast control refused", "queue", q.id, "err", err)
		}
	case c.drop != nil:
		status = RspError
		q.stats.txErrors.Add(1)
		q.log.Debug("tx chain dropped", "queue", q.id, "err", c.drop)
	default:
		q.queuePacket(c)
		return
	}
	q.addRsps(c, status)
}

func (q *queue) addRsps(c *txChain, status int16) {
	if len(q.rsps)+c.nids > cap(q.rsps) {
		q.flushTx()
	}
	for _, id := range c.ids[:c.nids] {
		if id < 0 {
			q.rsps = append(q.rsps, txRsp{status: RspNull, extra: true})
		} else {
			q.rsps = append(q.rsps, txRsp{id: uint16(id), status: status})
		}
	}
}

func (q *queue) queuePacket(c *txChain) {
	n := c.packetLen()
	if q.used+VnetHdrSize+PageSize-1+n > len(q.arena) || len(q.segs)+c.nreq > cap(q.segs) ||
		len(q.pkts) == cap(q.pkts) || len(q.rsps)+c.nids > cap(q.rsps) {
		q.flushTx()
	}
	start := txPlace(q.used+VnetHdrSize, c.reqs[:c.nreq])
	p := txPkt{
		rspStart: len(q.rsps),
		segStart: len(q.segs),
		off:      start - VnetHdrSize,
		n:        n,
		flags:    c.reqs[0].Flags,
	}
	p.gso, p.hasGSO = c.gso()
	pos := start
	for _, r := range c.reqs[:c.nreq] {
		if r.Size == 0 {
			continue
		}
		q.segs = append(q.segs, grant.CopySeg{
			Src: grant.CopyPtr{Ref: grant.Ref(r.Gref), Dom: q.front, Offset: r.Offset},
			Dst: grant.CopyPtr{Local: q.arena[pos : pos+int(r.Size)]},
			Len: r.Size,
		})
		pos += int(r.Size)
	}
	q.used = pos
	q.addRsps(c, RspOkay)
	p.rspEnd = len(q.rsps)
	p.segEnd = len(q.segs)
	q.pkts = append(q.pkts, p)
}

// txPlace returns where in the arena (at least lo, less than lo+PageSize)
// a packet made of reqs' slots starts, so that as few of its slots as
// possible cross a page of the arena (page aligned, as rxFirstAt says). The
// kernel's grant copy (gntdev) splits every segment at the pages of its
// local side and hands Xen 16 ops per hypercall: a guest page copied to a
// spot straddling two local pages costs two copy ops and two page pins.
// The guest's slots of one buffer run on from each other's page offsets
// (offset o to the page's end, then whole pages), so putting one slot at
// its own page offset lines up the whole run. The candidates are the
// packed position and, per slot, the position that gives that slot its
// guest offset; the fewest crossings win, then the least padding.
func txPlace(lo int, reqs []TxRequest) int {
	best, bestX := lo, txCrossings(lo, reqs)
	if bestX == 0 {
		return lo
	}
	cum := 0
	for _, r := range reqs {
		if r.Size == 0 {
			continue
		}
		s := lo + (int(r.Offset)-(lo+cum)%PageSize+PageSize)%PageSize
		if x := txCrossings(s, reqs); x < bestX || x == bestX && s < best {
			best, bestX = s, x
			if x == 0 {
				break
			}
		}
		cum += int(r.Size)
	}
	return best
}

// txCrossings counts the slots of a packet starting at arena offset start
// that straddle a page.
func txCrossings(start int, reqs []TxRequest) int {
	x := 0
	for _, r := range reqs {
		if r.Size != 0 && start%PageSize+int(r.Size) > PageSize {
			x++
		}
		start += int(r.Size)
	}
	return x
}

// flushTx copies the batch's packets out of the guest, sends them to the
// TAP (with one system call for the lot when the TAP queue is a
// BatchWriter), then answers every queued slot in ring order and notifies.
//
// The responses wait for the TAP write, as Linux netback's wait for its
// grant-mapped pages to be released. A response pushed while the guest is
// still in netfront's xmit path (which reaps tx responses right after it
// notifies us) is reaped there, and the interrupt our notification raises
// then finds nothing: Linux counts it spurious, and a run of spurious
// interrupts makes it delay the event channel's EOI, geometrically up to a
// second (the lateeoi protection of XSA-332), during which the guest sees
// no tx completion at all. A single TCP stream, whose socket waits for its
// completions (TCP small queues), then stalls for up to a second at a time.
// A guest's first stream after boot, answered before the TAP write (stop
// 21): 0.001-0.010 Gbit/s in six lab boots, five of them with whole seconds
// of nothing; answered after it: 0.004-0.086 in four, one such second in
// one (the kernel's netback 0.021-0.102). A frame the TAP refuses is
// answered DROPPED.
func (q *queue) flushTx() {
	if len(q.rsps) == 0 {
		return
	}
	batchErr := error(nil)
	if len(q.segs) > 0 {
		batchErr = q.mapper.Copy(q.segs)
	}
	q.frames = q.frames[:0]
	for i := range q.pkts {
		p := &q.pkts[i]
		var frame []byte
		if p.status, frame = q.preparePacket(p, batchErr); p.status == RspOkay {
			q.frames = append(q.frames, frame)
		}
	}
	errs := q.sendErrs[:len(q.frames)]
	if bw, ok := q.tap.(BatchWriter); ok && len(q.frames) > 1 {
		bw.WriteBatch(q.frames, errs)
	} else {
		for i, f := range q.frames {
			_, errs[i] = q.tap.Write(f)
		}
	}
	sent := 0
	for i := range q.pkts {
		p := &q.pkts[i]
		if p.status == RspOkay {
			p.status = q.packetSent(p, errs[sent])
			errs[sent] = nil
			sent++
		}
		for j := p.rspStart; j < p.rspEnd; j++ {
			if !q.rsps[j].extra {
				q.rsps[j].status = p.status
			}
		}
	}
	for _, r := range q.rsps {
		TxResponse{ID: r.id, Status: r.status}.Encode(q.tx.Response())
	}
	q.stats.txBatches.Add(1)
	if q.tx.PushResponses() {
		q.stats.txNotify.Add(1)
		if err := q.events.Notify(q.localTx); err != nil {
			q.log.Warn("notify tx", "queue", q.id, "err", err)
		}
	}
	q.segs = q.segs[:0]
	q.pkts = q.pkts[:0]
	q.rsps = q.rsps[:0]
	q.used = 0
}

// preparePacket checks a packet's copy and builds its header; it returns
// RspOkay and the frame to write to the TAP, or the status for its slots.
func (q *queue) preparePacket(p *txPkt, batchErr error) (int16, []byte) {
	if batchErr != nil {
		q.stats.txErrors.Add(1)
		return RspError, nil
	}
	for _, s := range q.segs[p.segStart:p.segEnd] {
		if s.Status != 0 {
			q.stats.txErrors.Add(1)
			return RspError, nil // a bad grant
		}
	}
	buf := q.arena[p.off : p.off+VnetHdrSize+p.n]
	var gso *ExtraInfo
	if p.hasGSO {
		gso = &p.gso
	}
	h, err := txVnetHdr(buf[VnetHdrSize:], p.flags, gso)
	if err != nil {
		q.stats.txDropped.Add(1)
		return RspDropped, nil
	}
	h.Encode(buf)
	return RspOkay, buf
}

// packetSent counts a frame the TAP took (err nil) or refused, and returns
// the status for its slots.
func (q *queue) packetSent(p *txPkt, err error) int16 {
	if err != nil {
		q.stats.txDropped.Add(1)
		return RspDropped
	}
	q.stats.txPackets.Add(1)
	q.stats.txBytes.Add(uint64(p.n))
	if p.hasGSO {
		q.stats.txGSO.Add(1)
	}
	return RspOkay
}
