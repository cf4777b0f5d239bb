//go:build linux

// Package uring is a minimal io_uring (Linux 5.1+) for the backends' data
// paths: setup, the submission and completion rings, and io_uring_enter.
// It is the only code that maps io_uring's rings (pinned by TestLayout).
package uring

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring ABI from <linux/io_uring.h> (pinned by TestLayout).
const (
	uringParamsSize = 120
	uparSqEntries   = 0
	uparCqEntries   = 4
	uparFeatures    = 20
	uparSqOff       = 40 // struct io_sqring_offsets
	uparCqOff       = 80 // struct io_cqring_offsets

	// io_sqring_offsets / io_cqring_offsets fields (u32 each).
	ringOffHead    = 0
	ringOffTail    = 4
	ringOffMask    = 8
	ringOffEntries = 12
	sqOffArray     = 24
	cqOffCqes      = 20

	uringOffSqRing = 0
	uringOffCqRing = 0x8000000
	uringOffSqes   = 0x10000000

	uringFeatSingleMmap = 1 << 0
	uringFeatExtArg     = 1 << 8 // IORING_FEAT_EXT_ARG (Linux 5.11)

	sqeSize        = 64
	sqeOffOpcode   = 0
	sqeOffFlags    = 1
	sqeOffFd       = 4
	sqeOffOff      = 8
	sqeOffAddr     = 16
	sqeOffLen      = 24
	sqeOffOpFlags  = 28
	sqeOffUserData = 32
	sqeOffBufIndex = 40 // u16, READ_FIXED/WRITE_FIXED: the registered buffer
	cqeSize        = 16
	cqeOffUserData = 0
	cqeOffRes      = 8

	OpNop     = 0
	OpReadv   = 1
	OpWritev  = 2
	OpPollAdd = 6 // poll32_events in the op-flags word
	// OpReadFixed and OpWriteFixed transfer to or from a buffer registered
	// with RegisterBuffers (QueueFixed): the kernel pinned its pages once,
	// so a transfer skips pinning them.
	OpReadFixed  = 4
	OpWriteFixed = 5

	PollIn = 0x1 // POLLIN

	uringEnterGetEvents = 1 << 0
	uringEnterExtArg    = 1 << 3 // IORING_ENTER_EXT_ARG

	// struct io_uring_getevents_arg { u64 sigmask; u32 sigmask_sz;
	// u32 pad; u64 ts; }
	geteventsArgSize = 24
	geteventsArgTs   = 16

	uringRegisterEventfd = 4 // IORING_REGISTER_EVENTFD
	uringRegisterBuffers = 0 // IORING_REGISTER_BUFFERS
)

// uring is a minimal io_uring: submissions from any goroutine (serialised),
// completions reaped by one goroutine.
type Ring struct {
	fd      int
	sqMem   []byte
	cqMem   []byte // == sqMem with IORING_FEAT_SINGLE_MMAP
	sqes    []byte
	sqHead  *uint32
	sqTail  *uint32
	sqMask  uint32
	sqArray []uint32
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    []byte
	single  bool
	extArg  bool   // IORING_FEAT_EXT_ARG: waits can time out
	pending uint32 // queued, not yet entered (under mu)

	// efd is signalled by the kernel for every completion posted: the
	// reaper waits on it through the Go netpoller instead of blocking in
	// io_uring_enter(GETEVENTS). A goroutine in a blocking syscall keeps
	// its P until sysmon retakes it (20 µs to 10 ms later): on a one-vCPU
	// driver domain (GOMAXPROCS 1) the rings' goroutines waited that long
	// at every completion batch, and the blocked thread then had to win
	// its P back. nil: the kernel refused the registration; the reaper
	// blocks in io_uring_enter.
	//
	// The reaper never reads the eventfd: it waits for the netpoller's
	// edge (Go registers fds edge-triggered, and every completion the
	// kernel posts signals the eventfd, so every one makes an edge) and
	// then looks at the CQ tail. efdWait is the RawConn callback that
	// does so, made once so waiting allocates nothing.
	efd     *os.File
	efdRC   syscall.RawConn
	efdWait func(fd uintptr) bool

	mu sync.Mutex // submission side
}

// New sets up a ring of entries SQEs. With eventfd, completions also
// signal an eventfd in Go's netpoller (for reap); without, the owner waits
// in io_uring_enter itself (enter).
func New(entries uint32, eventfd bool) (*Ring, error) {
	var p [uringParamsSize]byte
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p[0])), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", e)
	}
	u := &Ring{fd: int(fd)}
	le := func(off int) uint32 { return *(*uint32)(unsafe.Pointer(&p[off])) }
	sqEntries, cqEntries := le(uparSqEntries), le(uparCqEntries)
	sqSize := int(le(uparSqOff+sqOffArray)) + int(sqEntries)*4
	cqSize := int(le(uparCqOff+cqOffCqes)) + int(cqEntries)*cqeSize
	single := le(uparFeatures)&uringFeatSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	fail := func(what string, err error) (*Ring, error) {
		u.Close()
		return nil, fmt.Errorf("io_uring mmap %s: %w", what, err)
	}
	if u.sqMem, err = unix.Mmap(u.fd, uringOffSqRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fail("sq", err)
	}
	u.single = single
	u.extArg = le(uparFeatures)&uringFeatExtArg != 0
	if single {
		u.cqMem = u.sqMem
	} else if u.cqMem, err = unix.Mmap(u.fd, uringOffCqRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fail("cq", err)
	}
	if u.sqes, err = unix.Mmap(u.fd, uringOffSqes, int(sqEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fail("sqes", err)
	}
	u32 := func(mem []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	u.sqHead = u32(u.sqMem, le(uparSqOff+ringOffHead))
	u.sqTail = u32(u.sqMem, le(uparSqOff+ringOffTail))
	u.sqMask = *u32(u.sqMem, le(uparSqOff+ringOffMask))
	u.sqArray = unsafe.Slice(u32(u.sqMem, le(uparSqOff+sqOffArray)), sqEntries)
	u.cqHead = u32(u.cqMem, le(uparCqOff+ringOffHead))
	u.cqTail = u32(u.cqMem, le(uparCqOff+ringOffTail))
	u.cqMask = *u32(u.cqMem, le(uparCqOff+ringOffMask))
	off := le(uparCqOff + cqOffCqes)
	u.cqes = u.cqMem[off : off+cqEntries*cqeSize]
	if eventfd {
		u.efd = registerEventfd(u.fd)
	}
	if u.efd != nil {
		if u.efdRC, err = u.efd.SyscallConn(); err != nil {
			u.efd.Close()
			u.efd = nil
		}
		// true (done waiting) when a CQE is there: the tail is written
		// before the eventfd is signalled, and RawConn.Read calls this
		// after arming the wait, so a completion is either seen here or
		// makes the edge that ends the wait.
		u.efdWait = func(uintptr) bool { return *u.cqHead != atomic.LoadUint32(u.cqTail) }
	}
	return u, nil
}

// ExtArg reports IORING_FEAT_EXT_ARG (Linux 5.11): Enter(raw) can time out.
func (u *Ring) ExtArg() bool { return u.extArg }

// HasEventfd reports whether New registered the eventfd Reap parks on.
func (u *Ring) HasEventfd() bool { return u.efd != nil }

// registerEventfd creates a non-blocking eventfd and registers it with the
// ring, or returns nil if either step fails.
func registerEventfd(ringFD int) *os.File {
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil
	}
	v := int32(efd)
	if _, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(ringFD), uringRegisterEventfd, uintptr(unsafe.Pointer(&v)), 1, 0, 0); e != 0 {
		unix.Close(efd)
		return nil
	}
	return os.NewFile(uintptr(efd), "io_uring-eventfd") // non-blocking: served by the netpoller
}

// RegisterBuffers registers bufs with the ring (IORING_REGISTER_BUFFERS,
// once per ring): QueueFixed then transfers to or from bufs[i] by index.
// The kernel pins their pages until the ring is closed, so they must stay
// mapped that long. Kernels refuse some memory (EOPNOTSUPP for gntdev
// mappings, say).
func (u *Ring) RegisterBuffers(bufs [][]byte) error {
	if len(bufs) == 0 || len(bufs) > 1<<16 {
		return fmt.Errorf("io_uring: register %d buffers: %w", len(bufs), unix.EINVAL)
	}
	iov := make([]unix.Iovec, len(bufs))
	for i, b := range bufs {
		if len(b) == 0 {
			return fmt.Errorf("io_uring: register buffer %d: empty: %w", i, unix.EINVAL)
		}
		iov[i].Base = &b[0]
		iov[i].SetLen(len(b))
	}
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(u.fd), uringRegisterBuffers, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), 0, 0)
	runtime.KeepAlive(iov)
	if e != 0 {
		return fmt.Errorf("io_uring: register %d buffers: %w", len(bufs), e)
	}
	return nil
}

// QueueFixed adds one OpReadFixed or OpWriteFixed SQE: n bytes at addr,
// inside the buffer registered at index buf, at file offset off.
func (u *Ring) QueueFixed(op uint8, fd int, addr uintptr, n uint32, off uint64, buf uint16, user uint64) error {
	if op != OpReadFixed && op != OpWriteFixed {
		return fmt.Errorf("io_uring: op %d is not a fixed-buffer transfer: %w", op, unix.EINVAL)
	}
	return u.queue(op, fd, addr, n, off, 0, buf, user)
}

// queue adds one SQE; flush hands every queued SQE to the kernel. iov
// points at n iovecs that must stay valid until the completion.
func (u *Ring) Queue(op uint8, fd int, iov *unix.Iovec, n int, off int64, user uint64) error {
	return u.QueueSQE(op, fd, uintptr(unsafe.Pointer(iov)), uint32(n), uint64(off), 0, user)
}

// queuePoll adds a one-shot poll of fd for events.
func (u *Ring) QueuePoll(fd int, events uint32, user uint64) error {
	return u.QueueSQE(OpPollAdd, fd, 0, 0, 0, events, user)
}

// QueueSQE adds one SQE of op with its op-flags word (RWF_NOWAIT for a
// readv, poll events for a poll).
func (u *Ring) QueueSQE(op uint8, fd int, addr uintptr, n uint32, off uint64, opFlags uint32, user uint64) error {
	return u.queue(op, fd, addr, n, off, opFlags, 0, user)
}

func (u *Ring) queue(op uint8, fd int, addr uintptr, n uint32, off uint64, opFlags uint32, buf uint16, user uint64) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	tail := *u.sqTail // only we write it
	if tail-atomic.LoadUint32(u.sqHead) > u.sqMask {
		return fmt.Errorf("io_uring: submission queue full")
	}
	idx := tail & u.sqMask
	sqe := u.sqes[idx*sqeSize : (idx+1)*sqeSize]
	clear(sqe)
	sqe[sqeOffOpcode] = op
	*(*int32)(unsafe.Pointer(&sqe[sqeOffFd])) = int32(fd)
	*(*uint64)(unsafe.Pointer(&sqe[sqeOffOff])) = off
	*(*uint64)(unsafe.Pointer(&sqe[sqeOffAddr])) = uint64(addr)
	*(*uint32)(unsafe.Pointer(&sqe[sqeOffLen])) = n
	*(*uint32)(unsafe.Pointer(&sqe[sqeOffOpFlags])) = opFlags
	*(*uint64)(unsafe.Pointer(&sqe[sqeOffUserData])) = user
	*(*uint16)(unsafe.Pointer(&sqe[sqeOffBufIndex])) = buf
	u.sqArray[idx] = idx
	atomic.StoreUint32(u.sqTail, tail+1) // release: the SQE before the tail
	u.pending++
	return nil
}

// flush submits the queued SQEs with one io_uring_enter.
func (u *Ring) Flush() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	for u.pending > 0 {
		// RawSyscall: submitting never sleeps (no GETEVENTS; a read
		// that would block is punted to io_uring's workers), so there
		// is nothing for the runtime to hand the P over for. With
		// Syscall, one that outlasts sysmon's 20 µs tick (every one,
		// under the lab's TCG) had the P handed to another thread and
		// won back on return: futex wake-ups and thread switches on a
		// driver domain with one vCPU.
		r, _, e := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(u.fd), uintptr(u.pending), 0, 0, 0, 0)
		if e == unix.EINTR || e == unix.EAGAIN || e == unix.EBUSY {
			continue
		}
		if e != 0 {
			return fmt.Errorf("io_uring_enter: %w", e)
		}
		u.pending -= uint32(r)
	}
	return nil
}

// enter submits the queued SQEs and waits for at least one completion in
// the same io_uring_enter. Completions of requests this thread submitted
// are posted by task work that runs on this thread, inside this wait.
// EINTR and ETIME return nil (the caller looks at the CQ and waits again).
//
// Without raw it is a plain Syscall, since it blocks: the runtime may give
// the P to another thread meanwhile. With raw it is a RawSyscall, keeping
// the P, bounded by timeout (IORING_FEAT_EXT_ARG; the caller checks
// u.extArg): the runtime does not know the goroutine waits, so the P's
// other goroutines wait too until sysmon preempts it (10 ms; its signal
// interrupts the wait), and the bound keeps that short.
func (u *Ring) Enter(raw bool, timeout time.Duration) error {
	u.mu.Lock()
	n := u.pending
	u.mu.Unlock()
	var r uintptr
	var e syscall.Errno
	if raw {
		ts := unix.NsecToTimespec(int64(timeout))
		var arg [geteventsArgSize]byte
		*(*uint64)(unsafe.Pointer(&arg[geteventsArgTs])) = uint64(uintptr(unsafe.Pointer(&ts)))
		r, _, e = unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(u.fd), uintptr(n), 1,
			uringEnterGetEvents|uringEnterExtArg, uintptr(unsafe.Pointer(&arg[0])), geteventsArgSize)
		runtime.KeepAlive(&ts)
	} else {
		r, _, e = unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(u.fd), uintptr(n), 1, uringEnterGetEvents, 0, 0)
	}
	if e != 0 && e != unix.ETIME && e != unix.EINTR && e != unix.EAGAIN && e != unix.EBUSY {
		return fmt.Errorf("io_uring_enter(submit %d, wait): %w", n, e)
	}
	if e == 0 && r > 0 {
		u.mu.Lock()
		u.pending -= uint32(r)
		u.mu.Unlock()
	}
	return nil
}

// each calls fn for every completion posted so far, without waiting, and
// returns how many there were.
func (u *Ring) Each(fn func(user uint64, res int32)) int {
	head := *u.cqHead
	tail := atomic.LoadUint32(u.cqTail) // acquire: CQEs below tail are written
	n := 0
	for ; head != tail; head++ {
		fn(u.take(head))
		n++
	}
	return n
}

// take reads the CQE at head and hands its slot back to the kernel.
func (u *Ring) take(head uint32) (user uint64, res int32) {
	c := u.cqes[(head&u.cqMask)*cqeSize:]
	user = *(*uint64)(unsafe.Pointer(&c[cqeOffUserData]))
	res = *(*int32)(unsafe.Pointer(&c[cqeOffRes]))
	atomic.StoreUint32(u.cqHead, head+1)
	return user, res
}

// submit queues one SQE and flushes.
func (u *Ring) Submit(op uint8, fd int, iov *unix.Iovec, n int, off int64, user uint64) error {
	if err := u.Queue(op, fd, iov, n, off, user); err != nil {
		return err
	}
	return u.Flush()
}

// reap waits for completions and calls fn for each, then end after each
// batch; only one goroutine may reap. It returns when fn returns false.
func (u *Ring) Reap(fn func(user uint64, res int32) bool, end func()) error {
	for {
		head := *u.cqHead
		tail := atomic.LoadUint32(u.cqTail) // acquire: CQEs below tail are written
		if head == tail {
			if u.efd != nil {
				// No read(2) of the eventfd: it would cost two system
				// calls per wakeup (the count, then EAGAIN before
				// parking), each a trap to Xen in a PV driver domain.
				if err := u.efdRC.Read(u.efdWait); err != nil {
					return fmt.Errorf("io_uring eventfd: %w", err)
				}
				continue
			}
			_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(u.fd), 0, 1, uringEnterGetEvents, 0, 0)
			if e != 0 && e != unix.EINTR && e != unix.EAGAIN && e != unix.EBUSY {
				return fmt.Errorf("io_uring_enter(getevents): %w", e)
			}
			continue
		}
		more := true
		for ; head != tail && more; head++ {
			more = fn(u.take(head))
		}
		if end != nil {
			end()
		}
		if !more {
			return nil
		}
	}
}

func (u *Ring) Close() error {
	if u.efd != nil {
		u.efd.Close()
	}
	if u.sqes != nil {
		unix.Munmap(u.sqes)
	}
	if u.cqMem != nil && !u.single {
		unix.Munmap(u.cqMem)
	}
	if u.sqMem != nil {
		unix.Munmap(u.sqMem)
	}
	return unix.Close(u.fd)
}
