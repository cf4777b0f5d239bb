package evtchn

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// pollIn reports whether fd polls readable within d.
func pollIn(t *testing.T, fd int, d time.Duration) bool {
	t.Helper()
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, int(d.Milliseconds()))
	require.NoError(t, err)
	return n == 1 && p[0].Revents&unix.POLLIN != 0
}

// The device's handle polls on its own descriptor and ReadPending reads
// what the kernel queued, without blocking when nothing is.
func TestDevHandlePoller(t *testing.T) {
	h, peer := sockHandle(t)
	var p Poller = h
	fd, err := p.PollFD()
	require.NoError(t, err)
	ports := make([]Port, 4)
	n, err := p.ReadPending(ports)
	require.NoError(t, err)
	require.Zero(t, n, "nothing pending")
	require.False(t, pollIn(t, fd, 10*time.Millisecond))

	var b [12]byte
	for i, port := range []uint32{7, 9, 11} {
		binary.LittleEndian.PutUint32(b[i*4:], port)
	}
	_, err = peer.Write(b[:])
	require.NoError(t, err)
	require.True(t, pollIn(t, fd, time.Second))
	n, err = p.ReadPending(ports[:2])
	require.NoError(t, err)
	require.Equal(t, []Port{7, 9}, ports[:n])
	n, err = p.ReadPending(ports)
	require.NoError(t, err)
	require.Equal(t, []Port{11}, ports[:n])

	require.NoError(t, h.Close())
	_, err = p.ReadPending(ports)
	require.ErrorIs(t, err, ErrClosed)
	_, err = p.PollFD()
	require.ErrorIs(t, err, ErrClosed)
}

// The simulator's handle: its eventfd polls readable exactly while a port
// is delivered and not read, delivery still masks until Unmask, and a
// handle closed under the poller (its domain destroyed) wakes it.
func TestSimHandlePoller(t *testing.T) {
	s := NewSim()
	back, front := s.Open(1), s.Open(2)
	unbound, err := back.BindUnbound(2)
	require.NoError(t, err)
	fport, err := front.BindInterdomain(1, unbound)
	require.NoError(t, err)
	p := back.(Poller)
	fd, err := p.PollFD()
	require.NoError(t, err)
	ports := make([]Port, 4)
	require.False(t, pollIn(t, fd, 10*time.Millisecond))

	require.NoError(t, front.Notify(fport))
	require.True(t, pollIn(t, fd, time.Second))
	n, err := p.ReadPending(ports)
	require.NoError(t, err)
	require.Equal(t, []Port{unbound}, ports[:n])
	require.False(t, pollIn(t, fd, 10*time.Millisecond), "read: no longer readable")

	require.NoError(t, front.Notify(fport)) // masked: stays pending
	require.False(t, pollIn(t, fd, 10*time.Millisecond), "masked port delivered")
	require.NoError(t, back.Unmask(unbound))
	require.True(t, pollIn(t, fd, time.Second), "pending port not delivered at unmask")
	n, err = p.ReadPending(ports)
	require.NoError(t, err)
	require.Equal(t, 1, n)

	s.DestroyDomain(1)
	require.True(t, pollIn(t, fd, time.Second), "destroyed handle did not wake its poller")
	_, err = p.ReadPending(ports)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, back.Close(), ErrClosed)
	_, err = p.PollFD()
	require.ErrorIs(t, err, ErrClosed)
}
