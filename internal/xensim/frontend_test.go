package xensim

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"drvdom/evtchn"
	"drvdom/xenstore"
)

func TestBackendInt(t *testing.T) {
	dom0 := newDom0(t)
	ctx := context.Background()
	const back = "/local/domain/1/backend/vbd/2/51712"
	require.NoError(t, dom0.Write(ctx, back+"/sectors", " 2048\n"))
	require.NoError(t, dom0.Write(ctx, back+"/feature-flush-cache", "yes"))

	require.Equal(t, 2048, BackendInt(ctx, dom0, back, "sectors", 7), "spaces around a number are allowed")
	require.Equal(t, 7, BackendInt(ctx, dom0, back, "feature-flush-cache", 7), "not a number")
	require.Equal(t, 7, BackendInt(ctx, dom0, back, "missing", 7))
}

// newDom0 returns a xenstore connection of dom0 on a new host.
func newDom0(t *testing.T) *xenstore.Client {
	h := New()
	t.Cleanup(h.Close)
	dom0 := h.NewDomain(0).Xenstore()
	t.Cleanup(func() { dom0.Close() })
	return dom0
}

type ctxKey struct{}

func TestReceiver(t *testing.T) {
	var idle Receiver
	idle.Stop() // never started: returns at once

	events := evtchn.NewSim()
	front, back := events.Open(guestDom), events.Open(driverDom)
	fp, err := front.BindUnbound(driverDom)
	require.NoError(t, err)
	bp, err := back.BindInterdomain(guestDom, fp)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	var r Receiver
	type call struct {
		port  evtchn.Port
		value any
	}
	calls, stopped := make(chan call, 4), make(chan struct{})
	served := 0 // by the receiver's goroutine only
	r.Start(ctx, front, func(ctx context.Context, p evtchn.Port) {
		calls <- call{p, ctx.Value(ctxKey{})}
		if served++; served == 2 { // stay in serve until Stop
			<-ctx.Done()
			close(stopped)
		}
	})
	next := func() call {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no event served")
			return call{}
		}
	}
	require.NoError(t, back.Notify(bp))
	require.Equal(t, call{fp, "v"}, next(), "serve gets the port that fired and the caller's values")
	require.NoError(t, back.Notify(bp))
	require.Equal(t, call{fp, "v"}, next(), "the port was unmasked for the next event")

	cancel()
	select {
	case <-stopped:
		t.Fatal("the receiver stopped with the context that started it")
	case <-time.After(20 * time.Millisecond):
	}
	r.Stop()
	select {
	case <-stopped:
	default:
		t.Fatal("Stop returned before the receiver did")
	}
}

func TestCloseFrontend(t *testing.T) {
	dom0 := newDom0(t)
	ctx := context.Background()
	const (
		back  = "/local/domain/1/backend/vif/2/0"
		front = "/local/domain/2/device/vif/0"
	)
	require.NoError(t, dom0.Write(ctx, back+"/state", "4"))
	require.NoError(t, dom0.Write(ctx, front+"/state", "4"))

	// The backend closes once it sees the frontend Closing; release runs
	// after that and before Closed.
	w, err := dom0.Watch(ctx, front+"/state", "t")
	require.NoError(t, err)
	defer w.Close()
	backend := make(chan error, 1)
	go func() {
		for range w.Events() {
			if s, _ := dom0.Read(ctx, front+"/state"); s == "5" {
				backend <- dom0.Write(ctx, back+"/state", "6")
				return
			}
		}
	}()
	var released []string
	err = CloseFrontend(ctx, dom0, front, back, "close", func() {
		s, _ := dom0.Read(ctx, back+"/state")
		f, _ := dom0.Read(ctx, front+"/state")
		released = append(released, s+f)
	})
	require.NoError(t, err)
	require.NoError(t, <-backend)
	require.Equal(t, []string{"65"}, released, "released once, backend Closed, frontend still Closing")
	s, err := dom0.Read(ctx, front+"/state")
	require.NoError(t, err)
	require.Equal(t, "6", s)

	// A backend that never closes: the wait fails with the context and
	// the frontend is released all the same (writing Closed with the
	// expired context may fail too; the first error is the one returned).
	require.NoError(t, dom0.Write(ctx, back+"/state", "4"))
	require.NoError(t, dom0.Write(ctx, front+"/state", "4"))
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	n := 0
	err = CloseFrontend(tctx, dom0, front, back, "close", func() { n++ })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, 1, n)

	// A backend directory already gone counts as closed.
	require.NoError(t, dom0.Rm(ctx, back))
	require.NoError(t, CloseFrontend(ctx, dom0, front, back, "close", func() { n++ }))
	require.Equal(t, 2, n)
}

func TestBackendOf(t *testing.T) {
	dom0 := newDom0(t)
	ctx := context.Background()
	const front = "/local/domain/2/device/vbd/51712"

	_, _, err := BackendOf(ctx, dom0, front)
	require.ErrorIs(t, err, xenstore.ErrNotExist)
	require.NoError(t, dom0.Write(ctx, front+"/backend", "/local/domain/1/backend/vbd/2/51712"))
	_, _, err = BackendOf(ctx, dom0, front)
	require.ErrorIs(t, err, xenstore.ErrNotExist, "no backend-id")
	for _, bad := range []string{"65536", "-1", "one", ""} {
		require.NoError(t, dom0.Write(ctx, front+"/backend-id", bad))
		_, _, err = BackendOf(ctx, dom0, front)
		require.ErrorContains(t, err, "backend-id", bad)
	}
	require.NoError(t, dom0.Write(ctx, front+"/backend-id", "1"))
	back, dom, err := BackendOf(ctx, dom0, front)
	require.NoError(t, err)
	require.Equal(t, "/local/domain/1/backend/vbd/2/51712", back)
	require.Equal(t, uint16(1), dom)
}

func TestWaitBackend(t *testing.T) {
	dom0 := newDom0(t)
	ctx := context.Background()
	const back = "/local/domain/1/backend/vbd/2/51712"
	require.NoError(t, dom0.Write(ctx, back+"/state", "1"))

	// done sees the state now and after each change, until it is done.
	// Each change is written once done saw the one before: written 10 ms
	// apart, two could land before a loaded machine let WaitBackend look,
	// and done would see only the last.
	var seen []int
	saw := make(chan int, 3)
	go func() {
		for _, s := range []string{"2", "4"} {
			<-saw
			if err := dom0.Write(ctx, back+"/state", s); err != nil {
				t.Errorf("write state: %v", err)
			}
		}
	}()
	s, err := WaitBackend(ctx, dom0, back, "w", func(s int) (bool, error) {
		if len(seen) == 0 || seen[len(seen)-1] != s {
			seen = append(seen, s)
			saw <- s
		}
		return s == 4, nil
	})
	require.NoError(t, err)
	require.Equal(t, 4, s)
	require.Equal(t, []int{1, 2, 4}, seen)

	// done's error ends the wait.
	bad := errors.New("bad state")
	_, err = WaitBackend(ctx, dom0, back, "w", func(int) (bool, error) { return false, bad })
	require.ErrorIs(t, err, bad)

	// The context ends the wait with the last state read.
	tctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	s, err = WaitBackend(tctx, dom0, back, "w", func(int) (bool, error) { return false, nil })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, 4, s)
}
