package netback

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"
)

// MemHost is an in-memory Host for the simulator and tests: each TAP is a
// set of queues of frames (virtio-net header + Ethernet frame) in channels.
// Safe for concurrent use.
type MemHost struct {
	// WriteWait is how long a TAP queue's Write waits for room when the
	// host has not read its frames before dropping one (0: a second).
	WriteWait time.Duration

	mu      sync.Mutex
	taps    map[string]*MemTap
	bridges map[string][]string // bridge -> enslaved taps
}

var _ Host = (*MemHost)(nil)

// NewMemHost returns an empty in-memory host.
func NewMemHost() *MemHost {
	return &MemHost{taps: make(map[string]*MemTap), bridges: make(map[string][]string)}
}

// memQueueDepth is how many frames each direction of a MemTap queue buffers.
const memQueueDepth = 256

// CreateTap implements Host.
func (h *MemHost) CreateTap(name, bridge string) (Tap, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.taps[name]; ok {
		return nil, fmt.Errorf("netback: memhost: tap %s exists", name)
	}
	t := &MemTap{host: h, name: name, bridge: bridge, done: make(chan struct{})}
	t.queues = []*MemTapQueue{newMemQueue(t)}
	h.taps[name] = t
	h.bridges[bridge] = append(h.bridges[bridge], name)
	return t, nil
}

// Tap returns the TAP called name, or nil.
func (h *MemHost) Tap(name string) *MemTap {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.taps[name]
}

// Taps returns how many TAPs exist now (for leak checks).
func (h *MemHost) Taps() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.taps)
}

// Bridge returns the TAPs enslaved to bridge.
func (h *MemHost) Bridge(name string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.bridges[name]...)
}

// MemTap is an in-memory TAP.
type MemTap struct {
	host    *MemHost
	name    string
	bridge  string
	mu      sync.Mutex
	queues  []*MemTapQueue
	offload uint32
	carrier bool
	closed  bool
	done    chan struct{}
}

// MemTapQueue is one queue of a MemTap. The backend side uses Read/Write;
// the host side (the test) uses Inject and Recv.
type MemTapQueue struct {
	tap    *MemTap
	toVif  chan []byte // frames the host sends to the guest
	toHost chan []byte // frames the guest sent
	free   chan []byte // recycled frame buffers
}

func newMemQueue(t *MemTap) *MemTapQueue {
	return &MemTapQueue{
		tap:    t,
		toVif:  make(chan []byte, memQueueDepth),
		toHost: make(chan []byte, memQueueDepth),
		free:   make(chan []byte, 2*memQueueDepth),
	}
}

func (t *MemTap) Name() string { return t.name }

// Bridge returns the bridge the TAP was enslaved to.
func (t *MemTap) Bridge() string { return t.bridge }

// Offload returns the TUN_F_* flags last set.
func (t *MemTap) Offload() uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.offload
}

// NumQueues returns how many queues are attached.
func (t *MemTap) NumQueues() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.queues)
}

// Closed reports whether the TAP was removed.
func (t *MemTap) Closed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

func (t *MemTap) SetQueues(n int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrTapClosed
	}
	if n < 1 {
		n = 1
	}
	for len(t.queues) < n {
		t.queues = append(t.queues, newMemQueue(t))
	}
	t.queues = t.queues[:n]
	return nil
}

// Queue implements Tap.
func (t *MemTap) Queue(i int) TapQueue {
	q := t.MemQueue(i)
	if q == nil {
		return closedQueue{}
	}
	return q
}

// MemQueue returns queue i, or nil.
func (t *MemTap) MemQueue(i int) *MemTapQueue {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i < 0 || i >= len(t.queues) {
		return nil
	}
	return t.queues[i]
}

func (t *MemTap) SetOffload(flags uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrTapClosed
	}
	t.offload = flags
	return nil
}

// SetCarrier implements Tap.
func (t *MemTap) SetCarrier(on bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrTapClosed
	}
	t.carrier = on
	return nil
}

// Carrier reports the carrier last set (off at creation).
func (t *MemTap) Carrier() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.carrier
}

// Close removes the TAP from its host.
func (t *MemTap) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	close(t.done)
	t.mu.Unlock()
	h := t.host
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.taps, t.name)
	br := h.bridges[t.bridge]
	for i, n := range br {
		if n == t.name {
			h.bridges[t.bridge] = append(br[:i:i], br[i+1:]...)
			break
		}
	}
	if len(h.bridges[t.bridge]) == 0 {
		delete(h.bridges, t.bridge)
	}
	return nil
}

// Read implements TapQueue: the next frame injected by the host.
func (q *MemTapQueue) Read(ctx context.Context, b []byte) (int, error) {
	select {
	case f := <-q.toVif:
		n := copy(b, f)
		q.recycle(f)
		return n, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-q.tap.done:
		return 0, ErrTapClosed
	}
}

// TryRead reads a frame injected by the host if one is waiting.
func (q *MemTapQueue) TryRead(b []byte) (int, bool, error) {
	select {
	case f := <-q.toVif:
		n := copy(b, f)
		q.recycle(f)
		return n, true, nil
	case <-q.tap.done:
		return 0, false, ErrTapClosed
	default:
		return 0, false, nil
	}
}

// Write implements TapQueue: the frame is queued for Recv. Unlike a real
// TAP (whose host stack may drop at once), it waits up to a second for
// room, so tests can count every frame, then drops the frame; it gives up
// when the TAP is closed.
func (q *MemTapQueue) Write(b []byte) (int, error) {
	select {
	case <-q.tap.done:
		return 0, ErrTapClosed
	default:
	}
	f := q.buffer(len(b))
	copy(f, b)
	select {
	case q.toHost <- f:
		return len(b), nil
	default:
	}
	t := time.NewTimer(cmp.Or(q.tap.host.WriteWait, time.Second))
	defer t.Stop()
	select {
	case q.toHost <- f:
		return len(b), nil
	case <-t.C:
		q.recycle(f)
		return len(b), nil // dropped, as a congested host stack does
	case <-q.tap.done:
		q.recycle(f)
		return 0, ErrTapClosed
	}
}

func (q *MemTapQueue) buffer(n int) []byte {
	select {
	case f := <-q.free:
		if cap(f) >= n {
			return f[:n]
		}
	default:
	}
	c := n
	if c < 2048 {
		c = 2048
	}
	return make([]byte, n, c)
}

func (q *MemTapQueue) recycle(f []byte) {
	select {
	case q.free <- f[:0]:
	default:
	}
}

// Inject queues frame (virtio-net header + Ethernet frame) for the guest.
// It copies frame and blocks while the queue is full or until ctx ends.
func (q *MemTapQueue) Inject(ctx context.Context, frame []byte) error {
	f := q.buffer(len(frame))
	copy(f, frame)
	select {
	case q.toVif <- f:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-q.tap.done:
		return ErrTapClosed
	}
}

// Recv returns the next frame the guest sent (header included). The caller
// may hand it back with Release when done.
func (q *MemTapQueue) Recv(ctx context.Context) ([]byte, error) {
	select {
	case f := <-q.toHost:
		return f, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Release recycles a frame returned by Recv.
func (q *MemTapQueue) Release(f []byte) { q.recycle(f) }
