package evtchn

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pair binds front (d1, unbound for d2) to back (d2) and drains the
// bind-time event Xen raises on the binding side.
func pair(t testing.TB, s *Sim) (front, back Handle, fp, bp Port) {
	front, back = s.Open(1), s.Open(2)
	fp, err := front.BindUnbound(2)
	require.NoError(t, err)
	bp, err = back.BindInterdomain(1, fp)
	require.NoError(t, err)
	ports := make([]Port, 4)
	n, err := back.Wait(context.Background(), ports)
	require.NoError(t, err)
	require.Equal(t, []Port{bp}, ports[:n])
	require.NoError(t, back.Unmask(bp))
	return
}

func waitOne(t *testing.T, h Handle) (Port, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	ports := make([]Port, 4)
	n, err := h.Wait(ctx, ports)
	if err != nil {
		return 0, err
	}
	require.Equal(t, 1, n)
	return ports[0], nil
}

func TestSimBindNotify(t *testing.T) {
	s := NewSim()
	front, back, fp, bp := pair(t, s)
	require.Equal(t, Port(1), fp)
	require.Equal(t, Port(1), bp)
	require.NoError(t, front.Notify(fp))
	p, err := waitOne(t, back)
	require.NoError(t, err)
	require.Equal(t, bp, p)
	require.NoError(t, back.Notify(bp))
	p, err = waitOne(t, front)
	require.NoError(t, err)
	require.Equal(t, fp, p)
}

func TestSimMaskUnmask(t *testing.T) {
	s := NewSim()
	front, back, fp, bp := pair(t, s)
	require.NoError(t, front.Notify(fp))
	_, err := waitOne(t, back)
	require.NoError(t, err)
	// Masked now: two more notifies coalesce into one pending event.
	require.NoError(t, front.Notify(fp))
	require.NoError(t, front.Notify(fp))
	_, err = waitOne(t, back)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, back.Unmask(bp))
	p, err := waitOne(t, back)
	require.NoError(t, err)
	require.Equal(t, bp, p)
	require.NoError(t, back.Unmask(bp))
	_, err = waitOne(t, back)
	require.ErrorIs(t, err, context.DeadlineExceeded, "coalesced: delivered once")
}

func TestSimBindRefusals(t *testing.T) {
	s := NewSim()
	front, other := s.Open(1), s.Open(3)
	fp, err := front.BindUnbound(2)
	require.NoError(t, err)
	_, err = other.BindInterdomain(1, fp)
	require.ErrorIs(t, err, syscall.EINVAL, "offered to d2 only")
	_, err = other.BindInterdomain(1, 99)
	require.ErrorIs(t, err, syscall.EINVAL)
	_, err = other.BindInterdomain(7, 1)
	require.ErrorIs(t, err, syscall.ESRCH)
	back := s.Open(2)
	_, err = back.BindInterdomain(1, fp)
	require.NoError(t, err)
	_, err = back.BindInterdomain(1, fp)
	require.ErrorIs(t, err, syscall.EINVAL, "already bound")
	require.ErrorIs(t, other.Notify(fp), syscall.EINVAL, "not this handle's port")
}

func TestSimCloseUnboundRebind(t *testing.T) {
	s := NewSim()
	front, back, fp, _ := pair(t, s)
	require.NoError(t, back.Close()) // backend process dies
	require.Equal(t, 0, s.BoundPorts(2))
	require.Equal(t, 1, s.BoundPorts(1))
	require.NoError(t, front.Notify(fp), "notify to unbound goes nowhere")
	_, err := back.Wait(context.Background(), make([]Port, 1))
	require.ErrorIs(t, err, ErrClosed)

	back2 := s.Open(2) // restarted backend
	bp2, err := back2.BindInterdomain(1, fp)
	require.NoError(t, err)
	p, err := waitOne(t, back2) // bind-time event
	require.NoError(t, err)
	require.Equal(t, bp2, p)
	require.NoError(t, back2.Unmask(bp2))
	require.NoError(t, front.Notify(fp))
	p, err = waitOne(t, back2)
	require.NoError(t, err)
	require.Equal(t, bp2, p)

	// Unbind by the frontend: backend's port falls back to unbound for d1.
	require.NoError(t, front.Unbind(fp))
	require.NoError(t, back2.Notify(bp2))
	_, err = waitOne(t, front)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	front2 := s.Open(1)
	_, err = front2.BindInterdomain(2, bp2)
	require.NoError(t, err)

	s.DestroyDomain(2)
	require.ErrorIs(t, back2.Notify(bp2), ErrClosed)
	require.Equal(t, 0, s.BoundPorts(2))
}

func TestSimWaitCancel(t *testing.T) {
	s := NewSim()
	h := s.Open(1)
	_, err := h.Wait(context.Background(), nil)
	require.ErrorIs(t, err, syscall.EINVAL, "no room for ports, as the device")
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := h.Wait(ctx, make([]Port, 1)); errc <- err }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	go func() { _, err := h.Wait(context.Background(), make([]Port, 1)); errc <- err }()
	time.Sleep(10 * time.Millisecond)
	require.NoError(t, h.Close())
	require.True(t, errors.Is(<-errc, ErrClosed))
}

func TestSimConcurrentNotifiers(t *testing.T) {
	s := NewSim()
	front, back, fp, bp := pair(t, s)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					require.NoError(t, front.Notify(fp))
				}
			}
		}()
	}
	ports := make([]Port, 8)
	for i := 0; i < 200; i++ {
		n, err := back.Wait(context.Background(), ports)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.NoError(t, back.Unmask(bp))
	}
	close(stop)
	wg.Wait()
}

func TestSimWaitNoAlloc(t *testing.T) {
	s := NewSim()
	front, back, fp, bp := pair(t, s)
	ports := make([]Port, 4)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		_ = front.Notify(fp)
		_, _ = back.Wait(ctx, ports)
		_ = back.Unmask(bp)
	})
	require.Zero(t, allocs)
}

func BenchmarkSimNotifyWait(b *testing.B) {
	s := NewSim()
	front, back, fp, bp := pair(b, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ports := make([]Port, 4)
		for {
			if _, err := back.Wait(context.Background(), ports); err != nil {
				return
			}
			_ = back.Unmask(bp)
			_ = back.Notify(bp)
		}
	}()
	ports := make([]Port, 4)
	b.ReportAllocs()
	for b.Loop() {
		_ = front.Notify(fp)
		_, _ = front.Wait(context.Background(), ports)
		_ = front.Unmask(fp)
	}
	_ = back.Close()
	<-done
}
