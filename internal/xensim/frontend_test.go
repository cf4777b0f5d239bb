package xensim

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBackendInt(t *testing.T) {
	h := New()
	defer h.Close()
	dom0 := h.NewDomain(0).Xenstore()
	defer dom0.Close()
	ctx := context.Background()
	const back = "/local/domain/1/backend/vbd/2/51712"
	require.NoError(t, dom0.Write(ctx, back+"/sectors", " 2048\n"))
	require.NoError(t, dom0.Write(ctx, back+"/feature-flush-cache", "yes"))

	require.Equal(t, 2048, BackendInt(ctx, dom0, back, "sectors", 7), "spaces around a number are allowed")
	require.Equal(t, 7, BackendInt(ctx, dom0, back, "feature-flush-cache", 7), "not a number")
	require.Equal(t, 7, BackendInt(ctx, dom0, back, "missing", 7))
}

type ctxKey struct{}

func TestReceiverStop(t *testing.T) {
	var idle Receiver
	idle.Stop() // never started: returns at once

	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
	var r Receiver
	started, stopped := make(chan string), make(chan struct{})
	r.Start(ctx, func(ctx context.Context) {
		started <- ctx.Value(ctxKey{}).(string)
		<-ctx.Done()
		close(stopped)
	})
	require.Equal(t, "v", <-started, "the goroutine sees the caller's values")
	cancel()
	select {
	case <-stopped:
		t.Fatal("the goroutine stopped with the context that started it")
	case <-time.After(20 * time.Millisecond):
	}
	r.Stop()
	select {
	case <-stopped:
	default:
		t.Fatal("Stop returned before the goroutine did")
	}
}

func TestCloseFrontend(t *testing.T) {
	h := New()
	defer h.Close()
	dom0 := h.NewDomain(0).Xenstore()
	defer dom0.Close()
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
