package main

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestStoreProbeSlowIsNotSick(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	release := make(chan error)
	p := newStoreProbe(func(ctx context.Context) error { return <-release }, 30*time.Second)
	p.now = clk.now
	ctx := context.Background()
	require.NoError(t, p.check(ctx)) // starts a read
	clk.add(10 * time.Second)
	require.NoError(t, p.check(ctx), "a read 10 s old is slow, not stalled")
	clk.add(25 * time.Second)
	err := p.check(ctx)
	require.ErrorContains(t, err, "no answer for 35s")
	release <- nil // the read finally answers
	require.Eventually(t, func() bool { return p.check(ctx) == nil }, 5*time.Second, time.Millisecond)
	release <- nil
	p.wait()
}

func TestStoreProbeReportsFailureOnce(t *testing.T) {
	boom := errors.New("EIO")
	reads := make(chan error, 2)
	reads <- boom
	reads <- nil
	p := newStoreProbe(func(ctx context.Context) error {
		select {
		case err := <-reads:
			return err
		default:
			return nil
		}
	}, time.Minute)
	ctx := context.Background()
	require.NoError(t, p.check(ctx))
	var err error
	require.Eventually(t, func() bool { err = p.check(ctx); return err != nil }, 5*time.Second, time.Millisecond)
	require.ErrorIs(t, err, boom)
	require.NoError(t, p.check(ctx)) // a new read starts, and succeeds
	p.wait()
	require.NoError(t, p.check(ctx))
	p.wait()
}

func TestStoreProbeEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	p := newStoreProbe(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, time.Minute)
	require.NoError(t, p.check(ctx))
	cancel()
	p.wait() // returns: the read's goroutine is gone
}

func TestWatchdogHealthGrace(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	var sick error
	h := watchdogHealth(func() error { return sick }, 40*time.Second, clk.now)
	require.NoError(t, h())
	sick = errors.New("worker heartbeat 6s old")
	require.NoError(t, h(), "the supervisor gets its chance first")
	clk.add(39 * time.Second)
	require.NoError(t, h())
	clk.add(time.Second)
	require.ErrorContains(t, h(), "worker heartbeat 6s old; unhealthy for 40s")
	sick = nil
	require.NoError(t, h())
	sick = errors.New("again")
	require.NoError(t, h(), "the grace starts over after a recovery")
}
