// Package netfront is a Go netif frontend that drives a backend the way
// Linux's xen-netfront does: the xenstore handshake (waiting for InitWait,
// publishing rings, event channels and features, answering with Connected),
// tx and rx rings shared through a grant.Sharer, rx buffers posted with
// id == ring index, packets split into page slots with a GSO extra-info
// after the first, responses gathered per slot. It is for tests: it trusts
// nothing the backend says (a bad response is counted, never a panic), and
// it can also put arbitrary (hostile) chains on its tx ring.
package netfront

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/xensim"
	"drvdom/netback"
	"drvdom/ring"
	"drvdom/xenstore"
)

// XenbusState values used here.
const (
	stateInitialising = 1
	stateInitWait     = 2
	stateConnected    = 4
	stateClosing      = 5
	stateClosed       = 6
)

// Config chooses what the frontend negotiates.
type Config struct {
	Queues int  // multi-queue-num-queues (capped at the backend's maximum)
	Split  bool // event-channel-tx/-rx (when the backend offers it)
	NoSG   bool // do not write feature-sg (and thus no rx GSO)
	NoGSO  bool // do not write feature-gso-tcpv4/-tcpv6
	// NoIPv6Csum does not write feature-ipv6-csum-offload.
	NoIPv6Csum bool
	// NoCsumOffload writes feature-no-csum-offload=1 (the guest wants
	// every received packet fully checksummed).
	NoCsumOffload bool
	// MulticastControl writes request-multicast-control.
	MulticastControl bool
	// RxBuffers is how many rx buffers to post per queue (ring size if 0).
	RxBuffers int
	// RecvDepth is the capacity of each queue's received-packet channel
	// (1024 if 0). When it is full the receiver waits for the reader (and
	// reposts no buffers meanwhile), unless DropOnFull: then the packet is
	// counted as RxOverflow and dropped, as a busy guest stack would.
	RecvDepth  int
	DropOnFull bool
}

// Packet is one frame with its netif metadata: NETTXF_* flags when sent,
// NETRXF_* flags when received; GSOType/GSOSize from a GSO extra-info.
type Packet struct {
	Frame   []byte
	Flags   uint16
	GSOType uint8
	GSOSize uint16
}

// Counters are what the frontend saw.
type Counters struct {
	TxOkay, TxError, TxDropped, TxNull, TxBad uint64 // tx responses by status
	RxPackets, RxErrors, RxOverflow           uint64 // rx packets delivered / with a bad slot / no room
}

// Front is one connected vif.
type Front struct {
	store   *xenstore.Client
	sharer  grant.Sharer
	evh     evtchn.Handle
	path    string
	back    string
	backDom uint16
	cfg     Config

	queues []*fqueue
	byPort map[evtchn.Port]*fqueue

	recv xensim.Receiver
}

type fqueue struct {
	f      *Front
	idx    int
	txPort evtchn.Port
	rxPort evtchn.Port // == txPort unless split

	txMu    sync.Mutex
	txShare grant.Share
	tx      *ring.Front
	txPages grant.Share // one page per tx id
	txFree  []uint16
	txBusy  []bool // id outstanding (a response for an idle id is bad)
	txSpace chan struct{}
	txLast  map[uint16]int16 // last status per id

	rxMu    sync.Mutex
	rxShare grant.Share
	rx      *ring.Front
	rxPages grant.Share // one page per rx id (== ring index mod size)
	rxCons  uint32      // ring index of the next response
	rxCur   *Packet     // packet being assembled
	rxErr   bool
	rxExtra bool     // next response is an extra-info
	rxMore  bool     // the last data slot had NETRXF_more_data
	ready   []Packet // assembled, to deliver once rxMu is released
	recv    chan Packet

	cnt Counters
}

// Attach runs netfront's side of the handshake for the vif at path
// (/local/domain/<dom>/device/vif/<id>) and starts its receiver. evh is the
// frontend domain's event channel handle (the Front owns it from now on).
func Attach(ctx context.Context, store *xenstore.Client, sharer grant.Sharer, evh evtchn.Handle, path string, cfg Config) (f *Front, err error) {
	f = &Front{store: store, sharer: sharer, evh: evh, path: path, cfg: cfg, byPort: map[evtchn.Port]*fqueue{}}
	if f.back, f.backDom, err = xensim.BackendOf(ctx, store, path); err != nil {
		return nil, fmt.Errorf("netfront %s: %w", path, err)
	}
	// A backend still Closing/Closed from an earlier connection (a guest
	// reboot) goes back to InitWait when it sees the frontend Initialising.
	if err := f.waitBackendState(ctx, stateInitWait, true); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.release()
		}
	}()
	if f.readInt(ctx, "feature-rx-copy", 0) != 1 {
		return nil, fmt.Errorf("netfront %s: backend has no feature-rx-copy", path)
	}
	maxQ := f.readInt(ctx, "multi-queue-max-queues", 1)
	nq := max(min(cfg.Queues, maxQ), 1)
	split := cfg.Split && f.readInt(ctx, "feature-split-event-channels", 0) == 1
	depth := cfg.RecvDepth
	if depth <= 0 {
		depth = 1024
	}
	kv := map[string]string{}
	for i := 0; i < nq; i++ {
		q := &fqueue{f: f, idx: i, txSpace: make(chan struct{}, 1), txLast: map[uint16]int16{}, recv: make(chan Packet, depth)}
		f.queues = append(f.queues, q)
		if err := q.setup(split); err != nil {
			return nil, fmt.Errorf("netfront %s: queue %d: %w", path, i, err)
		}
		dir := ""
		if nq > 1 {
			dir = "queue-" + strconv.Itoa(i) + "/"
		}
		kv[dir+"tx-ring-ref"] = strconv.Itoa(int(q.txShare.Refs()[0]))
		kv[dir+"rx-ring-ref"] = strconv.Itoa(int(q.rxShare.Refs()[0]))
		if split {
			kv[dir+"event-channel-tx"] = strconv.Itoa(int(q.txPort))
			kv[dir+"event-channel-rx"] = strconv.Itoa(int(q.rxPort))
		} else {
			kv[dir+"event-channel"] = strconv.Itoa(int(q.txPort))
		}
	}
	if nq > 1 {
		kv["multi-queue-num-queues"] = strconv.Itoa(nq)
	}
	kv["request-rx-copy"] = "1"
	kv["feature-rx-notify"] = "1"
	if !cfg.NoIPv6Csum {
		kv["feature-ipv6-csum-offload"] = "1"
	}
	if cfg.NoCsumOffload {
		kv["feature-no-csum-offload"] = "1"
	}
	if !cfg.NoSG {
		kv["feature-sg"] = "1"
	}
	if !cfg.NoGSO {
		kv["feature-gso-tcpv4"] = "1"
		kv["feature-gso-tcpv6"] = "1"
	}
	if cfg.MulticastControl {
		kv["request-multicast-control"] = "1"
	}
	// Post the rx buffers before announcing Connected, as netfront does.
	for _, q := range f.queues {
		q.postRx(cfg.RxBuffers)
	}
	err = store.Transaction(ctx, func(tx *xenstore.Tx) error {
		for k, v := range kv {
			if err := tx.Write(ctx, path+"/"+k, v); err != nil {
				return err
			}
		}
		return tx.Write(ctx, path+"/state", strconv.Itoa(stateConnected))
	})
	if err != nil {
		return nil, fmt.Errorf("netfront %s: publish rings: %w", path, err)
	}
	if err := f.waitBackend(ctx, stateConnected); err != nil {
		return nil, err
	}
	f.recv.Start(ctx, f.evh, f.event)
	// Kick the backend once for buffers posted before it bound.
	for _, q := range f.queues {
		f.evh.Notify(q.rxPort)
	}
	return f, nil
}

func (q *fqueue) setup(split bool) error {
	f := q.f
	var err error
	if q.txShare, err = f.sharer.Share(f.backDom, 1, true); err != nil {
		return fmt.Errorf("share tx ring: %w", err)
	}
	if q.rxShare, err = f.sharer.Share(f.backDom, 1, true); err != nil {
		return fmt.Errorf("share rx ring: %w", err)
	}
	if q.tx, err = ring.NewFront(q.txShare.Bytes(), netback.TxEntrySize); err != nil {
		return err
	}
	if q.rx, err = ring.NewFront(q.rxShare.Bytes(), netback.RxEntrySize); err != nil {
		return err
	}
	if q.txPages, err = f.sharer.Share(f.backDom, int(q.tx.Size()), false); err != nil {
		return fmt.Errorf("share tx pages: %w", err)
	}
	if q.rxPages, err = f.sharer.Share(f.backDom, int(q.rx.Size()), true); err != nil {
		return fmt.Errorf("share rx pages: %w", err)
	}
	q.txBusy = make([]bool, q.tx.Size())
	for id := int(q.tx.Size()) - 1; id >= 0; id-- {
		q.txFree = append(q.txFree, uint16(id))
	}
	if q.txPort, err = f.evh.BindUnbound(f.backDom); err != nil {
		return fmt.Errorf("alloc event channel: %w", err)
	}
	f.byPort[q.txPort] = q
	q.rxPort = q.txPort
	if split {
		if q.rxPort, err = f.evh.BindUnbound(f.backDom); err != nil {
			return fmt.Errorf("alloc rx event channel: %w", err)
		}
		f.byPort[q.rxPort] = q
	}
	return nil
}

// postRx posts up to n rx buffers (all free ones if n <= 0): the request at
// ring index i has id i mod size and that id's page.
func (q *fqueue) postRx(n int) {
	q.rxMu.Lock()
	defer q.rxMu.Unlock()
	if n <= 0 || n > int(q.rx.Free()) {
		n = int(q.rx.Free())
	}
	refs := q.rxPages.Refs()
	for i := 0; i < n; i++ {
		idx := q.rxProdPvt()
		id := uint16(idx % q.rx.Size())
		netback.RxRequest{ID: id, Gref: uint32(refs[id])}.Encode(q.rx.Request())
	}
	if q.rx.PushRequests() {
		q.f.evh.Notify(q.rxPort)
	}
}

// rxProdPvt is the ring index the next rx request goes to.
func (q *fqueue) rxProdPvt() uint32 {
	// Front does not export req_prod_pvt; it is rsp_cons + outstanding.
	return q.rxCons + (q.rx.Size() - q.rx.Free())
}

func (f *Front) readInt(ctx context.Context, key string, def int) int {
	return xensim.BackendInt(ctx, f.store, f.back, key, def)
}

// BackendState reads the backend's state.
func (f *Front) BackendState(ctx context.Context) int { return f.readInt(ctx, "state", 0) }

// waitBackend waits until the backend's state is want (failing if it
// reaches Closing/Closed instead).
func (f *Front) waitBackend(ctx context.Context, want int) error {
	return f.waitBackendState(ctx, want, false)
}

func (f *Front) waitBackendState(ctx context.Context, want int, tolerateClosed bool) error {
	s, err := xensim.WaitBackend(ctx, f.store, f.back, "netfront-"+f.path, func(s int) (bool, error) {
		if s == want {
			return true, nil
		}
		if !tolerateClosed && want < stateClosing && (s == stateClosing || s == stateClosed) {
			e, _ := f.store.Read(ctx, "/local/domain/"+strconv.Itoa(int(f.backDom))+"/error"+f.back+"/error")
			return false, fmt.Errorf("netfront %s: backend went to state %d waiting for %d (error %q)", f.path, s, want, e)
		}
		return false, nil
	})
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return fmt.Errorf("netfront %s: waiting for backend state %d (now %d): %w", f.path, want, s, err)
	}
	return err
}

// Queues returns the number of queues negotiated.
func (f *Front) Queues() int { return len(f.queues) }

// Split reports whether split event channels were negotiated.
func (f *Front) Split() bool { return f.queues[0].rxPort != f.queues[0].txPort }

// Counters returns queue q's counters.
func (f *Front) Counters(q int) Counters {
	fq := f.queues[q]
	fq.txMu.Lock()
	defer fq.txMu.Unlock()
	fq.rxMu.Lock()
	defer fq.rxMu.Unlock()
	return fq.cnt
}

// event services both rings of whichever queue the port that fired names.
func (f *Front) event(ctx context.Context, p evtchn.Port) {
	q := f.byPort[p]
	if q == nil {
		return
	}
	if p == q.txPort {
		q.gcTx()
	}
	if p == q.rxPort {
		q.drainRx(ctx)
	}
}

// maxRxPacket bounds a received packet: a backend that chains slots
// forever gets its packet counted as an error, not an ever-growing buffer.
const maxRxPacket = 65536 + 4096

// ErrNoRoom is returned by Send when the packet can never fit the ring.
var ErrNoRoom = errors.New("netfront: packet needs more slots than the ring has")

// Send queues one packet on queue q, splitting it into slots at offset off
// of each page (the first slot from off, later ones from 0, as a linear skb
// would be), with a GSO extra-info after the first request when
// p.GSOSize != 0. It blocks while the ring is full.
func (f *Front) Send(ctx context.Context, q int, p Packet, off int) error {
	fq := f.queues[q]
	var items []any
	rest := p.Frame
	first := true
	for first || len(rest) > 0 {
		o := 0
		if first {
			o = off
		}
		n := min(len(rest), netback.PageSize-o)
		r := netback.TxRequest{Offset: uint16(o), Size: uint16(n)}
		if first {
			r.Size = uint16(len(p.Frame))
			r.Flags = p.Flags
			if p.GSOSize != 0 {
				r.Flags |= netback.TxExtraInfo
			}
		}
		if len(rest) > n {
			r.Flags |= netback.TxMoreData
		}
		items = append(items, Slot{Req: r, Data: rest[:n]})
		if first && p.GSOSize != 0 {
			items = append(items, netback.ExtraInfo{Type: netback.ExtraTypeGSO, GSOType: p.GSOType, GSOSize: p.GSOSize})
		}
		rest = rest[n:]
		first = false
	}
	return fq.sendSlots(ctx, items)
}

// Slot is one tx request of a raw chain: Data is copied into the id's page
// at Req.Offset (as much as fits); Req.ID is assigned by the frontend;
// Req.Gref 0 means the id's own page, anything else is sent as is.
type Slot struct {
	Req  netback.TxRequest
	Data []byte
}

// SendRaw puts a raw chain on queue q's tx ring: each item is a Slot, a
// netback.TxRequest (a Slot without data) or a netback.ExtraInfo, written
// verbatim. For hostile-frontend tests.
func (f *Front) SendRaw(ctx context.Context, q int, items ...any) error {
	return f.queues[q].sendSlots(ctx, items)
}

func (q *fqueue) sendSlots(ctx context.Context, items []any) error {
	nreq := 0
	for _, it := range items {
		if _, ok := it.(netback.ExtraInfo); !ok {
			nreq++
		}
	}
	if len(items) > int(q.tx.Size()) {
		return ErrNoRoom
	}
	q.txMu.Lock()
	for int(q.tx.Free()) < len(items) || len(q.txFree) < nreq {
		q.txMu.Unlock()
		select {
		case <-q.txSpace:
		case <-ctx.Done():
			return ctx.Err()
		}
		q.gcTx()
		q.txMu.Lock()
	}
	defer q.txMu.Unlock()
	refs := q.txPages.Refs()
	pages := q.txPages.Bytes()
	for _, it := range items {
		slot := q.tx.Request()
		switch v := it.(type) {
		case netback.ExtraInfo:
			clear(slot)
			v.Encode(slot)
			continue
		case netback.TxRequest:
			it = Slot{Req: v}
		}
		s := it.(Slot)
		id := q.txFree[len(q.txFree)-1]
		q.txFree = q.txFree[:len(q.txFree)-1]
		q.txBusy[id] = true
		r := s.Req
		r.ID = id
		if r.Gref == 0 {
			r.Gref = uint32(refs[id])
		}
		page := pages[int(id)*netback.PageSize : int(id+1)*netback.PageSize]
		if int(r.Offset) < netback.PageSize {
			copy(page[r.Offset:], s.Data)
		}
		r.Encode(slot)
	}
	if q.tx.PushRequests() {
		q.f.evh.Notify(q.txPort)
	}
	return nil
}

// gcTx consumes tx responses and frees their ids.
func (q *fqueue) gcTx() {
	q.txMu.Lock()
	defer q.txMu.Unlock()
	freed := false
	for {
		for q.tx.Unconsumed() > 0 {
			r := netback.DecodeTxResponse(q.tx.Response())
			freed = true
			switch r.Status {
			case netback.RspNull:
				q.cnt.TxNull++
				continue
			case netback.RspOkay:
				q.cnt.TxOkay++
			case netback.RspError:
				q.cnt.TxError++
			case netback.RspDropped:
				q.cnt.TxDropped++
			default:
				q.cnt.TxBad++
			}
			if int(r.ID) >= len(q.txBusy) || !q.txBusy[r.ID] {
				q.cnt.TxBad++ // unknown or idle id: never free it twice
				continue
			}
			q.txBusy[r.ID] = false
			q.txLast[r.ID] = r.Status
			q.txFree = append(q.txFree, r.ID)
		}
		if !q.tx.FinalCheckForResponses() {
			break
		}
	}
	if freed {
		select {
		case q.txSpace <- struct{}{}:
		default:
		}
	}
}

// TxIdle reports whether every request of queue q was answered.
func (f *Front) TxIdle(q int) bool {
	fq := f.queues[q]
	fq.gcTx()
	fq.txMu.Lock()
	defer fq.txMu.Unlock()
	return fq.tx.Free() == fq.tx.Size()
}

// WaitTxIdle waits until every tx request of queue q was answered.
func (f *Front) WaitTxIdle(ctx context.Context, q int) error {
	for !f.TxIdle(q) {
		select {
		case <-f.queues[q].txSpace:
		case <-ctx.Done():
			return fmt.Errorf("netfront: tx not idle: %w", ctx.Err())
		}
	}
	return nil
}

// drainRx consumes rx responses, assembles packets, delivers them and
// reposts the buffers.
func (q *fqueue) drainRx(ctx context.Context) {
	q.rxMu.Lock()
	posted := 0
	pages := q.rxPages.Bytes()
	for {
		for q.rx.Unconsumed() > 0 {
			idx := q.rxCons
			slot := q.rx.Response()
			q.rxCons++
			posted++
			if q.rxExtra {
				e := netback.DecodeExtraInfo(slot)
				if e.Type == netback.ExtraTypeGSO && q.rxCur != nil {
					q.rxCur.GSOType, q.rxCur.GSOSize = e.GSOType, e.GSOSize
				}
				q.rxExtra = e.Flags&netback.ExtraFlagMore != 0
				if !q.rxExtra && !q.rxMore && q.rxCur != nil {
					q.finishRx()
				}
				continue
			}
			r := netback.DecodeRxResponse(slot)
			id := uint16(idx % q.rx.Size())
			if q.rxCur == nil { // first slot of a packet
				q.rxCur = &Packet{Flags: r.Flags &^ netback.RxMoreData}
				q.rxExtra = r.Flags&netback.RxExtraInfo != 0
			}
			if r.ID != id || r.Status < 0 || int(r.Offset)+int(r.Status) > netback.PageSize ||
				len(q.rxCur.Frame)+int(r.Status) > maxRxPacket {
				q.rxErr = true
			} else {
				base := int(id) * netback.PageSize
				q.rxCur.Frame = append(q.rxCur.Frame, pages[base+int(r.Offset):base+int(r.Offset)+int(r.Status)]...)
			}
			q.rxMore = r.Flags&netback.RxMoreData != 0
			if !q.rxMore && !q.rxExtra {
				q.finishRx()
			}
		}
		if !q.rx.FinalCheckForResponses() {
			break
		}
	}
	ready := q.ready
	q.ready = nil
	q.rxMu.Unlock()
	for _, p := range ready {
		if q.f.cfg.DropOnFull {
			select {
			case q.recv <- p:
			default:
				q.count(func(c *Counters) { c.RxOverflow++; c.RxPackets-- })
			}
			continue
		}
		select {
		case q.recv <- p:
		case <-ctx.Done():
			return
		}
	}
	if posted > 0 {
		q.postRx(posted)
	}
}

func (q *fqueue) count(f func(*Counters)) {
	q.rxMu.Lock()
	defer q.rxMu.Unlock()
	f(&q.cnt)
}

func (q *fqueue) finishRx() {
	p := *q.rxCur
	q.rxCur = nil
	if q.rxErr {
		q.rxErr = false
		q.cnt.RxErrors++
		return
	}
	q.cnt.RxPackets++
	q.ready = append(q.ready, p)
}

// Recv returns the next packet received on queue q.
func (f *Front) Recv(ctx context.Context, q int) (Packet, error) {
	select {
	case p := <-f.queues[q].recv:
		return p, nil
	case <-ctx.Done():
		return Packet{}, ctx.Err()
	}
}

// RecvChan returns queue q's channel of received packets.
func (f *Front) RecvChan(q int) <-chan Packet { return f.queues[q].recv }

// Close runs the frontend's side of closing: Closing, wait for the backend
// to close, end every grant and event channel, Closed.
func (f *Front) Close(ctx context.Context) error {
	return xensim.CloseFrontend(ctx, f.store, f.path, f.back, "netfront-close-"+f.path, f.release)
}

// release stops the receiver and ends every grant and event channel.
func (f *Front) release() {
	f.recv.Stop()
	for _, q := range f.queues {
		for _, p := range []evtchn.Port{q.txPort, q.rxPort} {
			if p != 0 {
				f.evh.Unbind(p)
			}
		}
		q.rxPort = q.txPort
		for _, s := range []grant.Share{q.txShare, q.rxShare, q.txPages, q.rxPages} {
			if s != nil {
				s.Close()
			}
		}
	}
	f.queues = nil
	f.evh.Close()
}

// PostRx posts up to n more rx buffers on queue q (all free ones if n <= 0).
func (f *Front) PostRx(q, n int) { f.queues[q].postRx(n) }

// TxStatus returns the status of the last response to tx id on queue q.
func (f *Front) TxStatus(q int, id uint16) (int16, bool) {
	fq := f.queues[q]
	fq.txMu.Lock()
	defer fq.txMu.Unlock()
	s, ok := fq.txLast[id]
	return s, ok
}

// TxRing returns queue q's tx ring and a lock to hold while touching it
// (hostile tests scribble on the shared indices).
func (f *Front) TxRing(q int) (*ring.Front, []byte, *sync.Mutex) {
	fq := f.queues[q]
	return fq.tx, fq.txShare.Bytes(), &fq.txMu
}

// Kick notifies the backend on queue q's tx event channel.
func (f *Front) Kick(q int) error { return f.evh.Notify(f.queues[q].txPort) }
