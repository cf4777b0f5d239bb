package evtchn

import (
	"context"
	"encoding/binary"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func ioc(dir, typ, nr, size uintptr) uintptr { return dir<<30 | size<<16 | typ<<8 | nr }

// C mirrors of include/uapi/xen/evtchn.h (unsigned int fields).
type (
	cBindInterdomain struct{ remoteDomain, remotePort uint32 }
	cBindUnbound     struct{ remoteDomain uint32 }
	cPortArg         struct{ port uint32 }
)

func TestDevLayout(t *testing.T) {
	var bi cBindInterdomain
	require.EqualValues(t, unsafe.Sizeof(bi), bindInterdomainSize)
	require.EqualValues(t, unsafe.Offsetof(bi.remoteDomain), bindInterdomainRemoteDomain)
	require.EqualValues(t, unsafe.Offsetof(bi.remotePort), bindInterdomainRemotePort)
	require.EqualValues(t, unsafe.Sizeof(cBindUnbound{}), bindUnboundSize)
	require.EqualValues(t, unsafe.Sizeof(cPortArg{}), portArgSize)
	require.EqualValues(t, 4, portSize)
	require.EqualValues(t, 8, bindInterdomainSize)

	for _, tc := range []struct {
		name     string
		got      uintptr
		nr, size uintptr
	}{
		{"IOCTL_EVTCHN_BIND_INTERDOMAIN", ioctlBindInterdomain, 1, unsafe.Sizeof(cBindInterdomain{})},
		{"IOCTL_EVTCHN_BIND_UNBOUND_PORT", ioctlBindUnboundPort, 2, unsafe.Sizeof(cBindUnbound{})},
		{"IOCTL_EVTCHN_UNBIND", ioctlUnbind, 3, unsafe.Sizeof(cPortArg{})},
		{"IOCTL_EVTCHN_NOTIFY", ioctlNotify, 4, unsafe.Sizeof(cPortArg{})},
		{"IOCTL_EVTCHN_RESET", ioctlReset, 5, 0},
	} {
		require.Equal(t, ioc(0, 'E', tc.nr, tc.size), tc.got, tc.name)
	}
}

// sockHandle is a devHandle over one end of a socketpair: the test plays
// the kernel on the other end (writes pending ports, reads unmasks).
func sockHandle(t *testing.T) (*devHandle, *os.File) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	require.NoError(t, err)
	h := newDevHandle(fds[0], "evtchn-test")
	peer := os.NewFile(uintptr(fds[1]), "kernel")
	t.Cleanup(func() { _ = h.Close(); _ = peer.Close() })
	return h, peer
}

func raise(t *testing.T, peer *os.File, ports ...Port) {
	b := make([]byte, 4*len(ports))
	for i, p := range ports {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(p))
	}
	_, err := peer.Write(b)
	require.NoError(t, err)
}

func TestDevWaitReadsPorts(t *testing.T) {
	h, peer := sockHandle(t)
	raise(t, peer, 5, 9, 300)
	ports := make([]Port, 2)
	n, err := h.Wait(context.Background(), ports)
	require.NoError(t, err)
	require.Equal(t, []Port{5, 9}, ports[:n])
	n, err = h.Wait(context.Background(), ports)
	require.NoError(t, err)
	require.Equal(t, []Port{300}, ports[:n])

	require.NoError(t, h.Unmask(9))
	b := make([]byte, 4)
	_, err = peer.Read(b)
	require.NoError(t, err)
	require.Equal(t, uint32(9), binary.LittleEndian.Uint32(b), "unmask writes the port")

	_, err = h.Wait(context.Background(), nil)
	require.ErrorIs(t, err, syscall.EINVAL)
	require.ErrorIs(t, h.Notify(1), syscall.ENOTTY, "ioctl reaches the fd")
}

func TestDevWaitContext(t *testing.T) {
	h, peer := sockHandle(t)
	ports := make([]Port, 4)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.Wait(ctx, ports)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 2*time.Second)

	// A long-lived ctx cancelled while parked.
	ctx2, cancel2 := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := h.Wait(ctx2, ports); errc <- err }()
	time.Sleep(10 * time.Millisecond)
	cancel2()
	require.ErrorIs(t, <-errc, context.Canceled)

	// A stale wake-up of the old ctx does not end a Wait on a live one.
	raise(t, peer, 7)
	n, err := h.Wait(context.Background(), ports)
	require.NoError(t, err)
	require.Equal(t, []Port{7}, ports[:n])
}

func TestDevWaitNoGoroutineOrAllocPerCall(t *testing.T) {
	h, peer := sockHandle(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ports := make([]Port, 4)
	one := []byte{3, 0, 0, 0}
	cycle := func() {
		if _, err := peer.Write(one); err != nil {
			t.Fatal(err)
		}
		if _, err := h.Wait(ctx, ports); err != nil {
			t.Fatal(err)
		}
		if err := h.Unmask(3); err != nil {
			t.Fatal(err)
		}
		var b [4]byte
		if _, err := peer.Read(b[:]); err != nil {
			t.Fatal(err)
		}
	}
	cycle()
	before := runtime.NumGoroutine()
	allocs := testing.AllocsPerRun(500, cycle)
	if !raceEnabled {
		require.Zero(t, allocs)
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), before)
}

func TestDevClose(t *testing.T) {
	h, _ := sockHandle(t)
	errc := make(chan error, 1)
	go func() { _, err := h.Wait(context.Background(), make([]Port, 1)); errc <- err }()
	time.Sleep(10 * time.Millisecond)
	require.NoError(t, h.Close())
	select {
	case err := <-errc:
		require.ErrorIs(t, err, ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Wait")
	}
	require.ErrorIs(t, h.Notify(1), ErrClosed)
	require.ErrorIs(t, h.Unmask(1), ErrClosed)
	_, err := h.BindUnbound(0)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, h.Close(), ErrClosed)
}

func TestOpenDevice(t *testing.T) {
	if _, err := os.Stat(DevicePath); err != nil {
		t.Skipf("needs Xen: %s: %v", DevicePath, err)
	}
	h, err := Open()
	require.NoError(t, err)
	require.NoError(t, h.(Resetter).Reset())
	require.NoError(t, h.Close())
}
