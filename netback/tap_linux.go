//go:build linux

package netback

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ioctl numbers and flags of /dev/net/tun (include/uapi/linux/if_tun.h,
// x86_64 / generic _IOW encoding), pinned by TestTunABI.
const (
	tunSetIff       = 0x400454ca // TUNSETIFF       _IOW('T', 202, int)
	tunSetOffload   = 0x400454d0 // TUNSETOFFLOAD   _IOW('T', 208, unsigned int)
	tunSetVnetHdrSz = 0x400454d8 // TUNSETVNETHDRSZ _IOW('T', 216, int)
	tunSetVnetLE    = 0x400454dc // TUNSETVNETLE    _IOW('T', 220, int)
	tunSetCarrier   = 0x400454e2 // TUNSETCARRIER   _IOW('T', 226, int)
	iffTap          = 0x0002
	iffNoPI         = 0x1000
	iffVnetHdr      = 0x4000
	iffMultiQueue   = 0x0100
	iffTunExcl      = 0x8000 // when creating: fail if the device exists
	tunDevice       = "/dev/net/tun"
	ifreqSize       = 40 // struct ifreq on 64-bit Linux
	offIfreqName    = 0  // char ifr_name[IFNAMSIZ]
	offIfreqFlags   = 16 // short ifr_flags (first union member)
	ifNameSize      = 16 // IFNAMSIZ
	tapFlags        = iffTap | iffNoPI | iffVnetHdr | iffMultiQueue
	vifMAC          = "fe:ff:ff:ff:ff:ff" // as Linux netback: never the bridge's lowest MAC
)

// LinuxHost creates real TAP devices and bridges them through netlink.
// Needs CAP_NET_ADMIN.
type LinuxHost struct{}

var _ Host = LinuxHost{}

func ioctlPtr(fd uintptr, req uintptr, p unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(p)); e != 0 {
		return e
	}
	return nil
}

// openTapQueue opens one queue of the multi-queue TAP name.
func openTapQueue(name string, first bool) (*os.File, error) {
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", tunDevice, err)
	}
	var ifr [ifreqSize]byte
	copy(ifr[offIfreqName:offIfreqName+ifNameSize-1], name)
	flags := uint16(tapFlags)
	if first {
		// Never attach to someone else's TAP of the same (cut) name.
		flags |= iffTunExcl
	}
	binary.NativeEndian.PutUint16(ifr[offIfreqFlags:], flags)
	if err := ioctlPtr(uintptr(fd), tunSetIff, unsafe.Pointer(&ifr[0])); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	if first {
		sz := int32(VnetHdrSize)
		if err := ioctlPtr(uintptr(fd), tunSetVnetHdrSz, unsafe.Pointer(&sz)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("TUNSETVNETHDRSZ %s: %w", name, err)
		}
		le := int32(1)
		if err := ioctlPtr(uintptr(fd), tunSetVnetLE, unsafe.Pointer(&le)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("TUNSETVNETLE %s: %w", name, err)
		}
	}
	return os.NewFile(uintptr(fd), tunDevice), nil // non-blocking: served by the netpoller
}

// CreateTap implements Host.
func (LinuxHost) CreateTap(name, bridge string) (Tap, error) {
	f, err := openTapQueue(name, true)
	if err != nil {
		return nil, fmt.Errorf("netback: create tap: %w", err)
	}
	t := &linuxTap{name: name, files: []*os.File{f}}
	t.queues = []*linuxTapQueue{{f: f}}
	if err := t.setOffloadLocked(0); err != nil {
		t.Close()
		return nil, err
	}
	if err := t.setCarrierLocked(false); err != nil { // until a guest connects
		t.Close()
		return nil, err
	}
	if err := wireTap(name, bridge); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func wireTap(name, bridge string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("netback: tap %s: %w", name, err)
	}
	if mac, err := net.ParseMAC(vifMAC); err == nil {
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return fmt.Errorf("netback: tap %s: set mac: %w", name, err)
		}
	}
	if bridge != "" {
		if err := EnsureBridge(bridge, ""); err != nil {
			return err
		}
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("netback: bridge %s: %w", bridge, err)
		}
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("netback: enslave %s to %s: %w", name, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("netback: tap %s up: %w", name, err)
	}
	return nil
}

// EnsureBridge creates the Linux bridge name if it does not exist, sets it
// up, and, if uplink is not empty, enslaves uplink (the passed-through NIC)
// to it and sets it up. It is idempotent.
func EnsureBridge(name, uplink string) error {
	br, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("netback: bridge %s: %w", name, err)
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("netback: create bridge %s: %w", name, err)
		}
		if br, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("netback: bridge %s: %w", name, err)
		}
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("netback: %s is a %s, not a bridge", name, br.Type())
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("netback: bridge %s up: %w", name, err)
	}
	if uplink == "" {
		return nil
	}
	up, err := netlink.LinkByName(uplink)
	if err != nil {
		return fmt.Errorf("netback: uplink %s: %w", uplink, err)
	}
	if up.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(up, br); err != nil {
			return fmt.Errorf("netback: enslave %s to %s: %w", uplink, name, err)
		}
	}
	if err := netlink.LinkSetUp(up); err != nil {
		return fmt.Errorf("netback: uplink %s up: %w", uplink, err)
	}
	return nil
}

type linuxTap struct {
	name   string
	mu     sync.Mutex
	files  []*os.File
	queues []*linuxTapQueue
	closed bool
	// noCarrier: the kernel has no TUNSETCARRIER; SetCarrier is a no-op.
	noCarrier bool
}

func (t *linuxTap) Name() string { return t.name }

func (t *linuxTap) SetQueues(n int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrTapClosed
	}
	if n < 1 {
		n = 1
	}
	for len(t.queues) < n {
		f, err := openTapQueue(t.name, false)
		if err != nil {
			return fmt.Errorf("netback: tap %s queue %d: %w", t.name, len(t.queues), err)
		}
		t.queues = append(t.queues, &linuxTapQueue{f: f})
	}
	for len(t.queues) > n {
		q := t.queues[len(t.queues)-1]
		q.f.Close() // closing a queue's fd detaches it
		t.queues = t.queues[:len(t.queues)-1]
	}
	return nil
}

func (t *linuxTap) Queue(i int) TapQueue {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i < 0 || i >= len(t.queues) {
		return closedQueue{}
	}
	return t.queues[i]
}

func (t *linuxTap) SetOffload(flags uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.setOffloadLocked(flags)
}

func (t *linuxTap) setOffloadLocked(flags uint32) error {
	if t.closed {
		return ErrTapClosed
	}
	rc, err := t.queues[0].f.SyscallConn()
	if err != nil {
		return fmt.Errorf("netback: tap %s: %w", t.name, err)
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		// TUNSETOFFLOAD takes the flags by value.
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, tunSetOffload, uintptr(flags)); e != 0 {
			ioErr = e
		}
	}); err != nil {
		return fmt.Errorf("netback: tap %s: %w", t.name, err)
	}
	if ioErr != nil {
		return fmt.Errorf("netback: tap %s: TUNSETOFFLOAD %#x: %w", t.name, flags, ioErr)
	}
	return nil
}

func (t *linuxTap) SetCarrier(on bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.setCarrierLocked(on)
}

func (t *linuxTap) setCarrierLocked(on bool) error {
	if t.closed {
		return ErrTapClosed
	}
	if t.noCarrier {
		return nil
	}
	rc, err := t.queues[0].f.SyscallConn()
	if err != nil {
		return fmt.Errorf("netback: tap %s: %w", t.name, err)
	}
	v := int32(0)
	if on {
		v = 1
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) { ioErr = ioctlPtr(fd, tunSetCarrier, unsafe.Pointer(&v)) }); err != nil {
		return fmt.Errorf("netback: tap %s: %w", t.name, err)
	}
	if ioErr == unix.ENOTTY || ioErr == unix.EINVAL {
		t.noCarrier = true // a kernel before 5.0: the carrier just stays on
		return nil
	}
	if ioErr != nil {
		return fmt.Errorf("netback: tap %s: TUNSETCARRIER %v: %w", t.name, on, ioErr)
	}
	return nil
}

// Close closes every queue: a TAP that is not persistent disappears with
// its last file descriptor.
func (t *linuxTap) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	for _, q := range t.queues {
		errs = append(errs, q.f.Close())
	}
	t.queues = nil
	return errors.Join(errs...)
}

type linuxTapQueue struct {
	f *os.File

	// TryRead state: the raw conn and its read callback, made once so a
	// non-blocking read allocates nothing.
	rc     syscall.RawConn
	tryFn  func(fd uintptr) bool
	tryBuf []byte
	tryN   int
	tryErr error

	mu   sync.Mutex      // orders deadline changes
	ctx  context.Context // the context reads are currently bound to
	stop func() bool
}

// Read implements TapQueue. A context ending interrupts a blocked read by
// moving the read deadline into the past; binding a new context clears it.
// One reader at a time, so this allocates once per serving context.
func (q *linuxTapQueue) Read(ctx context.Context, b []byte) (int, error) {
	if ctx != q.ctx {
		q.mu.Lock()
		if q.stop != nil {
			q.stop()
		}
		q.ctx = ctx
		q.f.SetReadDeadline(time.Time{})
		q.mu.Unlock()
		q.stop = context.AfterFunc(ctx, func() {
			q.mu.Lock()
			if q.ctx == ctx {
				q.f.SetReadDeadline(time.Unix(1, 0))
			}
			q.mu.Unlock()
		})
	}
	for {
		n, err := q.f.Read(b)
		if err == nil {
			return n, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue // a deadline set for an earlier context
		case errors.Is(err, os.ErrClosed):
			return 0, ErrTapClosed
		}
		return 0, fmt.Errorf("netback: tap read: %w", err)
	}
}

// TryRead implements tryReader: one read(2) on the non-blocking fd.
func (q *linuxTapQueue) TryRead(b []byte) (int, bool, error) {
	if q.rc == nil {
		rc, err := q.f.SyscallConn()
		if err != nil {
			return 0, false, fmt.Errorf("netback: tap: %w", err)
		}
		q.rc = rc
		q.tryFn = func(fd uintptr) bool {
			q.tryN, q.tryErr = unix.Read(int(fd), q.tryBuf)
			return true // never wait for readiness
		}
	}
	q.tryBuf = b
	err := q.rc.Read(q.tryFn)
	q.tryBuf = nil
	switch {
	case err != nil:
		if errors.Is(err, os.ErrClosed) {
			return 0, false, ErrTapClosed
		}
		return 0, false, fmt.Errorf("netback: tap read: %w", err)
	case q.tryErr == unix.EAGAIN || q.tryErr == unix.EINTR:
		return 0, false, nil
	case q.tryErr != nil:
		return 0, false, fmt.Errorf("netback: tap read: %w", q.tryErr)
	}
	return q.tryN, true, nil
}

func (q *linuxTapQueue) Write(b []byte) (int, error) {
	n, err := q.f.Write(b)
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return 0, ErrTapClosed
		}
		return n, fmt.Errorf("netback: tap write: %w", err)
	}
	return n, nil
}

type closedQueue struct{}

func (closedQueue) Read(context.Context, []byte) (int, error) { return 0, ErrTapClosed }
func (closedQueue) Write([]byte) (int, error)                 { return 0, ErrTapClosed }
