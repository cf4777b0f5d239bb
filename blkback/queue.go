package blkback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/journal"
	"drvdom/ring"
)

// slot is one request in flight: its private copy, its segments, the pages
// it uses and the transfer. A queue preallocates one per ring entry, so the
// steady state allocates nothing; the 256-entry arrays of indirect requests
// are allocated on a slot's first indirect request and kept.
type slot struct {
	q      *queue
	raw    [RequestSize64]byte
	req    Request
	op     uint8 // effective operation, echoed in the response
	segs   []Segment
	bufs   [][]byte
	pgs    []*pgrant   // persistent grants held
	refs   []grant.Ref // grefs to map for this request only
	refIdx []int       // for refs[i]: which segment
	smallS [MaxSegmentsPerRequest]Segment
	smallB [MaxSegmentsPerRequest][]byte
	smallP [MaxSegmentsPerRequest]*pgrant
	smallR [MaxSegmentsPerRequest]grant.Ref
	smallI [MaxSegmentsPerRequest]int
	bidx   []int32         // grant copy: bounce pages held
	copies []grant.CopySeg // grant copy: the batch
	smallX [MaxSegmentsPerRequest]int32
	smallC [MaxSegmentsPerRequest]grant.CopySeg
	ind    *indirectScratch
	idx    int            // index in queue.slots
	jh     journal.Handle // the request's journal entry (with a journal)
	npg    int
	m      grant.Mapping // this request's non-persistent mapping, if any
	io     IO
	uid    uint64 // io_uring user_data
	fix    int32  // io_uring: 1 + the registered bounce buffer it holds, 0 none
	bytes  uint64
	status int16
}

type indirectScratch struct {
	segs   [MaxIndirectSegments]Segment
	bufs   [MaxIndirectSegments][]byte
	pgs    [MaxIndirectSegments]*pgrant
	refs   [MaxIndirectSegments]grant.Ref
	idx    [MaxIndirectSegments]int
	irefs  [MaxIndirectPagesPerRequest]grant.Ref
	bidx   [MaxIndirectSegments]int32
	copies [MaxIndirectSegments]grant.CopySeg
	ibuf   [PageSize]byte // grant copy: the indirect page's copy
}

// queue is one ring: its mapping, event channel and goroutine.
type queue struct {
	dev   *Device
	idx   int
	abi   ABI
	rmap  grant.Mapping
	ring  *ring.Back
	evh   evtchn.Handle
	port  evtchn.Port
	pg    *pgrantTable // nil without persistent grants
	log   *slog.Logger
	slots []slot
	exec  executor   // the device's I/O engine
	loop  ringRunner // the ring's own thread and io_uring (exec too), or nil

	mu       sync.Mutex // the ring's private indices and responses; inflight
	drained  *sync.Cond
	inflight int     // taken (dispatched or being validated) and not answered
	stopping bool    // the connection is going away: stop draining
	free     []*slot // free request slots, a stack (under mu)
	batch    []*slot
	pending  bool             // inline responses claimed but not pushed
	jrn      *journal.Journal // nil without Driver.JournalDir
	jrnPath  string
	replay   []*slot // journaled requests a crashed process left unanswered

	// For Driver.Stalled: a count of the ring's progress (batches taken,
	// requests answered) and how many requests it has in flight (mirrors
	// inflight). A count, not a time: reading the clock per request is a
	// system call in a PV driver domain whose vDSO has no stable TSC.
	progress atomic.Uint64
	busy     atomic.Int32
	// Driver.Stalled's last look (under Driver.qmu): the count it saw
	// and since when (unix ns, 0: never looked).
	stallSeen  uint64
	stallSince int64

	// dead (under mu) models the process dying at this instant: nothing
	// more is written to the shared ring or the journal (tests of the
	// crash-only restart; see Driver.kill). killed mirrors it for notify,
	// which runs outside mu: a dead process sends no event either, even
	// for responses it already published.
	dead   bool
	killed atomic.Bool
}

// errDead stops the service loop of a killed queue.
var errDead = errors.New("backend killed")

func newQueue(dev *Device, idx int, abi ABI, rmap grant.Mapping, evh evtchn.Handle, port evtchn.Port, persistent bool, id journalIdentity) (*queue, error) {
	r, err := ring.NewBack(rmap.Bytes(), abi.RequestSize())
	if err != nil {
		return nil, err
	}
	q := &queue{dev: dev, idx: idx, abi: abi, rmap: rmap, ring: r, evh: evh, port: port,
		log: dev.log.With("queue", idx)}
	q.drained = sync.NewCond(&q.mu)
	n := int(r.Size())
	q.slots = make([]slot, n)
	q.free = make([]*slot, 0, n)
	q.batch = make([]*slot, 0, n)
	for i := range q.slots {
		q.slots[i].q, q.slots[i].idx = q, i
		q.free = append(q.free, &q.slots[i])
	}
	id.size, id.entry = r.Size(), uint32(abi.RequestSize())
	q.resume(id)
	if persistent {
		q.pg = newPgrantTable(dev.frontDom, dev.drv.Grants, dev.drv.maxPgrants(), &dev.stats)
	}
	return q, nil
}

// run serves the ring until ctx ends or the frontend breaks it.
func (q *queue) run(ctx context.Context) error {
	var ports [1]evtchn.Port
	if q.dev.resuming {
		// The process before may have died after it published responses
		// and before it notified: the guest, which looks at its ring only
		// when notified, would wait for them forever (with all its
		// requests answered, it sends nothing that would wake us either).
		q.notify()
	}
	if len(q.replay) > 0 {
		q.log.Info("blkback: replaying requests a previous process left unanswered", "n", len(q.replay))
		for _, s := range q.replay {
			q.take(s)
		}
		q.replay = nil
		if q.exec != nil {
			q.exec.flush()
		}
		q.pushInline()
	}
	if q.loop != nil {
		return q.loop.run(ctx)
	}
	// The port a Wait delivered stays masked until the next wait, after
	// the ring was serviced: the guest's notifications meanwhile stay
	// pending in Xen (no interrupt in this domain for requests the
	// service takes anyway) and fire at the unmask. evtchn.UnmaskWait
	// unmasks and waits with one system call fewer than Unmask, Wait.
	delivered := false
	for {
		if err := q.service(ctx); err != nil {
			if errors.Is(err, errDead) {
				return nil
			}
			return err
		}
		var err error
		if delivered {
			_, err = evtchn.UnmaskWait(ctx, q.evh, q.port, ports[:])
		} else {
			_, err = q.evh.Wait(ctx, ports[:])
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("queue %d: wait: %w", q.idx, err)
		}
		delivered = true
	}
}

// service takes every request on the ring, until the final check finds none.
func (q *queue) service(ctx context.Context) error {
	notify := false
	for ctx.Err() == nil {
		q.mu.Lock()
		if q.dead {
			q.mu.Unlock()
			return errDead
		}
		n, err := q.ring.Unconsumed()
		if err == nil && n == 0 {
			var more bool
			more, err = q.ring.FinalCheckForRequests()
			if err == nil && !more {
				q.mu.Unlock()
				q.pushInline()
				return nil
			}
			if err == nil {
				n, err = q.ring.Unconsumed()
			}
		}
		if err != nil {
			q.mu.Unlock()
			q.pushInline()
			return fmt.Errorf("queue %d: %w", q.idx, err)
		}
		q.batch = q.batch[:0]
		for i := uint32(0); i < n; i++ {
			if len(q.free) == 0 {
				// Unconsumed never exceeds the free slots.
				q.mu.Unlock()
				return fmt.Errorf("queue %d: no free request slot", q.idx)
			}
			s := q.free[len(q.free)-1]
			q.free = q.free[:len(q.free)-1]
			reqIdx := q.ring.ReqCons()
			copy(s.raw[:], q.ring.Request())
			if q.jrn != nil {
				if q.jrn.Full() {
					// Answered entries retire when published: publish
					// what is written (an io_uring batch not pushed yet).
					notify = q.pushLocked() || notify
				}
				var jerr error
				if s.jh, jerr = q.jrn.Taken(reqIdx, s.raw[:q.abi.RequestSize()]); jerr != nil {
					q.mu.Unlock()
					return fmt.Errorf("queue %d: %w", q.idx, jerr) // cannot happen after the push
				}
			}
			q.batch = append(q.batch, s)
		}
		q.mu.Unlock()
		if notify {
			notify = false
			q.notify()
		}
		q.progress.Add(1)
		for _, s := range q.batch {
			q.take(s)
		}
		if q.exec != nil {
			q.exec.flush()
		}
		q.pushInline()
	}
	return nil
}

// geometry snapshots the device for validation.
func (q *queue) geometry(g *Geometry) {
	d := q.dev
	*g = Geometry{Sectors: d.sectors.Load(), LogicalBlock: d.logical, ReadOnly: d.readOnly,
		Discard: d.discard, SecureDiscard: d.secure}
}

// take decodes, validates, maps and dispatches one request copied off the ring.
func (q *queue) take(s *slot) {
	// In flight from here: a barrier later in the same batch must not wait
	// for requests behind it.
	q.mu.Lock()
	q.inflight++
	q.busy.Store(int32(q.inflight))
	q.mu.Unlock()
	var g Geometry
	q.geometry(&g)
	r := &s.req
	DecodeRequest(q.abi, s.raw[:q.abi.RequestSize()], r) // cannot fail: the slot is full size
	s.op, s.bytes, s.npg, s.m = r.Op(), 0, 0, nil
	if err := ValidateHeader(r, &g); err != nil {
		q.refuse(s, err)
		return
	}
	switch r.Operation {
	case OpDiscard:
		q.dispatch(s)
		return
	case OpIndirect:
		if s.ind == nil {
			s.ind = new(indirectScratch)
		}
		s.segs, s.bufs, s.pgs, s.refs, s.refIdx = s.ind.segs[:r.NrSegments], s.ind.bufs[:0], s.ind.pgs[:0], s.ind.refs[:0], s.ind.idx[:0]
		s.bidx, s.copies = s.ind.bidx[:0], s.ind.copies[:0]
		if err := q.indirectSegments(s); err != nil {
			q.refuse(s, err)
			return
		}
	default:
		n := int(r.NrSegments)
		copy(s.smallS[:n], r.Segs[:n])
		s.segs, s.bufs, s.pgs, s.refs, s.refIdx = s.smallS[:n], s.smallB[:0], s.smallP[:0], s.smallR[:0], s.smallI[:0]
		s.bidx, s.copies = s.smallX[:0], s.smallC[:0]
	}
	n, err := ValidateSegments(r, s.segs, &g)
	if err != nil {
		q.refuse(s, err)
		return
	}
	s.bytes = n * SectorSize
	if err := q.mapSegments(s); err != nil {
		q.refuse(s, err)
		return
	}
	if r.Operation == OpWriteBarrier {
		q.drain()
	}
	q.dispatch(s)
}

// indirectSegments copies the segments out of the request's indirect pages.
func (q *queue) indirectSegments(s *slot) error {
	r := &s.req
	pages := (int(r.NrSegments) + SegmentsPerIndirectPage - 1) / SegmentsPerIndirectPage
	d := q.dev
	if d.pool != nil {
		return q.copyIndirect(s, pages)
	}
	if q.pg != nil {
		for i := 0; i < pages; i++ {
			p, err := q.pg.get(r.IndirectGrefs[i])
			if err != nil {
				d.log.Debug("blkback: indirect page", "ref", r.IndirectGrefs[i], "err", err)
				return ErrBadGrant
			}
			if p != nil {
				lo := i * SegmentsPerIndirectPage
				hi := min(lo+SegmentsPerIndirectPage, int(r.NrSegments))
				DecodeIndirectSegments(p.page, s.segs[lo:hi])
				p.inUse.Add(-1)
				continue
			}
			// Table full of grants in use: map this page for now.
			if err := q.mapIndirect(s, i, i+1); err != nil {
				return err
			}
		}
		return nil
	}
	return q.mapIndirect(s, 0, pages)
}

func (q *queue) mapIndirect(s *slot, from, to int) error {
	r := &s.req
	refs := s.ind.irefs[:0]
	for i := from; i < to; i++ {
		refs = append(refs, grant.Ref(r.IndirectGrefs[i]))
	}
	m, err := q.dev.drv.Grants.Map(q.dev.frontDom, refs, false)
	if err != nil {
		q.dev.log.Debug("blkback: map indirect pages", "err", err)
		return ErrBadGrant
	}
	lo := from * SegmentsPerIndirectPage
	hi := min(to*SegmentsPerIndirectPage, int(r.NrSegments))
	DecodeIndirectSegments(m.Bytes(), s.segs[lo:hi])
	if err := m.Unmap(); err != nil {
		q.dev.log.Warn("blkback: unmap indirect pages", "err", err)
	}
	return nil
}

// mapSegments makes s.bufs point at each segment's sectors: persistent
// grants where possible, the rest mapped in one batch for this request only.
func (q *queue) mapSegments(s *slot) error {
	if q.dev.pool != nil {
		return q.copySegments(s)
	}
	for i, sg := range s.segs {
		if q.pg != nil {
			p, err := q.pg.get(sg.Gref)
			if err != nil {
				q.dev.log.Debug("blkback: map persistent grant", "ref", sg.Gref, "err", err)
				q.releaseGrants(s)
				return ErrBadGrant
			}
			if p != nil {
				s.pgs = append(s.pgs, p)
				s.bufs = append(s.bufs, p.page[int(sg.FirstSect)*SectorSize:(int(sg.LastSect)+1)*SectorSize])
				continue
			}
		}
		s.refs = append(s.refs, grant.Ref(sg.Gref))
		s.refIdx = append(s.refIdx, i)
		s.bufs = append(s.bufs, nil)
	}
	if len(s.refs) == 0 {
		return nil
	}
	m, err := q.dev.drv.Grants.Map(q.dev.frontDom, s.refs, s.op == OpRead)
	if err != nil {
		q.dev.log.Debug("blkback: map grants", "n", len(s.refs), "err", err)
		q.releaseGrants(s)
		return ErrBadGrant
	}
	s.m = m
	mem := m.Bytes()
	for j, i := range s.refIdx {
		sg := s.segs[i]
		page := mem[j*PageSize : (j+1)*PageSize]
		s.bufs[i] = page[int(sg.FirstSect)*SectorSize : (int(sg.LastSect)+1)*SectorSize]
	}
	return nil
}

// releaseGrants drops the request's persistent grants and unmaps its
// non-persistent ones. It runs before the response is written: a frontend
// without persistent grants treats a page still mapped then as fatal.
func (q *queue) releaseGrants(s *slot) {
	for i, p := range s.pgs {
		p.inUse.Add(-1)
		s.pgs[i] = nil
	}
	s.pgs = s.pgs[:0]
	if s.m != nil {
		if err := s.m.Unmap(); err != nil {
			q.dev.log.Warn("blkback: unmap grants", "err", err)
		}
		s.m = nil
	}
	if len(s.bidx) > 0 {
		q.dev.pool.put(s.bidx)
		s.bidx = s.bidx[:0]
	}
	for i := range s.copies {
		s.copies[i] = grant.CopySeg{}
	}
	s.copies = s.copies[:0]
	for i := range s.bufs {
		s.bufs[i] = nil
	}
	s.bufs = s.bufs[:0]
}

// drain waits until this request is the only one in flight on the ring
// (WRITE_BARRIER).
func (q *queue) drain() {
	if q.loop != nil {
		q.loop.drain()
		return
	}
	if q.exec != nil {
		q.exec.flush() // what the batch queued so far must start to finish
	}
	q.mu.Lock()
	for q.inflight > 1 && !q.stopping {
		q.drained.Wait()
	}
	q.mu.Unlock()
}

// dispatch runs the I/O inline (null disk) or hands it to the workers.
func (q *queue) dispatch(s *slot) {
	if q.dev.backing.Inline() {
		s.status = StatusOf(q.dev.execute(s))
		q.complete(s, false)
		return
	}
	q.exec.submit(s)
}

// refuse answers a request that failed validation or mapping.
func (q *queue) refuse(s *slot, err error) {
	q.dev.log.Debug("blkback: refused request", "queue", q.idx, "id", s.req.ID, "op", s.req.Operation, "reason", err)
	s.status = StatusOf(err)
	s.bytes = 0
	q.complete(s, false)
}

// complete releases the request's grants, writes its response and, when
// push is set, publishes it and notifies the frontend if it asked.
func (q *queue) complete(s *slot, push bool) {
	q.releaseGrants(s)
	q.dev.account(s)
	q.mu.Lock()
	if q.dead {
		q.inflight--
		q.drained.Broadcast()
		q.mu.Unlock()
		return
	}
	rspIdx := q.ring.RspProdPvt()
	EncodeResponse(q.ring.Response(), s.req.ID, s.op, s.status)
	if q.jrn != nil {
		q.jrn.Answered(s.jh, rspIdx)
	}
	q.inflight--
	q.busy.Store(int32(q.inflight))
	q.progress.Add(1)
	q.drained.Broadcast()
	notify := false
	if push {
		notify = q.pushLocked()
	} else {
		q.pending = true
	}
	q.free = append(q.free, s) // never beyond its capacity: one per slot
	q.mu.Unlock()
	if notify {
		q.notify()
	}
}

// pushInline publishes responses written by complete(push=false).
func (q *queue) pushInline() {
	q.mu.Lock()
	notify := false
	if q.pending && !q.dead {
		notify = q.pushLocked()
	}
	q.mu.Unlock()
	if notify {
		q.notify()
	}
}

// pushLocked publishes the responses written so far and retires their
// journal entries. Called with q.mu held.
func (q *queue) pushLocked() (notify bool) {
	q.pending = false
	notify = q.ring.PushResponses()
	if q.jrn != nil {
		q.jrn.Published(q.ring.RspProdPvt())
	}
	return notify
}

func (q *queue) notify() {
	if q.killed.Load() {
		return
	}
	if err := q.evh.Notify(q.port); err != nil && !errors.Is(err, evtchn.ErrClosed) {
		q.log.Warn("blkback: notify", "err", err)
	}
}

// copyIndirect copies the indirect page's segments with grant copy. 256
// segments fit one page (asserted by TestLayoutPinned's limits).
func (q *queue) copyIndirect(s *slot, pages int) error {
	r := &s.req
	if pages != 1 {
		return ErrNrSegments
	}
	n := int(r.NrSegments) * SegmentSize
	seg := []grant.CopySeg{{
		Src: grant.CopyPtr{Ref: grant.Ref(r.IndirectGrefs[0]), Dom: q.dev.frontDom},
		Dst: grant.CopyPtr{Local: s.ind.ibuf[:n]},
		Len: uint16(n),
	}}
	if err := q.dev.drv.Grants.Copy(seg); err != nil || seg[0].Status != 0 {
		q.dev.log.Debug("blkback: copy indirect page", "ref", r.IndirectGrefs[0], "err", err, "status", seg[0].Status)
		return ErrBadGrant
	}
	return DecodeIndirectSegments(s.ind.ibuf[:n], s.segs)
}

// copySegments gives the request bounce pages (at the segments' own
// in-page offsets, so O_DIRECT alignment holds) and, for writes, copies the
// data in with one grant copy batch.
func (q *queue) copySegments(s *slot) error {
	pool := q.dev.pool
	s.bidx = s.bidx[:len(s.segs)]
	var starving interface{ flush() }
	if q.exec != nil {
		starving = q.exec // submit this batch's queued I/O before waiting for its pages
	}
	pool.get(s.bidx, starving)
	for i, sg := range s.segs {
		lo, hi := int(sg.FirstSect)*SectorSize, (int(sg.LastSect)+1)*SectorSize
		buf := pool.page(s.bidx[i])[lo:hi]
		s.bufs = append(s.bufs, buf)
		if s.op != OpRead {
			s.copies = append(s.copies, grant.CopySeg{
				Src: grant.CopyPtr{Ref: grant.Ref(sg.Gref), Dom: q.dev.frontDom, Offset: uint16(lo)},
				Dst: grant.CopyPtr{Local: buf},
				Len: uint16(hi - lo),
			})
		}
	}
	if len(s.copies) == 0 {
		return nil
	}
	if err := q.runCopies(s); err != nil {
		q.releaseGrants(s)
		return err
	}
	return nil
}

// copyOut copies a read's data from the bounce pages to the frontend.
func (q *queue) copyOut(s *slot) error {
	s.copies = s.copies[:0]
	for i, sg := range s.segs {
		lo := int(sg.FirstSect) * SectorSize
		s.copies = append(s.copies, grant.CopySeg{
			Src: grant.CopyPtr{Local: s.bufs[i]},
			Dst: grant.CopyPtr{Ref: grant.Ref(sg.Gref), Dom: q.dev.frontDom, Offset: uint16(lo)},
			Len: uint16(len(s.bufs[i])),
		})
	}
	return q.runCopies(s)
}

func (q *queue) runCopies(s *slot) error {
	err := q.dev.drv.Grants.Copy(s.copies)
	if err != nil {
		q.dev.log.Debug("blkback: grant copy", "err", err)
		return ErrBadGrant
	}
	for i := range s.copies {
		if s.copies[i].Status != 0 {
			q.dev.log.Debug("blkback: grant copy segment", "ref", s.copies[i].Src.Ref, "status", s.copies[i].Status)
			return ErrBadGrant
		}
	}
	return nil
}

// stop wakes a barrier waiting for the ring to drain: the connection is
// going away (whatever it waits for may never complete).
func (q *queue) stop() {
	q.mu.Lock()
	q.stopping = true
	q.drained.Broadcast()
	q.mu.Unlock()
}

// resume attaches the ring where a previous backend process left it
// (crash-only restart) and queues the journaled requests to serve again.
// A fresh ring has all indices 0.
//
// Without a journal, everything below the published rsp_prod counts as
// answered and requests are taken again from there: exact when the dead
// process completed in order, not when it answered out of order (a later
// request's response published, an earlier one's lost).
//
// With a journal (Driver.JournalDir), req_cons is the journal's and the
// requests to serve again are the journaled ones with no published
// response, copied from the journal since the shared slot may hold a
// response now (see journal.go).
func (q *queue) resume(id journalIdentity) {
	r := q.ring
	p := r.SharedRspProd()
	r.Resume(p, p)
	dir := q.dev.drv.JournalDir
	if dir == "" {
		return
	}
	name := fmt.Sprintf("vbd-%d-%d-q%d", q.dev.frontDom, q.dev.devID(), q.idx)
	j, path, err := openJournal(dir, name, int(r.Size()), q.abi.RequestSize())
	if err != nil {
		q.log.Warn("blkback: no crash journal for this ring", "err", err)
		return
	}
	q.jrn, q.jrnPath = j, path
	if !q.dev.resuming {
		j.Reset(id.key(), p) // a new connection: nothing to replay
		return
	}
	rec, err := j.Recover(id.key(), p)
	if err != nil {
		q.log.Warn("blkback: crash journal inconsistent with the ring, starting from rsp_prod", "err", err)
		j.Reset(id.key(), p)
		return
	}
	r.Resume(rec.ReqCons, p)
	for _, pd := range rec.Redo {
		if len(q.free) == 0 {
			q.log.Warn("blkback: crash journal holds more requests than the ring, replaying the first", "n", len(q.replay))
			break // Recover bounds Redo by the ring size: cannot happen
		}
		s := q.free[len(q.free)-1]
		q.free = q.free[:len(q.free)-1]
		copy(s.raw[:], pd.Req)
		s.jh = pd.H
		q.replay = append(q.replay, s)
	}
}
