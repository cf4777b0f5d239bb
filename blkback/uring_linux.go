//go:build linux

package blkback

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"drvdom/internal/uring"
)

// uringIO lets the engine submit a slot's transfer: the iovecs live in
// the IO's scratch, valid until the completion.
func (io *IO) fillIovecs() (*unix.Iovec, int) {
	n := 0
	for _, b := range io.Bufs {
		if len(b) == 0 {
			continue
		}
		io.sys.iov[n].Base = &b[0]
		io.sys.iov[n].SetLen(len(b))
		n++
	}
	return &io.sys.iov[0], n
}

// rawFD is implemented by backings io_uring can drive directly: the
// descriptor, and whether it is O_DIRECT.
type rawFD interface{ uringFD() (int, bool) }

func (d *fileDisk) uringFD() (int, bool) { return int(d.f.Fd()), d.direct }

// preferURing says whether the default engine should be io_uring for b:
// for O_DIRECT, where I/O waits for the device; and for buffered I/O
// (tmpfs, page-cache hits) when the process has one P, as in a one-vCPU
// driver domain. With several Ps the worker pool serves buffered I/O
// faster (BenchmarkFileRead, BLKBACK_BENCH_DIR=/dev/shm, -cpu 2: pool 16
// workers 746k-782k req/s, io_uring 591k), because each preadv completes
// inside the call on some P. With one P the two are level here (-cpu 1:
// 465k-547k vs 455k-532k) but the pool makes a syscall per request and
// io_uring 0.18 (strace -c over 20,000 requests: 20,065 preadv vs 630
// io_uring_enter + 1,338 eventfd reads + 756 epoll_pwait), and a syscall
// is what costs most in a PV driver domain (every one bounces through
// Xen; under the lab's TCG each also flushes the emulated TLB). In the
// lab's first complete drvdom boot (/tmp/h4/cheap1) the guest's tmpfs
// disk (pool) gave 77 IOPS at 4 KiB QD32 while its NVMe disk (io_uring)
// gave 716, though the driver domain itself read the tmpfs file 7.5
// times faster than the NVMe.
func preferURing(b Backing) bool {
	rf, ok := b.(rawFD)
	if !ok {
		return false
	}
	_, direct := rf.uringFD()
	return direct || runtime.GOMAXPROCS(0) == 1
}

// uringStop is the user_data of the NOP that stops the reaper.
const uringStop = ^uint64(0)

// uringExec submits reads and writes of a file or block device to
// io_uring; everything else (flush, barrier, discard, a transfer O_DIRECT
// refused) goes to a small worker pool.
type uringExec struct {
	dev    *Device
	u      *uring.Ring
	fd     int
	slots  []*slot // user_data -> slot
	queues []*queue
	side   *poolExec
	ops    sync.WaitGroup // submitted, not reaped
	done   chan struct{}
	fixed  *fixedBufs // Driver.FixedBuffers: registered bounce buffers, or nil
}

func newURingExec(dev *Device, queues []*queue, slots []*slot) (executor, error) {
	rf, ok := dev.backing.(rawFD)
	if !ok {
		return nil, fmt.Errorf("backing has no file descriptor for io_uring")
	}
	fd, direct := rf.uringFD()
	entries := uint32(1)
	for int(entries) < len(slots)+1 {
		entries <<= 1
	}
	u, err := uring.New(entries, true)
	if err != nil {
		return nil, err
	}
	for i, s := range slots {
		s.uid = uint64(i)
	}
	x := &uringExec{dev: dev, u: u, fd: fd, slots: slots, queues: queues, side: newPoolExec(dev, 2, len(slots)), done: make(chan struct{})}
	// Bounce buffers only for O_DIRECT: a buffered transfer copies
	// between the page cache and the frontend's pages without pinning
	// them, and a bounce buffer would add a copy.
	if n := dev.drv.FixedBuffers; n > 0 && dev.pool == nil && direct {
		if x.fixed, err = newFixedBufs(u, n); err != nil {
			dev.log.Warn("blkback: no registered bounce buffers, transfers go to the frontend's pages", "err", err)
			x.fixed = nil
		}
	}
	go func() {
		defer close(x.done)
		if err := u.Reap(x.completed, x.pushAll); err != nil {
			dev.log.Error("blkback: io_uring reaper", "err", err)
		}
	}()
	return x, nil
}

func (x *uringExec) submit(s *slot) {
	x.ops.Add(1) // before the queue: another ring's flush may submit it
	if !queueSlot(x.u, x.fd, s, s.uid, x.side, x.fixed) {
		x.ops.Done()
	}
}

// gather copies bufs, in order, into b (len(b) is their total).
func gather(b []byte, bufs [][]byte) {
	n := 0
	for _, p := range bufs {
		n += copy(b[n:], p)
	}
}

// scatter copies b, in order, into bufs.
func scatter(bufs [][]byte, b []byte) {
	n := 0
	for _, p := range bufs {
		n += copy(p, b[n:])
	}
}

// fixedBufSize is the size of one registered bounce buffer: the largest
// request of a Linux blkfront with its default 32 indirect segments.
const fixedBufSize = 32 * PageSize

// fixedMinBytes is the smallest transfer that goes through a bounce
// buffer. The pinning a buffer saves is per page, and in the lab (two
// alternated pairs of boots, 32 buffers) 1 MiB reads and writes, in
// 128 KiB requests, took 25-60% less drvdomd CPU per MiB through them
// (throughput +19-133%), while 4 KiB random reads at QD32 went 596/552
// -> 475/453 IOPS at 1.00/1.14 -> 1.28/1.31 ms of CPU each: small
// requests keep the frontend's pages.
const fixedMinBytes = 8 * PageSize

// fixedBufs are a device's bounce buffers registered with its io_uring
// (Driver.FixedBuffers). A transfer to or from the frontend's pages makes
// the kernel pin each of them (get_user_pages) for every request, which
// in the lab's PV driver domain costs more than the transfer's copy
// through a buffer the kernel pinned once (gntdev mappings themselves
// cannot be registered: EOPNOTSUPP).
type fixedBufs struct {
	free  func() error
	bufs  [][]byte
	mu    sync.Mutex
	avail []int
}

func newFixedBufs(u *uring.Ring, n int) (*fixedBufs, error) {
	n = min(n, 1<<14) // IORING_MAX_REG_BUFFERS
	mem, free, err := allocPages(n * fixedBufSize / PageSize)
	if err != nil {
		return nil, fmt.Errorf("%d bounce buffers: %w", n, err)
	}
	f := &fixedBufs{free: free, bufs: make([][]byte, n), avail: make([]int, n)}
	for i := range f.bufs {
		f.bufs[i] = mem[i*fixedBufSize : (i+1)*fixedBufSize : (i+1)*fixedBufSize]
		f.avail[i] = n - 1 - i
	}
	if err := u.RegisterBuffers(f.bufs); err != nil {
		free()
		return nil, err
	}
	return f, nil
}

// hold gives s a buffer (s.fix) and copies a write's data into it, if f
// is not nil, s's transfer is from fixedMinBytes to fixedBufSize and a
// buffer is free; it reports whether s holds one.
func (f *fixedBufs) hold(s *slot) bool {
	if f == nil || s.bytes < fixedMinBytes || s.bytes > fixedBufSize {
		return false
	}
	f.mu.Lock()
	if len(f.avail) == 0 {
		f.mu.Unlock()
		return false
	}
	i := f.avail[len(f.avail)-1]
	f.avail = f.avail[:len(f.avail)-1]
	f.mu.Unlock()
	s.fix = int32(i) + 1
	if s.op == OpWrite {
		gather(f.held(s), s.bufs)
	}
	return true
}

// held is the part of s's buffer its transfer uses.
func (f *fixedBufs) held(s *slot) []byte { return f.bufs[s.fix-1][:s.bytes] }

// release frees s's buffer.
func (f *fixedBufs) release(s *slot) {
	f.mu.Lock()
	f.avail = append(f.avail, int(s.fix-1))
	f.mu.Unlock()
	s.fix = 0
}

// close frees the buffers; the ring they are registered with must be
// closed first.
func (f *fixedBufs) close() error { return f.free() }

// queueSlot queues s's read or write on u with user as its user_data and
// reports whether it did: flushes, discards, transfers without data, and
// any the ring has no room for, go to side instead. With fixed (nil: none)
// a transfer fixed.hold takes goes through its registered buffer.
func queueSlot(u *uring.Ring, fd int, s *slot, user uint64, side *poolExec, fixed *fixedBufs) bool {
	var op, fop uint8
	switch {
	case s.req.Operation == OpDiscard || len(s.bufs) == 0:
	case s.op == OpRead:
		op, fop = uring.OpReadv, uring.OpReadFixed
	case s.op == OpWrite:
		op, fop = uring.OpWritev, uring.OpWriteFixed
	}
	if op == uring.OpNop {
		side.submit(s)
		return false
	}
	s.io.Off = int64(s.req.Sector) * SectorSize
	bounced := fixed.hold(s)
	var iov *unix.Iovec
	var n int
	var b []byte
	var buf uint16
	if bounced {
		b, buf = fixed.held(s), uint16(s.fix-1)
	} else {
		s.io.Bufs = s.bufs
		iov, n = s.io.fillIovecs()
	}
	off := s.io.Off
	st := &s.q.dev.stats
	// After every access to s until its completion: transferDone's
	// decrement orders them before the reaper's for the race detector.
	st.InFlight.Add(1)
	var err error
	if bounced {
		err = u.QueueFixed(fop, fd, uintptr(unsafe.Pointer(&b[0])), uint32(len(b)), uint64(off), buf, user)
	} else {
		err = u.Queue(op, fd, iov, n, off, user)
	}
	if err != nil {
		st.InFlight.Add(-1)
		if bounced {
			fixed.release(s)
		}
		s.q.log.Warn("blkback: io_uring submit, running on a worker", "err", err)
		side.submit(s)
		return false
	}
	if bounced {
		st.Bounced.Add(1)
	}
	return true
}

// completed runs on the reaper for each CQE.
func (x *uringExec) completed(user uint64, res int32) bool {
	if user == uringStop {
		return false
	}
	if user >= uint64(len(x.slots)) {
		x.dev.log.Error("blkback: io_uring completion for an unknown request", "user", user)
		return true
	}
	transferDone(x.slots[user], res, x.fixed) // published by pushAll after the batch
	x.ops.Done()
	return true
}

// transferDone completes s, whose io_uring transfer returned res, without
// publishing the response (the engine pushes a batch at a time); a read
// through a bounce buffer of fixed is copied to the frontend's pages, and
// the buffer freed. Nothing of s but s.q is read before the decrement of
// InFlight: the submitter's increment, after it filled s, is what orders
// its writes before these reads for the race detector (the kernel's
// completion, which orders them on the machine, is invisible to it).
func transferDone(s *slot, res int32, fixed *fixedBufs) {
	d := s.q.dev
	d.stats.InFlight.Add(-1)
	if s.fix != 0 {
		if s.op == OpRead && res >= 0 && uint64(res) == s.bytes {
			scatter(s.bufs, fixed.held(s))
		}
		fixed.release(s)
	}
	var err error
	switch {
	case res >= 0 && uint64(res) == s.bytes:
		if s.op == OpRead && d.pool != nil {
			err = s.q.copyOut(s)
		}
	default:
		// Short, refused by O_DIRECT, or failed: the synchronous path
		// retries it whole (and reports a real error).
		err = d.execute(s)
	}
	s.io.Bufs = nil
	s.status = StatusOf(err)
	s.q.complete(s, false)
}

// flush enters the kernel once for the SQEs a ring's batch queued.
func (x *uringExec) flush() {
	if err := x.u.Flush(); err != nil {
		x.dev.log.Error("blkback: io_uring submit", "err", err)
	}
}

// pushAll publishes the responses of a completion batch, one push (and at
// most one notification) per ring.
func (x *uringExec) pushAll() {
	for _, q := range x.queues {
		q.pushInline()
	}
}

func (x *uringExec) stop() {
	x.ops.Wait()
	var iov unix.Iovec
	for x.u.Submit(uring.OpNop, -1, &iov, 0, 0, uringStop) != nil {
	}
	<-x.done
	x.side.stop()
	x.u.Close()
	if x.fixed != nil {
		x.fixed.close()
	}
}
