// Package ring implements both ends of the Xen shared I/O ring
// (xen/include/public/io/ring.h) over a byte slice holding the ring's pages.
//
// The layout is the one every PV protocol shares: a 64-byte header
// (req_prod, req_event, rsp_prod, rsp_event, then padding) followed by a
// power-of-two number of fixed-size entries, requests and responses sharing
// the same slots. The package is generic over the entry size, so blkif
// (112-byte entries), netif (8- and 12-byte entries) and anything else use
// the same code; it never interprets an entry.
//
// Front and Back are thread-compatible: one goroutine drives each end. The
// two ends may live in different goroutines, processes or domains; they
// synchronise only through the shared indices, which are read and written
// with atomic operations (the barriers ring.h asks for), and the other end is
// never trusted: Back.Unconsumed refuses a req_prod that runs more than the
// ring's size ahead of the responses (ErrOverflow).
//
// Slot accessors return slices into the shared memory. A backend must copy a
// request out before validating it: the frontend can still change it.
package ring

import (
	"errors"
	"fmt"
)

// Layout of struct <name>_sring from ring.h (pinned by TestHeaderLayout).
const (
	offReqProd  = 0
	offReqEvent = 4
	offRspProd  = 8
	offRspEvent = 12
	// HeaderSize is the offset of the first entry: four RING_IDX, the
	// 4-byte pvt union and 44 bytes of padding.
	HeaderSize = 64
	// PageSize is the size of one ring page (XEN_PAGE_SIZE).
	PageSize = 4096
	// MaxOrder is the largest ring-page-order this package accepts
	// (XENBUS_MAX_RING_GRANT_ORDER): 16 pages.
	MaxOrder = 4
)

// ErrOverflow is returned by Back when the frontend's req_prod is more than
// the ring's size ahead of the backend's responses: the frontend is broken or
// hostile, and the ring must not be serviced any further.
var ErrOverflow = errors.New("ring: frontend request producer overflows the ring")

// ErrLayout is returned by NewBack and NewFront for memory or entry sizes
// that cannot form a ring.
var ErrLayout = errors.New("ring: bad ring layout")

// Entries returns the number of entries of the given size that fit in a ring
// of the given total size in bytes: __RING_SIZE, rounded down to a power of
// two. It returns 0 if not even one entry fits.
func Entries(bytes, entrySize int) uint32 {
	if entrySize <= 0 || bytes <= HeaderSize {
		return 0
	}
	n := (bytes - HeaderSize) / entrySize
	if n <= 0 {
		return 0
	}
	p := uint32(1)
	for int(p)*2 <= n && p < 1<<30 {
		p *= 2
	}
	return p
}

// layout is what both ends share: the memory and the entry geometry.
type layout struct {
	mem       []byte
	entrySize int
	size      uint32 // entries, a power of two
	idx       *indices
}

func newLayout(mem []byte, entrySize int) (layout, error) {
	if len(mem) == 0 || len(mem)%PageSize != 0 || len(mem) > PageSize<<MaxOrder {
		return layout{}, fmt.Errorf("%w: %d bytes of ring memory (want 1 to %d whole pages)", ErrLayout, len(mem), 1<<MaxOrder)
	}
	size := Entries(len(mem), entrySize)
	if size == 0 {
		return layout{}, fmt.Errorf("%w: entry size %d does not fit in %d bytes", ErrLayout, entrySize, len(mem))
	}
	idx := indicesOf(mem)
	if idx == nil {
		return layout{}, fmt.Errorf("%w: ring memory is not 4-byte aligned", ErrLayout)
	}
	return layout{mem: mem, entrySize: entrySize, size: size, idx: idx}, nil
}

// Size returns the number of entries in the ring.
func (l *layout) Size() uint32 { return l.size }

// slot returns the entry for ring index i.
func (l *layout) slot(i uint32) []byte {
	off := HeaderSize + int(i&(l.size-1))*l.entrySize
	return l.mem[off : off+l.entrySize : off+l.entrySize]
}

// push publishes the producer index at offProd (req_prod or rsp_prod) as
// nw and reports whether the peer's event index at offEvent (req_event or
// rsp_event) lies in (old, nw]: the peer asked to be notified, the test of
// ring.h's RING_PUSH_*_AND_CHECK_NOTIFY. The store is a release (entries
// first, then the index) and a full barrier before the event is read.
func (l *layout) push(offProd, offEvent int, nw uint32) (notify bool) {
	old := l.idx.load(offProd)
	l.idx.store(offProd, nw)
	event := l.idx.load(offEvent)
	return nw-event < nw-old
}

// Back is the backend end of a shared ring: it consumes requests and
// produces responses. Thread-compatible.
type Back struct {
	layout
	reqCons    uint32 // req_cons: next request to take
	rspProdPvt uint32 // rsp_prod_pvt: next response slot
}

// NewBack attaches to a ring the frontend has initialised in mem (the mapped
// ring pages). It does not write to the ring.
func NewBack(mem []byte, entrySize int) (*Back, error) {
	l, err := newLayout(mem, entrySize)
	if err != nil {
		return nil, err
	}
	return &Back{layout: l}, nil
}

// Resume continues from saved private indices, as a restarted backend does
// with the state its journal kept (BACK_RING_ATTACH).
func (b *Back) Resume(reqCons, rspProdPvt uint32) {
	b.reqCons, b.rspProdPvt = reqCons, rspProdPvt
}

// ReqCons returns the index of the next request to be consumed.
func (b *Back) ReqCons() uint32 { return b.reqCons }

// RspProdPvt returns the index of the next response slot.
func (b *Back) RspProdPvt() uint32 { return b.rspProdPvt }

// SharedRspProd returns rsp_prod as published in the shared ring: responses
// in slots below it are visible to the frontend.
func (b *Back) SharedRspProd() uint32 { return b.idx.load(offRspProd) }

// Unconsumed reads the frontend's req_prod once and returns how many
// requests can be taken now (RING_HAS_UNCONSUMED_REQUESTS). A req_prod more
// than Size ahead of the responses produced is ErrOverflow
// (RING_REQUEST_PROD_OVERFLOW).
func (b *Back) Unconsumed() (uint32, error) {
	prod := b.idx.load(offReqProd) // acquire: entries below prod are visible
	if prod-b.rspProdPvt > b.size {
		return 0, fmt.Errorf("%w: req_prod %d, rsp_prod_pvt %d, size %d", ErrOverflow, prod, b.rspProdPvt, b.size)
	}
	req := prod - b.reqCons
	if req > b.size { // req_prod behind req_cons: also nonsense
		return 0, fmt.Errorf("%w: req_prod %d behind req_cons %d", ErrOverflow, prod, b.reqCons)
	}
	// Never consume a request whose slot still holds an unpublished response.
	// (A corrupt Resume can leave req_cons outside the window.)
	taken := b.reqCons - b.rspProdPvt
	if taken > b.size {
		return 0, fmt.Errorf("%w: req_cons %d outside the window of rsp_prod_pvt %d", ErrOverflow, b.reqCons, b.rspProdPvt)
	}
	if free := b.size - taken; free < req {
		req = free
	}
	return req, nil
}

// Request returns the slot of the next request and consumes it. Call it
// only as many times as Unconsumed allowed. The slice aliases shared memory:
// copy it before use.
func (b *Back) Request() []byte {
	s := b.slot(b.reqCons)
	b.reqCons++
	return s
}

// FinalCheckForRequests is RING_FINAL_CHECK_FOR_REQUESTS: if nothing is
// pending it asks the frontend for an event at the next request (req_event)
// and looks once more, closing the race with a request pushed meanwhile.
func (b *Back) FinalCheckForRequests() (bool, error) {
	n, err := b.Unconsumed()
	if err != nil || n > 0 {
		return n > 0, err
	}
	b.idx.store(offReqEvent, b.reqCons+1) // full barrier on amd64 and in Go's model
	n, err = b.Unconsumed()
	return n > 0, err
}

// SetReqEvent asks the frontend for an event when req_prod passes idx-1
// (req_event = idx), with a full barrier. A backend that waits for more
// requests than are already posted (netback's rx path waiting for enough
// buffers for a packet) arms the event past them with this, then looks at
// Unconsumed again.
func (b *Back) SetReqEvent(idx uint32) { b.idx.store(offReqEvent, idx) }

// Response returns the next response slot and claims it. The response is
// published by PushResponses.
func (b *Back) Response() []byte {
	s := b.slot(b.rspProdPvt)
	b.rspProdPvt++
	return s
}

// PushResponses publishes every claimed response (rsp_prod = rsp_prod_pvt,
// after a write barrier) and reports whether the frontend asked to be
// notified (RING_PUSH_RESPONSES_AND_CHECK_NOTIFY).
func (b *Back) PushResponses() (notify bool) { return b.push(offRspProd, offRspEvent, b.rspProdPvt) }

// Front is the frontend end of a shared ring: it produces requests and
// consumes responses. Thread-compatible.
type Front struct {
	layout
	reqProdPvt uint32
	rspCons    uint32
}

// NewFront initialises the shared ring in mem (SHARED_RING_INIT and
// FRONT_RING_INIT) and returns its frontend end.
func NewFront(mem []byte, entrySize int) (*Front, error) {
	l, err := newLayout(mem, entrySize)
	if err != nil {
		return nil, err
	}
	clear(mem[:HeaderSize])
	l.idx.store(offReqEvent, 1)
	l.idx.store(offRspEvent, 1)
	return &Front{layout: l}, nil
}

// Free returns how many requests can be queued now (RING_FREE_REQUESTS).
func (f *Front) Free() uint32 { return f.size - (f.reqProdPvt - f.rspCons) }

// Request returns the next request slot and claims it; PushRequests
// publishes it. Call it only while Free is above zero.
func (f *Front) Request() []byte {
	s := f.slot(f.reqProdPvt)
	f.reqProdPvt++
	return s
}

// PushRequests publishes every claimed request and reports whether the
// backend asked to be notified (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY).
func (f *Front) PushRequests() (notify bool) { return f.push(offReqProd, offReqEvent, f.reqProdPvt) }

// Unconsumed returns how many responses are ready
// (RING_HAS_UNCONSUMED_RESPONSES), capped at the ring size.
func (f *Front) Unconsumed() uint32 {
	n := f.idx.load(offRspProd) - f.rspCons
	if n > f.size {
		return 0 // a backend running ahead of our requests is broken: take nothing
	}
	return n
}

// Response returns the slot of the next response and consumes it. The slot
// may be reused by the next Request: copy what is needed first.
func (f *Front) Response() []byte {
	s := f.slot(f.rspCons)
	f.rspCons++
	return s
}

// FinalCheckForResponses is RING_FINAL_CHECK_FOR_RESPONSES.
func (f *Front) FinalCheckForResponses() bool {
	if f.Unconsumed() > 0 {
		return true
	}
	f.idx.store(offRspEvent, f.rspCons+1)
	return f.Unconsumed() > 0
}
