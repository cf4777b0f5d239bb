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

// devEcho stands in for the device behind a handle's socket: each unmask
// written to it raises the port again (the guest's next request).
func devEcho(t *testing.T, peer *os.File) (unmasks chan Port) {
	unmasks = make(chan Port, 16)
	go func() {
		defer close(unmasks)
		var b [4]byte
		for {
			if _, err := peer.Read(b[:]); err != nil {
				return
			}
			p := Port(binary.LittleEndian.Uint32(b[:]))
			unmasks <- p
			if _, err := peer.Write(b[:]); err != nil {
				return
			}
		}
	}()
	return unmasks
}

// TestDevUnmaskWait: on a handle with one port, whose last Wait delivered
// it, UnmaskWait unmasks it and parks without the read(2) that would find
// the device empty; the event raised after the unmask wakes it. With
// another port bound it reads first (that one may be pending). A context
// that ended still gets the port unmasked.
func TestDevUnmaskWait(t *testing.T) {
	h, peer := sockHandle(t)
	dh := h
	dh.bound.Store(1) // as after one BindInterdomain
	ctx := context.Background()
	ports := make([]Port, 4)
	raise(t, peer, 7)
	n, err := h.Wait(ctx, ports)
	require.NoError(t, err)
	require.Equal(t, []Port{7}, ports[:n])
	unmasks := devEcho(t, peer)

	cycle := func() {
		n, err := UnmaskWait(ctx, h, 7, ports)
		if err != nil || n != 1 || ports[0] != 7 {
			t.Fatalf("UnmaskWait: %v %v", ports[:n], err)
		}
		if p := <-unmasks; p != 7 {
			t.Fatalf("unmasked %d, want 7", p)
		}
	}
	before := dh.reads
	for range 3 {
		cycle()
	}
	require.Equal(t, 3, dh.reads-before, "read(2)s in 3 UnmaskWaits (only the one after each wake-up)")
	if a := testing.AllocsPerRun(50, cycle); !raceEnabled {
		require.Zero(t, a)
	}

	// Two ports bound: the other one's event, pending, is read at once.
	dh.bound.Store(2)
	raise(t, peer, 9)
	n, err = UnmaskWait(ctx, h, 7, ports)
	require.NoError(t, err)
	require.Equal(t, Port(9), ports[0], "the pending port (got %v)", ports[:n])
	require.Equal(t, Port(7), <-unmasks)
	if n == 1 {
		n, err = h.Wait(ctx, ports) // the echo of 7's unmask
		require.NoError(t, err)
		require.Equal(t, []Port{7}, ports[:n])
	}

	// One port again, delivered: a context that has ended returns at once,
	// with the port unmasked all the same.
	dh.bound.Store(1)
	require.NoError(t, h.Unmask(7))
	require.Equal(t, Port(7), <-unmasks)
	n, err = h.Wait(ctx, ports)
	require.NoError(t, err)
	require.Equal(t, []Port{7}, ports[:n])
	done, cancel := context.WithCancel(ctx)
	cancel()
	_, err = UnmaskWait(done, h, 7, ports)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, Port(7), <-unmasks, "unmasked though the context had ended")
	n, err = h.Wait(ctx, ports)
	require.NoError(t, err)
	require.Equal(t, []Port{7}, ports[:n])
}
