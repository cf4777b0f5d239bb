// Package blkfront is a Go blkif frontend that drives a backend the way
// Linux's xen-blkfront does: the xenstore handshake (answering InitWait with
// Initialised), ring pages shared through a grant.Sharer (multi-page rings,
// multi-queue), persistent grants from a reused page pool, indirect
// segments, and either ABI. It is for tests: it trusts nothing the backend
// says but favours clarity over speed.
package blkfront

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/xensim"
	"drvdom/ring"
	"drvdom/xenstore"
)

// XenbusState values used here.
const (
	stateInitialising = 1
	stateInitWait     = 2
	stateInitialised  = 3
	stateConnected    = 4
	stateClosing      = 5
	stateClosed       = 6
)

// Config chooses what the frontend negotiates.
type Config struct {
	// Protocol is written as the protocol key; empty writes no key (the
	// backend then assumes x86_32).
	Protocol string
	// RingPageOrder asks for 2^order ring pages (writes ring-page-order and
	// ring-ref0..N when the backend allows it; order 0 writes ring-ref).
	RingPageOrder int
	// Queues asks for this many rings (multi-queue-num-queues when > 1).
	Queues int
	// Persistent offers feature-persistent.
	Persistent bool
	// NoIndirect never uses indirect requests.
	NoIndirect bool
	// Manual starts no receiver: the caller drives the rings itself through
	// Ring, Port and Evtchn (benchmarks).
	Manual bool
}

// Front is one connected virtual disk.
type Front struct {
	store   *xenstore.Client
	sharer  grant.Sharer
	evh     evtchn.Handle
	path    string
	back    string
	backDom uint16
	abi     blkback.ABI

	// What the backend published.
	Sectors        uint64
	SectorSize     uint32
	PhysSector     uint32
	Info           int
	MaxIndirect    int
	Persistent     bool // both sides agreed
	FeatureFlush   bool
	FeatureBarrier bool
	FeatureDiscard bool

	queues []*fqueue
	byPort map[evtchn.Port]*fqueue

	recv xensim.Receiver
}

type fqueue struct {
	f     *Front
	idx   int
	share grant.Share
	ring  *ring.Front
	port  evtchn.Port
	slots chan struct{} // one token per free ring entry

	mu      sync.Mutex
	nextID  uint64
	waiters map[uint64]chan blkback.Response
	pool    []grant.Share // persistent pages not in use
	all     []grant.Share // every persistent page, closed at the end
}

// Attach runs the frontend side of the handshake for the device whose
// frontend directory is path (the toolstack wrote backend, backend-id and
// state there) and returns once both ends are Connected.
func Attach(ctx context.Context, store *xenstore.Client, sharer grant.Sharer, evh evtchn.Handle, path string, cfg Config) (f *Front, err error) {
	f = &Front{store: store, sharer: sharer, evh: evh, path: path, byPort: map[evtchn.Port]*fqueue{}}
	if f.back, f.backDom, err = xensim.BackendOf(ctx, store, path); err != nil {
		return nil, fmt.Errorf("blkfront %s: %w", path, err)
	}
	if f.abi, err = blkback.ParseProtocol(cfg.Protocol); err != nil {
		return nil, err
	}
	if err := f.waitBackend(ctx, stateInitWait); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.release()
		}
	}()
	maxOrder := f.readInt(ctx, "max-ring-page-order", 0)
	maxQ := f.readInt(ctx, "multi-queue-max-queues", 1)
	f.MaxIndirect = f.readInt(ctx, "feature-max-indirect-segments", 0)
	if cfg.NoIndirect {
		f.MaxIndirect = 0
	}
	f.Persistent = cfg.Persistent && f.readInt(ctx, "feature-persistent", 0) == 1
	f.FeatureFlush = f.readInt(ctx, "feature-flush-cache", 0) == 1
	f.FeatureBarrier = f.readInt(ctx, "feature-barrier", 0) == 1
	f.FeatureDiscard = f.readInt(ctx, "feature-discard", 0) == 1
	order := min(cfg.RingPageOrder, maxOrder)
	nq := max(min(cfg.Queues, maxQ), 1)

	kv := map[string]string{}
	for i := 0; i < nq; i++ {
		q := &fqueue{f: f, idx: i, waiters: map[uint64]chan blkback.Response{}}
		if q.share, err = sharer.Share(f.backDom, 1<<order, true); err != nil {
			return nil, fmt.Errorf("blkfront: share ring: %w", err)
		}
		f.queues = append(f.queues, q)
		if q.ring, err = ring.NewFront(q.share.Bytes(), f.abi.RequestSize()); err != nil {
			return nil, err
		}
		q.slots = make(chan struct{}, q.ring.Size())
		for j := uint32(0); j < q.ring.Size(); j++ {
			q.slots <- struct{}{}
		}
		if q.port, err = evh.BindUnbound(f.backDom); err != nil {
			return nil, fmt.Errorf("blkfront: alloc event channel: %w", err)
		}
		f.byPort[q.port] = q
		dir := ""
		if nq > 1 {
			dir = "queue-" + strconv.Itoa(i) + "/"
		}
		refs := q.share.Refs()
		if order == 0 && cfg.RingPageOrder == 0 {
			kv[dir+"ring-ref"] = strconv.Itoa(int(refs[0]))
		} else {
			for j, r := range refs {
				kv[dir+"ring-ref"+strconv.Itoa(j)] = strconv.Itoa(int(r))
			}
		}
		kv[dir+"event-channel"] = strconv.Itoa(int(q.port))
	}
	if order > 0 || cfg.RingPageOrder > 0 {
		kv["ring-page-order"] = strconv.Itoa(order)
	}
	if nq > 1 {
		kv["multi-queue-num-queues"] = strconv.Itoa(nq)
	}
	if cfg.Protocol != "" {
		kv["protocol"] = cfg.Protocol
	}
	kv["feature-persistent"] = map[bool]string{true: "1", false: "0"}[cfg.Persistent]
	err = store.Transaction(ctx, func(tx *xenstore.Tx) error {
		// Keys an earlier connection wrote that this one does not use.
		for _, k := range []string{"protocol", "ring-page-order", "multi-queue-num-queues", "ring-ref", "event-channel"} {
			if _, ok := kv[k]; !ok {
				if err := tx.Rm(ctx, path+"/"+k); err != nil && !errors.Is(err, xenstore.ErrNotExist) {
					return err
				}
			}
		}
		for k, v := range kv {
			if err := tx.Write(ctx, path+"/"+k, v); err != nil {
				return err
			}
		}
		return tx.Write(ctx, path+"/state", strconv.Itoa(stateInitialised))
	})
	if err != nil {
		return nil, fmt.Errorf("blkfront: publish rings: %w", err)
	}
	if err := f.waitBackend(ctx, stateConnected); err != nil {
		return nil, err
	}
	if err := f.readDisk(ctx); err != nil {
		return nil, err
	}
	if err := store.Write(ctx, path+"/state", strconv.Itoa(stateConnected)); err != nil {
		return nil, err
	}
	if cfg.Manual {
		return f, nil
	}
	f.recv.Start(ctx, f.evh, f.event)
	return f, nil
}

// readDisk reads what blkfront requires at connect: sectors, info, sector-size.
func (f *Front) readDisk(ctx context.Context) error {
	for _, k := range []string{"sectors", "info", "sector-size"} {
		if _, err := f.store.Read(ctx, f.back+"/"+k); err != nil {
			return fmt.Errorf("blkfront: backend connected without %s: %w", k, err)
		}
	}
	f.Sectors = uint64(f.readInt(ctx, "sectors", 0))
	f.Info = f.readInt(ctx, "info", 0)
	f.SectorSize = uint32(f.readInt(ctx, "sector-size", 512))
	f.PhysSector = uint32(f.readInt(ctx, "physical-sector-size", int(f.SectorSize)))
	return nil
}

// Reread refreshes Sectors (after a resize: the backend rewrote state).
func (f *Front) Reread(ctx context.Context) error { return f.readDisk(ctx) }

func (f *Front) readInt(ctx context.Context, key string, def int) int {
	return xensim.BackendInt(ctx, f.store, f.back, key, def)
}

// BackendState reads the backend's state.
func (f *Front) BackendState(ctx context.Context) int { return f.readInt(ctx, "state", 0) }

// waitBackend waits until the backend's state is want (or fails when it
// reaches Closing/Closed instead).
func (f *Front) waitBackend(ctx context.Context, want int) error {
	s, err := xensim.WaitBackend(ctx, f.store, f.back, "blkfront-"+f.path, func(s int) (bool, error) {
		if s == want {
			return true, nil
		}
		// Closed while waiting for InitWait is a backend between two
		// connections (the guest rebooted); Closing is a failure.
		if want < stateClosing && (s == stateClosing || s == stateClosed && want != stateInitWait) {
			e, _ := f.store.Read(ctx, "/local/domain/"+strconv.Itoa(int(f.backDom))+"/error"+f.back+"/error")
			return false, fmt.Errorf("blkfront %s: backend went to state %d waiting for %d (error %q)", f.path, s, want, e)
		}
		return false, nil
	})
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return fmt.Errorf("blkfront %s: waiting for backend state %d (now %d): %w", f.path, want, s, err)
	}
	return err
}

// event dispatches the responses of the ring whose port fired to their
// waiters.
func (f *Front) event(_ context.Context, p evtchn.Port) {
	if q := f.byPort[p]; q != nil {
		q.drain()
	}
}

func (q *fqueue) drain() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		for q.ring.Unconsumed() > 0 {
			r := blkback.DecodeResponse(q.ring.Response())
			if ch := q.waiters[r.ID]; ch != nil {
				delete(q.waiters, r.ID)
				ch <- r
			}
			q.slots <- struct{}{}
		}
		if !q.ring.FinalCheckForResponses() {
			return
		}
	}
}

// Ring returns ring q's front end (Manual mode: the caller owns it).
func (f *Front) Ring(q int) *ring.Front { return f.queues[q].ring }

// RingHeader reads ring q's shared indices as they are in the frontend's
// mapping of the ring, for the report of a stuck test: req_prod, req_event,
// rsp_prod, rsp_event. The backend changes them through its own mapping at
// any time, so the values are a snapshot (each read whole: aligned words).
func (f *Front) RingHeader(q int) (reqProd, reqEvent, rspProd, rspEvent uint32) {
	h := f.queues[q].share.Bytes()
	le := binary.LittleEndian
	return le.Uint32(h[0:]), le.Uint32(h[4:]), le.Uint32(h[8:]), le.Uint32(h[12:])
}

// Port returns ring q's local event channel port.
func (f *Front) Port(q int) evtchn.Port { return f.queues[q].port }

// Evtchn returns the frontend's event channel handle.
func (f *Front) Evtchn() evtchn.Handle { return f.evh }

// Queues returns the number of rings.
func (f *Front) Queues() int { return len(f.queues) }

// ABI returns the negotiated ABI.
func (f *Front) ABI() blkback.ABI { return f.abi }

// Submit puts one request on ring q: fill writes it into the slot (ID is
// set to the request id afterwards, so fill need not). It waits for the
// response.
func (f *Front) Submit(ctx context.Context, q int, r *blkback.Request) (blkback.Response, error) {
	ch, err := f.Post(ctx, q, r)
	if err != nil {
		return blkback.Response{}, err
	}
	select {
	case rsp := <-ch:
		return rsp, nil
	case <-ctx.Done():
		return blkback.Response{}, ctx.Err()
	}
}

// Post puts a request on ring q (r.ID is overwritten with a fresh id) and
// returns the channel its response arrives on.
func (f *Front) Post(ctx context.Context, q int, r *blkback.Request) (<-chan blkback.Response, error) {
	if q < 0 || q >= len(f.queues) {
		return nil, fmt.Errorf("blkfront: no queue %d", q)
	}
	fq := f.queues[q]
	select {
	case <-fq.slots:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ch := make(chan blkback.Response, 1)
	fq.mu.Lock()
	fq.nextID++
	// Exercise the whole 64-bit id: both ABIs must carry the high bits.
	r.ID = fq.nextID | uint64(q+1)<<56
	fq.waiters[r.ID] = ch
	blkback.EncodeRequest(f.abi, fq.ring.Request(), r)
	notify := fq.ring.PushRequests()
	fq.mu.Unlock()
	if notify {
		if err := f.evh.Notify(fq.port); err != nil {
			return nil, err
		}
	}
	return ch, nil
}

// ErrStatus is returned by the data helpers for a response other than okay.
type ErrStatus int16

func (e ErrStatus) Error() string { return fmt.Sprintf("blkfront: response status %d", int16(e)) }

func statusErr(r blkback.Response) error {
	if r.Status != blkback.StatusOkay {
		return ErrStatus(r.Status)
	}
	return nil
}

// pages returns n granted pages for a request: persistent ones from the pool
// (granted writable once, reused), or a fresh share.
func (q *fqueue) pages(n int, writable bool) ([]grant.Share, func(), error) {
	f := q.f
	if !f.Persistent {
		sh, err := f.sharer.Share(f.backDom, n, writable)
		if err != nil {
			return nil, nil, err
		}
		return []grant.Share{sh}, func() { sh.Close() }, nil
	}
	out := make([]grant.Share, 0, n)
	q.mu.Lock()
	for len(out) < n && len(q.pool) > 0 {
		out = append(out, q.pool[len(q.pool)-1])
		q.pool = q.pool[:len(q.pool)-1]
	}
	q.mu.Unlock()
	for len(out) < n {
		sh, err := f.sharer.Share(f.backDom, 1, true)
		if err != nil {
			return nil, nil, err
		}
		q.mu.Lock()
		q.all = append(q.all, sh)
		q.mu.Unlock()
		out = append(out, sh)
	}
	return out, func() {
		q.mu.Lock()
		q.pool = append(q.pool, out...)
		q.mu.Unlock()
	}, nil
}

func pageOf(shs []grant.Share, i int) ([]byte, grant.Ref) {
	if len(shs) == 1 {
		return shs[0].Bytes()[i*grant.PageSize : (i+1)*grant.PageSize], shs[0].Refs()[i]
	}
	return shs[i].Bytes()[:grant.PageSize], shs[i].Refs()[0]
}

// Transfer reads or writes buf (a multiple of 512 bytes) at sector on ring
// q, one segment per 4 KiB, indirect when it needs more than 11 segments
// and the backend allows it.
func (f *Front) Transfer(ctx context.Context, q int, op uint8, sector uint64, buf []byte) error {
	rsp, err := f.transfer(ctx, q, op, sector, buf)
	if err != nil {
		return err
	}
	return statusErr(rsp)
}

func (f *Front) transfer(ctx context.Context, q int, op uint8, sector uint64, buf []byte) (blkback.Response, error) {
	if len(buf) == 0 || len(buf)%blkback.SectorSize != 0 {
		return blkback.Response{}, fmt.Errorf("blkfront: transfer of %d bytes", len(buf))
	}
	if q < 0 || q >= len(f.queues) {
		return blkback.Response{}, fmt.Errorf("blkfront: no queue %d", q)
	}
	fq := f.queues[q]
	nseg := (len(buf) + grant.PageSize - 1) / grant.PageSize
	indirect := nseg > blkback.MaxSegmentsPerRequest
	if indirect && nseg > f.MaxIndirect {
		return blkback.Response{}, fmt.Errorf("blkfront: %d segments, backend takes %d indirect", nseg, f.MaxIndirect)
	}
	data, put, err := fq.pages(nseg, op == blkback.OpRead)
	if err != nil {
		return blkback.Response{}, err
	}
	defer put()
	segs := make([]blkback.Segment, nseg)
	for i := range segs {
		chunk := buf[i*grant.PageSize : min((i+1)*grant.PageSize, len(buf))]
		page, ref := pageOf(data, i)
		if op != blkback.OpRead {
			copy(page, chunk)
		}
		segs[i] = blkback.Segment{Gref: uint32(ref), FirstSect: 0, LastSect: uint8(len(chunk)/blkback.SectorSize - 1)}
	}
	r := &blkback.Request{Operation: op, Sector: sector, NrSegments: uint16(nseg)}
	if indirect {
		npages := (nseg + blkback.SegmentsPerIndirectPage - 1) / blkback.SegmentsPerIndirectPage
		ind, iput, err := fq.pages(npages, false)
		if err != nil {
			return blkback.Response{}, err
		}
		defer iput()
		for p := 0; p < npages; p++ {
			page, ref := pageOf(ind, p)
			r.IndirectGrefs[p] = uint32(ref)
			for j := 0; j < blkback.SegmentsPerIndirectPage && p*blkback.SegmentsPerIndirectPage+j < nseg; j++ {
				blkback.EncodeSegment(page[j*blkback.SegmentSize:], segs[p*blkback.SegmentsPerIndirectPage+j])
			}
		}
		r.Operation, r.IndirectOp = blkback.OpIndirect, op
	} else {
		copy(r.Segs[:], segs)
	}
	rsp, err := f.Submit(ctx, q, r)
	if err != nil {
		return rsp, err
	}
	if want := op; rsp.Operation != want {
		return rsp, fmt.Errorf("blkfront: response operation %d for %d", rsp.Operation, want)
	}
	if op == blkback.OpRead && rsp.Status == blkback.StatusOkay {
		for i := 0; i < nseg; i++ {
			page, _ := pageOf(data, i)
			copy(buf[i*grant.PageSize:min((i+1)*grant.PageSize, len(buf))], page)
		}
	}
	return rsp, nil
}

// Read reads len(buf) bytes at sector through ring q.
func (f *Front) Read(ctx context.Context, q int, sector uint64, buf []byte) error {
	return f.Transfer(ctx, q, blkback.OpRead, sector, buf)
}

// Write writes buf at sector through ring q.
func (f *Front) Write(ctx context.Context, q int, sector uint64, buf []byte) error {
	return f.Transfer(ctx, q, blkback.OpWrite, sector, buf)
}

// Flush sends FLUSH_DISKCACHE without segments.
func (f *Front) Flush(ctx context.Context, q int) error {
	rsp, err := f.Submit(ctx, q, &blkback.Request{Operation: blkback.OpFlushDiskcache})
	if err != nil {
		return err
	}
	return statusErr(rsp)
}

// Discard discards n sectors at sector.
func (f *Front) Discard(ctx context.Context, q int, sector, n uint64, secure bool) error {
	r := &blkback.Request{Operation: blkback.OpDiscard, Sector: sector, NrSectors: n}
	if secure {
		r.Flag = blkback.DiscardSecure
	}
	rsp, err := f.Submit(ctx, q, r)
	if err != nil {
		return err
	}
	return statusErr(rsp)
}

// Share grants n fresh pages to the backend (for hand-made requests); the
// caller closes it.
func (f *Front) Share(n int, writable bool) (grant.Share, error) {
	return f.sharer.Share(f.backDom, n, writable)
}

// Close runs the frontend's side of closing: Closing, wait for the backend
// to close, end every grant and event channel, Closed.
func (f *Front) Close(ctx context.Context) error {
	return xensim.CloseFrontend(ctx, f.store, f.path, f.back, "blkfront-close-"+f.path, f.release)
}

// release stops the receiver and ends every grant and event channel.
func (f *Front) release() {
	f.recv.Stop()
	for _, q := range f.queues {
		if q.port != 0 {
			f.evh.Unbind(q.port)
		}
		if q.share != nil {
			q.share.Close()
		}
		for _, sh := range q.all {
			sh.Close()
		}
		q.all, q.pool = nil, nil
	}
	f.queues = nil
}
