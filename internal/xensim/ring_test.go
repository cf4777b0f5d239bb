package xensim

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"drvdom/ring"
)

// delaySink keeps the frontend's delay loop from being optimised away.
var delaySink int

// spinUntil waits until v reaches n, yielding now and then so that it
// cannot starve the goroutine it waits for; false if quit was set first.
func spinUntil(v *atomic.Uint32, n uint32, quit *atomic.Bool) bool {
	for i := 0; v.Load() < n; i++ {
		if i%256 == 255 {
			if quit.Load() {
				return false
			}
			runtime.Gosched()
		}
	}
	return true
}

// TestRingEventHandshake plays ring.h's event handshake between the two
// ends over pages shared the way domains share them (the simulator's
// memfd pages: memory outside the Go heap), racing each time: the backend
// finds no request and asks for an event (FinalCheckForRequests: store
// req_event, load req_prod again) while the frontend posts one and decides
// whether to notify (PushRequests: store req_prod, load req_event). Each
// side's store must be visible before its own load: in every round the
// backend sees the request or the frontend notifies. If neither, a
// backend would sleep on a posted request for ever (the crash test's
// "stuck, 16 in flight"). Under the race detector, sync/atomic on memory
// outside the Go heap is a plain store (release only), so the ring must
// not rely on a plain store for that barrier.
func TestRingEventHandshake(t *testing.T) {
	h := New()
	defer h.Close()
	h.NewDomain(0)
	back, guest := h.NewDomain(driverDom), h.NewDomain(guestDom)
	sh, err := guest.Sharer().Share(driverDom, 1, true)
	require.NoError(t, err)
	defer sh.Close()
	m, err := back.Mapper().Map(guestDom, sh.Refs(), true)
	require.NoError(t, err)
	defer m.Unmap()
	f, err := ring.NewFront(sh.Bytes(), 64)
	require.NoError(t, err)
	b, err := ring.NewBack(m.Bytes(), 64)
	require.NoError(t, err)

	const rounds = 4000
	var start, done atomic.Uint32
	var quit atomic.Bool
	var more bool     // the backend's answer, read after done
	var moreErr error // and its error
	var wg sync.WaitGroup
	defer func() { quit.Store(true); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint32(1); i <= rounds; i++ {
			if !spinUntil(&start, i, &quit) {
				return
			}
			more, moreErr = b.FinalCheckForRequests()
			done.Store(i)
		}
	}()
	lost, seen, notified := 0, 0, 0
	for i := uint32(1); i <= rounds; i++ {
		f.Request()
		start.Store(i)
		// The backend is slower to start: let the frontend wait a little,
		// a different while each round, so that the two overlap.
		d := 0
		for j := 0; j < int(i%64)*8; j++ {
			d = d*31 + j
		}
		delaySink += d
		notify := f.PushRequests()
		spinUntil(&done, i, &quit)
		require.NoError(t, moreErr)
		switch {
		case more:
			seen++
		case notify:
			notified++
		default:
			lost++
		}
		// Serve the request and take the response: the next round starts
		// from an idle ring.
		n, err := b.Unconsumed()
		require.NoError(t, err)
		require.Equal(t, uint32(1), n)
		b.Request()
		b.Response()
		b.PushResponses()
		require.Equal(t, uint32(1), f.Unconsumed())
		f.Response()
	}
	t.Logf("%d rounds: the backend saw the request in %d, the frontend notified in %d, lost %d", rounds, seen, notified, lost)
	require.Zero(t, lost, "rounds where the backend went to sleep on a request the frontend did not notify")
}
