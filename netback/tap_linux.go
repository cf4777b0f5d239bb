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

	"drvdom/internal/uring"
)

// ioctl numbers and flags of /dev/net/tun (include/uapi/linux/if_tun.h,
// x86_64 / generic _IOW encoding), pinned by TestTunABI.
const (
	tunSetIff       = 0x400454ca // TUNSETIFF       _IOW('T', 202, int)
	tunSetOffload   = 0x400454d0 // TUNSETOFFLOAD   _IOW('T', 208, unsigned int)
	tunSetVnetHdrSz = 0x400454d8 // TUNSETVNETHDRSZ _IOW('T', 216, int)
	tunSetVnetLE    = 0x400454dc // TUNSETVNETLE    _IOW('T', 220, int)
	tunSetCarrier   = 0x400454e2 // TUNSETCARRIER   _IOW('T', 226, int)
	tunGetIff       = 0x800454d2 // TUNGETIFF       _IOR('T', 210, unsigned int)
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
type LinuxHost struct {
	// Store, if set, keeps a copy of every TAP queue's file descriptor
	// outside this process (drvdomd's supervisor), so a TAP outlives a
	// crashed worker: it stays in the bridge and queues the frames that
	// arrive until the next worker takes the queues back (CreateTap).
	Store TapStore
}

// TapStore keeps TAP queue files across the restarts of the process that
// serves them. A TAP is not persistent: it goes with the last open queue,
// so a store that holds the queues keeps it, and Release lets it go.
type TapStore interface {
	// Take returns the queue files of the TAP name that an earlier process
	// left in the store, queue 0 first, or nil. The store keeps its copies.
	Take(name string) []*os.File
	// Keep stores a copy of f as queue q of the TAP name.
	Keep(name string, q int, f *os.File)
	// Release drops the store's copies of name's queues q >= from.
	Release(name string, from int)
}

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

// CreateTap implements Host. A TAP whose queues the Store kept is taken
// back as it is: in its bridge, carrier and queued frames untouched.
func (h LinuxHost) CreateTap(name, bridge string) (Tap, error) {
	if h.Store != nil {
		if t, err := h.adoptTap(name, bridge); t != nil || err != nil {
			return t, err
		}
	}
	f, err := openTapQueue(name, true)
	if err != nil {
		return nil, fmt.Errorf("netback: create tap: %w", err)
	}
	t := &linuxTap{name: name, store: h.Store}
	t.queues = []*linuxTapQueue{newTapQueue(f)}
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
	if h.Store != nil {
		h.Store.Keep(name, 0, f)
	}
	return t, nil
}

// adoptTap takes the TAP name back from the Store: nil, nil if the store
// has none. Every file must be a queue of a TAP of that name (TUNGETIFF);
// otherwise the store's entry is dropped and a new TAP created.
func (h LinuxHost) adoptTap(name, bridge string) (Tap, error) {
	files := h.Store.Take(name)
	if len(files) == 0 {
		return nil, nil
	}
	t := &linuxTap{name: name, store: h.Store}
	for _, f := range files {
		got, flags, err := tapIdentity(f)
		if err != nil || got != name || flags&iffTap == 0 {
			for _, f := range files {
				f.Close()
			}
			// Not (or no longer) a queue of this TAP: the old TAP, if
			// any, goes with the store's copies and a new one is made
			// under the same name.
			h.Store.Release(name, 0)
			return nil, nil
		}
		t.queues = append(t.queues, newTapQueue(f))
	}
	if err := wireTap(name, bridge); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// tapIdentity asks a TUN/TAP file which device it is a queue of.
func tapIdentity(f *os.File) (string, uint16, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return "", 0, err
	}
	var ifr [ifreqSize]byte
	var ioErr error
	if err := rc.Control(func(fd uintptr) { ioErr = ioctlPtr(fd, tunGetIff, unsafe.Pointer(&ifr[0])) }); err != nil {
		return "", 0, err
	}
	if ioErr != nil {
		return "", 0, fmt.Errorf("TUNGETIFF: %w", ioErr)
	}
	n := ifr[offIfreqName : offIfreqName+ifNameSize]
	end := 0
	for end < len(n) && n[end] != 0 {
		end++
	}
	return string(n[:end]), binary.NativeEndian.Uint16(ifr[offIfreqFlags:]), nil
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
	store  TapStore // nil: none
	mu     sync.Mutex
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
		if t.store != nil {
			t.store.Keep(t.name, len(t.queues), f)
		}
		t.queues = append(t.queues, newTapQueue(f))
	}
	if len(t.queues) > n && t.store != nil {
		t.store.Release(t.name, n)
	}
	for len(t.queues) > n {
		q := t.queues[len(t.queues)-1]
		q.close() // closing a queue's last fd detaches it
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

// Close closes every queue and drops the store's copies: a TAP that is not
// persistent disappears with its last file descriptor.
func (t *linuxTap) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if t.store != nil {
		t.store.Release(t.name, 0)
	}
	var errs []error
	for _, q := range t.queues {
		errs = append(errs, q.close())
	}
	t.queues = nil
	return errors.Join(errs...)
}

type linuxTapQueue struct {
	f *os.File

	// TryRead state: the raw conn and its read callback, made once (by
	// newTapQueue, before the queue's two goroutines share it) so a
	// non-blocking read allocates nothing.
	rc     syscall.RawConn
	rcErr  error
	tryFn  func(fd uintptr) bool
	readFn func(fd uintptr) bool // Read's: as tryFn, but waits on EAGAIN
	tryBuf []byte
	tryN   int
	tryErr syscall.Errno

	// Write state, made once like TryRead's.
	wFn  func(fd uintptr) bool
	wBuf []byte
	wN   int
	wErr syscall.Errno

	// WriteBatch state, owned by the one goroutine that writes (the
	// queue's tx): its io_uring, made at the first batch (nil and
	// batchErr set if io_uring is refused: frames then go one by one).
	batch    *uring.Ring
	batchErr error
	batchSeq uint32
	batchIov []unix.Iovec
	batchFn  func(fd uintptr)
	bFrames  [][]byte
	bErrs    []error

	// ReadBatch state, owned by the one goroutine that reads (the
	// queue's rx): as WriteBatch's, with the callback's inputs and
	// outputs.
	rRing    *uring.Ring
	rRingErr error
	rSeq     uint32
	rIov     []unix.Iovec
	rFn      func(fd uintptr) bool
	rBufs    [][]byte
	rNs      []int
	rK       int
	rErr     error

	mu   sync.Mutex      // orders deadline changes
	ctx  context.Context // the context reads are currently bound to
	stop func() bool
}

// newTapQueue wraps a queue's file and makes its raw-syscall callbacks.
func newTapQueue(f *os.File) *linuxTapQueue {
	q := &linuxTapQueue{f: f}
	q.rc, q.rcErr = f.SyscallConn()
	q.tryFn = func(fd uintptr) bool {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&q.tryBuf[0])), uintptr(len(q.tryBuf)))
		q.tryN, q.tryErr = int(n), e
		return true // never wait for readiness
	}
	q.readFn = func(fd uintptr) bool {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&q.tryBuf[0])), uintptr(len(q.tryBuf)))
		q.tryN, q.tryErr = int(n), e
		return e != unix.EAGAIN // nothing queued: wait in the poller
	}
	q.wFn = func(fd uintptr) bool {
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&q.wBuf[0])), uintptr(len(q.wBuf)))
		q.wN, q.wErr = int(n), e
		return e != unix.EAGAIN // a full queue: wait until writable
	}
	return q
}

// Read implements TapQueue. A context ending interrupts a blocked read by
// moving the read deadline into the past; binding a new context clears it.
// One reader at a time, so this allocates once per serving context.
func (q *linuxTapQueue) Read(ctx context.Context, b []byte) (int, error) {
	q.bind(ctx)
	for {
		n, err := q.read(b)
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

// bind makes ctx the context reads are bound to: its end moves the read
// deadline into the past, which interrupts a read blocked in the poller.
func (q *linuxTapQueue) bind(ctx context.Context) {
	if ctx == q.ctx {
		return
	}
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

// read is one blocking read of a frame: read(2) entered with RawSyscall
// through the raw conn (parking in the poller while the TAP is empty), as
// TryRead and Write. os.File.Read enters through entersyscall, which wakes
// Go's sysmon after every idle spell, and sysmon then retakes the P from
// every system call that outlasts its 20 µs tick (all of them in the lab's
// driver domain): two thread switches and a futex wake per wake-up (see
// evtchn's Wait, where the same change halved the CPU per request).
func (q *linuxTapQueue) read(b []byte) (int, error) {
	if q.rcErr != nil || len(b) == 0 {
		return q.f.Read(b)
	}
	for {
		q.tryBuf = b
		err := q.rc.Read(q.readFn)
		q.tryBuf = nil
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return 0, err
		case err != nil:
			// A closed file is internal/poll's ErrFileClosing here;
			// os.File.Read reports it as os.ErrClosed, which Read maps.
			return q.f.Read(b)
		case q.tryErr == unix.EINTR:
			continue
		case q.tryErr != 0:
			return 0, q.tryErr
		}
		return q.tryN, nil
	}
}

// TryRead implements tryReader: one read(2) on the non-blocking fd, by
// RawSyscall as Write.
func (q *linuxTapQueue) TryRead(b []byte) (int, bool, error) {
	if q.rcErr != nil {
		return 0, false, fmt.Errorf("netback: tap: %w", q.rcErr)
	}
	if len(b) == 0 {
		return 0, false, nil
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
	case q.tryErr != 0:
		return 0, false, fmt.Errorf("netback: tap read: %w", q.tryErr)
	}
	return q.tryN, true, nil
}

// Write implements TapQueue: one frame, one write(2). The write enters the
// kernel with RawSyscall: it never sleeps on a non-blocking TAP (a full
// queue is EAGAIN, then the netpoller waits), but the kernel runs the
// frame through the bridge and the NIC's driver inside it, which under
// emulation often takes longer than the 20 µs after which Go's runtime
// hands the goroutine's P to another thread: futex wake-ups and thread
// switches for nothing on a one-vCPU driver domain.
func (q *linuxTapQueue) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if q.rcErr != nil {
		return 0, fmt.Errorf("netback: tap: %w", q.rcErr)
	}
	q.wBuf = b
	err := q.rc.Write(q.wFn)
	q.wBuf = nil
	switch {
	case err != nil:
		if errors.Is(err, os.ErrClosed) {
			return 0, ErrTapClosed
		}
		return 0, fmt.Errorf("netback: tap write: %w", err)
	case q.wErr != 0:
		return 0, fmt.Errorf("netback: tap write: %w", q.wErr)
	}
	return q.wN, nil
}

// lazyRing makes *r, an io_uring of the queue's with entries entries, the
// first time a batch needs it, and reports whether this call tried (the
// caller then makes the ring's other state); a refusal stays in *errp (and
// *r nil: the queue goes one frame per system call).
func (q *linuxTapQueue) lazyRing(r **uring.Ring, errp *error, entries uint32) bool {
	if *r != nil || *errp != nil || q.rcErr != nil {
		return false
	}
	*r, *errp = uring.New(entries, false)
	if *errp != nil {
		*r = nil
	}
	return true
}

// tapBatchEntries is the size of a queue's WriteBatch io_uring: larger
// batches go in chunks of this many frames.
const tapBatchEntries = 64

// WriteBatch implements BatchWriter: one io_uring_enter submits a writev
// per frame, which the TAP completes inside it (through the bridge and the
// NIC's driver, as a write(2) does), instead of one write(2) per frame: a
// system call of a PV domain traps to Xen and back, and under the lab's
// TCG that costs more than the frame itself (the tx profile of stop 18:
// TAP writes 40-54% of drvdomd's CPU at about 6 frames per batch).
func (q *linuxTapQueue) WriteBatch(frames [][]byte, errs []error) {
	if q.lazyRing(&q.batch, &q.batchErr, tapBatchEntries) {
		q.batchIov = make([]unix.Iovec, tapBatchEntries)
		q.batchFn = q.writeChunk
	}
	if q.batch == nil {
		for i, f := range frames {
			_, errs[i] = q.Write(f)
		}
		return
	}
	for len(frames) > 0 {
		n := min(len(frames), tapBatchEntries)
		q.bFrames, q.bErrs = frames[:n], errs[:n]
		if q.rc.Control(q.batchFn) != nil {
			// Control fails only for a closed file (internal/poll's
			// ErrFileClosing, not os.ErrClosed).
			for i := range q.bErrs {
				q.bErrs[i] = ErrTapClosed
			}
		}
		frames, errs = frames[n:], errs[n:]
	}
	q.bFrames, q.bErrs = nil, nil
}

// writeChunk submits q.bFrames (at most tapBatchEntries) on fd and waits
// for their completions; Control keeps fd open meanwhile. A completion's
// user_data is the chunk's sequence number and the frame's index, so one
// left over from a chunk whose wait failed is never taken for another's.
func (q *linuxTapQueue) writeChunk(fd uintptr) {
	u, frames, errs := q.batch, q.bFrames, q.bErrs
	q.batchSeq++
	seq := uint64(q.batchSeq) << 32
	queued := 0
	for i, f := range frames {
		errs[i] = nil
		if len(f) == 0 {
			continue
		}
		q.batchIov[i].Base = &f[0]
		q.batchIov[i].SetLen(len(f))
		if err := u.Queue(uring.OpWritev, int(fd), &q.batchIov[i], 1, 0, seq|uint64(i)); err != nil {
			errs[i] = fmt.Errorf("netback: tap write: %w", err)
			continue
		}
		errs[i] = errTapWritePending
		queued++
	}
	err := u.Flush()
	for done := 0; done < queued && err == nil; {
		done += u.Each(func(user uint64, res int32) {
			i := user &^ seq
			if user&^0xffffffff != seq || i >= uint64(len(frames)) {
				return // a failed chunk's, or not ours
			}
			switch {
			case res < 0:
				errs[i] = fmt.Errorf("netback: tap write: %w", unix.Errno(-res))
			case int(res) != len(frames[i]):
				errs[i] = fmt.Errorf("netback: tap write: %d of %d bytes", res, len(frames[i]))
			default:
				errs[i] = nil
			}
		})
		if done < queued {
			err = u.Enter(false, 0) // one the TAP did not complete inline
		}
	}
	clear(q.batchIov[:len(frames)]) // io_uring copied them at submission
	if err == nil {
		return
	}
	// The ring failed: frames it did not report are lost, and the queue
	// writes one frame per write(2) from now on.
	for i := range errs {
		if errs[i] == errTapWritePending {
			errs[i] = fmt.Errorf("netback: tap write: %w", err)
		}
	}
	q.batchErr = err
	q.batch.Close()
	q.batch = nil
}

// tapReadEntries is the size of a queue's ReadBatch io_uring: the most
// frames one ReadBatch reads, as many as a wakeup asks for.
const tapReadEntries = rxReadMax

// ReadBatch implements BatchReader: one io_uring_enter submits a readv per
// buffer, each with RWF_NOWAIT, so the TAP completes every one inside the
// call, with a frame or EAGAIN, and none stays queued in the kernel (the
// caller owns the buffers again when ReadBatch returns). Before, a wakeup
// that found k frames cost k+2 read(2)s (the one that finds the queue
// empty before the poller waits, and the one that ends the batch); now it
// costs one io_uring_enter per len(bufs) frames, plus the one before the
// poller waits. Waiting stays with Go's netpoller, as for Read. If io_uring
// or RWF_NOWAIT is refused, the queue reads one frame per read(2).
func (q *linuxTapQueue) ReadBatch(ctx context.Context, bufs [][]byte, ns []int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	if q.lazyRing(&q.rRing, &q.rRingErr, tapReadEntries) {
		q.rIov = make([]unix.Iovec, tapReadEntries)
		q.rFn = q.readChunk
	}
	if q.rRing == nil {
		return readOneByOne(ctx, q, q, bufs, ns)
	}
	q.bind(ctx)
	q.rBufs, q.rNs = bufs[:min(len(bufs), tapReadEntries)], ns
	defer func() { q.rBufs, q.rNs = nil, nil }()
	for {
		q.rK, q.rErr = 0, nil
		err := q.rc.Read(q.rFn)
		if q.rK > 0 {
			return q.rK, nil
		}
		if q.rErr == errTapReadRefused {
			return readOneByOne(ctx, q, q, bufs, ns)
		}
		if err == nil {
			err = q.rErr
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue // a deadline set for an earlier context
		}
		// A closed file is internal/poll's ErrFileClosing here, which
		// os.File's own Read reports as os.ErrClosed.
		if _, ferr := q.f.Read(nil); errors.Is(ferr, os.ErrClosed) {
			return 0, ErrTapClosed
		}
		return 0, fmt.Errorf("netback: tap read: %w", err)
	}
}

// BatchReadErr implements batchReadState (the reading goroutine's call).
func (q *linuxTapQueue) BatchReadErr() error { return q.rRingErr }

// errTapReadRefused: the kernel refused a batch's reads (no RWF_NOWAIT
// for TAPs, or its io_uring lacks readv): the queue reads one by one.
var errTapReadRefused = errors.New("netback: tap: batched reads refused")

// readChunk is ReadBatch's raw-conn callback: it submits a readv per buffer
// of q.rBufs on fd, takes their completions (the TAP completes them inside
// the submission: RWF_NOWAIT), moves the frames to the front of q.rBufs
// in order and sets q.rK. It returns false (wait in the poller) when
// every read found the queue empty. A completion's user_data carries the
// batch's sequence number, as writeChunk's.
func (q *linuxTapQueue) readChunk(fd uintptr) bool {
	u, bufs := q.rRing, q.rBufs
	q.rSeq++
	seq := uint64(q.rSeq) << 32
	for i, b := range bufs {
		q.rNs[i] = -1
		q.rIov[i].Base = &b[0]
		q.rIov[i].SetLen(len(b))
		if err := u.QueueSQE(uring.OpReadv, int(fd), uintptr(unsafe.Pointer(&q.rIov[i])), 1, 0, unix.RWF_NOWAIT, seq|uint64(i)); err != nil {
			q.rErr = err
			return true
		}
	}
	err := u.Flush()
	var first error
	for done := 0; done < len(bufs) && err == nil; {
		done += u.Each(func(user uint64, res int32) {
			i := user &^ seq
			if user&^0xffffffff != seq || i >= uint64(len(bufs)) {
				return // a failed batch's, or not ours
			}
			switch {
			case res >= 0:
				q.rNs[i] = int(res)
			case res == -int32(unix.EAGAIN):
				q.rNs[i] = 0
			case first == nil:
				first = unix.Errno(-res)
			}
		})
		if done < len(bufs) {
			err = u.Enter(false, 0) // a read the TAP did not complete inline
		}
	}
	clear(q.rIov[:len(bufs)])
	if err != nil {
		// The ring failed with reads in it, whose completions may still
		// write into the buffers: reading must stop here.
		q.rErr = err
		q.rRing.Close()
		q.rRing, q.rRingErr = nil, err
		return true
	}
	k := 0
	for i, n := range q.rNs[:len(bufs)] {
		if n > 0 {
			bufs[k], bufs[i] = bufs[i], bufs[k]
			q.rNs[k] = n
			k++
		}
	}
	q.rK = k
	switch {
	case k > 0:
		return true // an error after these shows again next time
	case first == unix.EOPNOTSUPP || first == unix.EINVAL:
		q.rErr = errTapReadRefused
		q.rRing.Close()
		q.rRing, q.rRingErr = nil, first
		return true
	case first != nil:
		q.rErr = first
		return true
	}
	return false
}

// errTapWritePending marks a frame of writeChunk not completed yet.
var errTapWritePending = errors.New("netback: tap write: not completed")

// close frees the queue's io_uring and closes its file.
func (q *linuxTapQueue) close() error {
	if q.batch != nil {
		q.batch.Close()
		q.batch = nil
	}
	if q.rRing != nil {
		q.rRing.Close()
		q.rRing = nil
	}
	return q.f.Close()
}

type closedQueue struct{}

func (closedQueue) Read(context.Context, []byte) (int, error) { return 0, ErrTapClosed }
func (closedQueue) Write([]byte) (int, error)                 { return 0, ErrTapClosed }
