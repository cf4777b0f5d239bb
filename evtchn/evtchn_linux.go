package evtchn

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DevicePath is the event channel device.
const DevicePath = "/dev/xen/evtchn"

// ioctl numbers of include/uapi/xen/evtchn.h: _IOC(_IOC_NONE, 'E', nr, size).
const (
	ioctlBindInterdomain = 0x00084501 // nr 1, sizeof(struct ioctl_evtchn_bind_interdomain) = 8
	ioctlBindUnboundPort = 0x00044502 // nr 2, sizeof(struct ioctl_evtchn_bind_unbound_port) = 4
	ioctlUnbind          = 0x00044503 // nr 3, sizeof(struct ioctl_evtchn_unbind) = 4
	ioctlNotify          = 0x00044504 // nr 4, sizeof(struct ioctl_evtchn_notify) = 4
	ioctlReset           = 0x00004505 // nr 5, size 0
)

// Layouts (all fields unsigned int):
// struct ioctl_evtchn_bind_interdomain { remote_domain; remote_port; }
// struct ioctl_evtchn_bind_unbound_port { remote_domain; }
// struct ioctl_evtchn_unbind { port; }, struct ioctl_evtchn_notify { port; }
const (
	bindInterdomainRemoteDomain = 0
	bindInterdomainRemotePort   = 4
	bindInterdomainSize         = 8
	bindUnboundRemoteDomain     = 0
	bindUnboundSize             = 4
	portArgPort                 = 0 // unbind, notify
	portArgSize                 = 4
	portSize                    = 4 // evtchn_port_t, as read from and written to the device
)

// maxRead is how many pending ports one Wait reads at most (the device
// returns at most a page).
const maxRead = 64

// Resetter is implemented by handles of the device: IOCTL_EVTCHN_RESET
// clears the handle's pending-event ring and its overflow error (a Wait
// error wrapping syscall.EFBIG).
type Resetter interface{ Reset() error }

// devHandle is one open of /dev/xen/evtchn. The fd is non-blocking and in
// the Go poller: Wait parks in the runtime, not in a goroutine of its own,
// and is woken by ctx through a read deadline.
type devHandle struct {
	mu     sync.RWMutex // ioctls and writes hold it for reading, Close for writing
	fd     int
	f      *os.File
	closed bool

	rmu     sync.Mutex // one Wait at a time; guards rbuf, the read state and the ctx watch
	rbuf    [maxRead * portSize]byte
	rc      syscall.RawConn
	readFn  func(fd uintptr) bool // h.rawRead, bound once: Wait allocates nothing
	rwant   int                   // rawRead's request and results
	rn      int
	rerr    error
	stale   bool            // a read deadline may be set: clear it before reading
	done    <-chan struct{} // Done of the ctx being watched
	unwatch func() bool

	wmu  sync.Mutex
	wbuf [portSize]byte

	// bound counts the handle's ports. quiet (under rmu) says that
	// nothing can be pending but quietPort's next event: the handle has
	// one port, and the last read took its one event, which masked it.
	// UnmaskWait then unmasks it just before parking, without the read
	// that would find the device empty.
	bound     atomic.Int32
	quiet     bool
	quietPort Port
	unmaskFn  func(fd uintptr) bool // h.rawUnmaskRead, bound once
	unmaskDue bool                  // rawUnmaskRead's first call unmasks
	ubuf      [portSize]byte
	reads     int // read(2)s of pending ports made (tests)
}

// aLongTimeAgo is a read deadline in the past: it wakes a parked Wait.
var aLongTimeAgo = time.Unix(1, 0)

// Open opens /dev/xen/evtchn.
func Open() (Handle, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("evtchn: open %s: %w", DevicePath, err)
	}
	return newDevHandle(fd, DevicePath), nil
}

// newDevHandle wraps a non-blocking fd (the device, or a socket in tests).
func newDevHandle(fd int, name string) *devHandle {
	h := &devHandle{fd: fd, f: os.NewFile(uintptr(fd), name)}
	h.readFn = h.rawRead
	h.unmaskFn = h.rawUnmaskRead
	if rc, err := h.f.SyscallConn(); err == nil {
		h.rc = rc
	}
	return h
}

// rawRead is one read of pending ports, entered with RawSyscall (as Notify
// and Unmask): the device copies from its ring and never sleeps, and a
// plain Syscall's entersyscall would hand the P off under a slow hypervisor
// and wake the runtime's sysmon thread after every idle spell (one futex
// wake and two context switches per request at queue depth 1). It returns
// false on EAGAIN, so RawConn.Read parks in the poller.
func (h *devHandle) rawRead(fd uintptr) bool {
	h.reads++
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&h.rbuf[0])), uintptr(h.rwant))
	switch e {
	case unix.EAGAIN:
		return false
	case 0:
		h.rn, h.rerr = int(n), nil
	default:
		h.rn, h.rerr = 0, e
	}
	return true
}

// rawUnmaskRead is rawRead after, on its first call, the unmask of
// quietPort, with which it parks without reading: the port was masked
// since the read that delivered it, and the handle has no other, so
// nothing can be pending before the unmask; an event after it wakes the
// poller (the device wakes readers when its ring goes from empty to one),
// and the RawConn's readiness, reset when Read began, is only set by
// events from now on.
func (h *devHandle) rawUnmaskRead(fd uintptr) bool {
	if !h.unmaskDue {
		return h.rawRead(fd)
	}
	h.unmaskDue = false
	// Written here on fd, which the RawConn keeps open meanwhile, not
	// with Unmask: Close holds mu while it waits for this Read to end.
	binary.LittleEndian.PutUint32(h.ubuf[:], uint32(h.quietPort))
	if _, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&h.ubuf[0])), uintptr(len(h.ubuf))); e != 0 {
		h.rn, h.rerr = 0, e
		return true
	}
	return false
}

func (h *devHandle) ioctl(op string, req uintptr, arg unsafe.Pointer) (Port, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return 0, ErrClosed
	}
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(h.fd), req, uintptr(arg))
	if e != 0 {
		return 0, fmt.Errorf("evtchn: %s: %w", op, e)
	}
	return Port(r), nil
}

func (h *devHandle) BindInterdomain(remoteDom uint16, remotePort Port) (Port, error) {
	var b [bindInterdomainSize]byte
	binary.LittleEndian.PutUint32(b[bindInterdomainRemoteDomain:], uint32(remoteDom))
	binary.LittleEndian.PutUint32(b[bindInterdomainRemotePort:], uint32(remotePort))
	p, err := h.ioctl("bind interdomain", ioctlBindInterdomain, unsafe.Pointer(&b[0]))
	if err != nil {
		return 0, fmt.Errorf("%w (d%d port %d)", err, remoteDom, remotePort)
	}
	h.bound.Add(1)
	return p, nil
}

func (h *devHandle) BindUnbound(remoteDom uint16) (Port, error) {
	var b [bindUnboundSize]byte
	binary.LittleEndian.PutUint32(b[bindUnboundRemoteDomain:], uint32(remoteDom))
	p, err := h.ioctl("bind unbound", ioctlBindUnboundPort, unsafe.Pointer(&b[0]))
	if err != nil {
		return 0, fmt.Errorf("%w (for d%d)", err, remoteDom)
	}
	h.bound.Add(1)
	return p, nil
}

func (h *devHandle) portOp(op string, req uintptr, port Port) error {
	var b [portArgSize]byte
	binary.LittleEndian.PutUint32(b[portArgPort:], uint32(port))
	_, err := h.ioctl(op, req, unsafe.Pointer(&b[0]))
	return err
}

// Notify is IOCTL_EVTCHN_NOTIFY, entered with RawSyscall: one hypercall
// that never sleeps, on the data path after every batch; a plain Syscall
// lets Go's runtime hand the P to another thread when, under emulation,
// it takes longer than 20 µs.
func (h *devHandle) Notify(local Port) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return ErrClosed
	}
	var b [portArgSize]byte
	binary.LittleEndian.PutUint32(b[portArgPort:], uint32(local))
	if _, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(h.fd), ioctlNotify, uintptr(unsafe.Pointer(&b[0]))); e != 0 {
		return fmt.Errorf("evtchn: notify: %w", e)
	}
	return nil
}
func (h *devHandle) Unbind(local Port) error {
	if err := h.portOp("unbind", ioctlUnbind, local); err != nil {
		return err
	}
	h.bound.Add(-1)
	return nil
}

// Reset is IOCTL_EVTCHN_RESET.
func (h *devHandle) Reset() error {
	_, err := h.ioctl("reset", ioctlReset, nil)
	return err
}

// Unmask writes the port to the device, which re-enables its delivery.
func (h *devHandle) Unmask(local Port) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return ErrClosed
	}
	h.wmu.Lock()
	defer h.wmu.Unlock()
	binary.LittleEndian.PutUint32(h.wbuf[:], uint32(local))
	// RawSyscall, as Notify: the write unmasks with one hypercall at most.
	if _, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(h.fd), uintptr(unsafe.Pointer(&h.wbuf[0])), uintptr(len(h.wbuf))); e != 0 {
		return fmt.Errorf("evtchn: unmask port %d: %w", local, e)
	}
	return nil
}

// watchLocked arranges for ctx's end to wake a parked read. The
// registration is kept while callers pass contexts with the same Done
// channel (a queue loop passes the same ctx every time), so the steady state
// allocates nothing.
func (h *devHandle) watchLocked(ctx context.Context) {
	done := ctx.Done()
	if done == h.done {
		return
	}
	h.unwatchLocked()
	h.done = done
	h.stale = true // the previous ctx's AfterFunc may have set a deadline
	if done != nil {
		f := h.f
		h.unwatch = context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(aLongTimeAgo) })
	}
}

func (h *devHandle) unwatchLocked() {
	if h.unwatch != nil {
		h.unwatch()
		h.unwatch = nil
	}
	h.done = nil
}

func (h *devHandle) isClosed() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.closed
}

// Wait reads pending ports (u32 each) from the device; the kernel masks each
// port it delivers until Unmask. Only one Wait runs at a time per handle.
func (h *devHandle) Wait(ctx context.Context, ports []Port) (int, error) {
	if len(ports) == 0 {
		return 0, fmt.Errorf("evtchn: wait with no room for ports: %w", syscall.EINVAL)
	}
	h.rmu.Lock()
	defer h.rmu.Unlock()
	h.quiet = false
	return h.waitLocked(ctx, ports)
}

// UnmaskWait implements UnmaskWaiter. When the handle is quiet (its one
// port delivered by the last Wait, not unmasked since) it saves a system
// call: the unmask is made inside the poller's read loop, just before it
// parks, instead of a read(2) that would find the device empty (under
// the lab's TCG a PV domain's system call costs a few hundred µs of CPU).
// Otherwise it is Unmask then Wait.
func (h *devHandle) UnmaskWait(ctx context.Context, local Port, ports []Port) (int, error) {
	if len(ports) == 0 {
		return 0, fmt.Errorf("evtchn: wait with no room for ports: %w", syscall.EINVAL)
	}
	h.rmu.Lock()
	defer h.rmu.Unlock()
	if !h.quiet || local != h.quietPort || h.bound.Load() != 1 || h.rc == nil {
		h.quiet = false
		if err := h.Unmask(local); err != nil {
			return 0, err
		}
		return h.waitLocked(ctx, ports)
	}
	h.quiet = false
	h.unmaskDue = true
	defer func() {
		if h.unmaskDue { // returned before parking: unmask all the same
			h.unmaskDue = false
			h.Unmask(local)
		}
	}()
	return h.waitLocked(ctx, ports)
}

func (h *devHandle) waitLocked(ctx context.Context, ports []Port) (int, error) {
	if h.isClosed() {
		return 0, ErrClosed
	}
	h.watchLocked(ctx)
	want := min(len(ports), maxRead) * portSize
	for {
		// Clear a deadline a previous ctx left (only then: clearing
		// costs a poller update per wait), then look at ctx: its
		// AfterFunc runs only after Err is set, so an end from here on
		// sets the deadline and wakes the read.
		if h.stale {
			if err := h.f.SetReadDeadline(time.Time{}); err != nil {
				return 0, h.readErr(err)
			}
			h.stale = false
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		n, err := h.read(want)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				h.stale = true
				continue // ctx ended (checked above) or a stale wake-up
			}
			return 0, h.readErr(err)
		}
		n = h.decode(ports, n)
		if n > 0 {
			h.quiet = n == 1 && h.bound.Load() == 1
			h.quietPort = ports[0]
			return n, nil
		}
	}
}

// PollFD returns the device's descriptor (Poller): it polls readable while
// a port is pending. The handle keeps owning it.
func (h *devHandle) PollFD() (int, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return -1, ErrClosed
	}
	return h.fd, nil
}

// ReadPending reads the pending ports without blocking (Poller), with
// rawRead.
func (h *devHandle) ReadPending(ports []Port) (int, error) {
	if len(ports) == 0 {
		return 0, fmt.Errorf("evtchn: read with no room for ports: %w", syscall.EINVAL)
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return 0, ErrClosed
	}
	h.rmu.Lock()
	defer h.rmu.Unlock()
	h.quiet = false
	h.rwant = min(len(ports), maxRead) * portSize
	if !h.rawRead(uintptr(h.fd)) {
		return 0, nil // EAGAIN: none pending
	}
	if h.rerr != nil {
		return 0, h.readErr(os.NewSyscallError("read", h.rerr))
	}
	return h.decode(ports, h.rn), nil
}

// decode fills ports from the first n bytes read into rbuf and returns how
// many ports they hold.
func (h *devHandle) decode(ports []Port, n int) int {
	n /= portSize
	for i := range n {
		ports[i] = Port(binary.LittleEndian.Uint32(h.rbuf[i*portSize:]))
	}
	return n
}

// read reads up to want bytes of pending ports into rbuf, parking in the
// poller until some are pending (or the read deadline passes).
func (h *devHandle) read(want int) (int, error) {
	if h.rc == nil {
		return h.f.Read(h.rbuf[:want])
	}
	h.rwant, h.rn, h.rerr = want, 0, nil
	fn := h.readFn
	if h.unmaskDue {
		fn = h.unmaskFn
	}
	if err := h.rc.Read(fn); err != nil {
		if h.isClosed() {
			// RawConn reports a closed file as internal/poll's
			// ErrFileClosing, which os.File.Read maps to os.ErrClosed.
			return 0, os.ErrClosed
		}
		return 0, err
	}
	if h.rerr != nil {
		return 0, os.NewSyscallError("read", h.rerr)
	}
	return h.rn, nil
}

func (h *devHandle) readErr(err error) error {
	if errors.Is(err, os.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("evtchn: read pending ports: %w", err)
}

// Close unbinds every port of the handle (the device does on release) and
// wakes a parked Wait with ErrClosed.
func (h *devHandle) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrClosed
	}
	h.closed = true
	err := h.f.Close() // wakes a parked Wait, which then releases rmu
	h.mu.Unlock()
	h.rmu.Lock()
	h.unwatchLocked()
	h.rmu.Unlock()
	if err != nil {
		return fmt.Errorf("evtchn: close: %w", err)
	}
	return nil
}
