//go:build linux

package blkback

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"drvdom/evtchn"
	"drvdom/internal/uring"
)

// ringLoop serves one ring from one locked OS thread that owns an io_uring
// of its own: it submits the ring's reads and writes, and waits for its
// event channel (a poll in the same io_uring) and for their completions in
// one io_uring_enter (Driver.RingThreads; not the default).
//
// With the shared reaper (uringExec) a 4 KiB read at queue depth 1 wakes
// several of the runtime's threads in turn: the event channel's poller, the
// reaper's, and the thread that submitted, on which Linux posts the read's
// completion as task work (lab, per-thread samples: 2.8-4.5 thread
// switches and 2.4-3.1 ms of drvdomd CPU per read, where the kernel's
// blkback spends about 0.6 ms). Here the submitting thread is the one
// waiting, so the task work runs inside its wait.
//
// Measured in the lab against the shared reaper (one guest script, boots
// of both alternated; stop 16's note on issue 7 has every boot): 4 KiB QD1
// 203-229 IOPS at 2.1-2.5 ms of drvdomd CPU per read, against 152-214 IOPS
// at 2.4-3.1 ms (a fourth boot: 73); QD32 801-901 IOPS against 743-1143;
// 1 MiB reads 78-99 MiB/s at 8.3-10.3 ms of CPU per MiB, against 83-109 at
// 6.9-9.3. The extra P (see run) has a price: without it the same loop
// took 1.5-1.9 ms per QD1 read, but a busy ring then keeps the process's
// only P while it waits, and every other goroutine (netback's rings among
// them) waits for sysmon's 10 ms preemption.
//
// Everything but the loop's own fields is shared with the other paths:
// take/complete/pushInline under q.mu, flushes and discards on the side
// pool (which complete and notify from its workers).
type ringLoop struct {
	q     *queue
	u     *uring.Ring
	fd    int // the backing
	side  *poolExec
	ev    evtchn.Poller
	evfd  int
	stopf int // eventfd written when the ring's ctx ends

	// Owned by the loop's thread.
	inring  int  // SQEs of requests not reaped yet
	evt     bool // the event channel polled readable: read, unmask, service
	stopped bool
	hot     bool // the last wait found something: wait keeping the P
	ports   [4]evtchn.Port
}

// rawWaitTimeout bounds a wait that keeps the P (see wait): the runtime
// takes a goroutine in a RawSyscall for a running one, so a ring that went
// quiet gives its P back after this long.
const rawWaitTimeout = 4 * time.Millisecond

// procsMu serialises addProcs' read-modify-write of GOMAXPROCS.
var procsMu sync.Mutex

func addProcs(delta int) {
	procsMu.Lock()
	defer procsMu.Unlock()
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + delta)
}

// user_data of the loop's two polls; a request's is its slot's index.
const (
	loopEvtchn = 1<<62 + iota
	loopStop
)

// newRingLoops gives each ring its loop, or fails (and the device uses the
// shared reaper) when a ring's event channel handle cannot be polled, the
// device copies through bounce pages (whose waits for free pages need
// completions reaped by another goroutine), or io_uring is refused.
func newRingLoops(dev *Device, queues []*queue) ([]ringRunner, error) {
	rf, ok := dev.backing.(rawFD)
	if !ok {
		return nil, fmt.Errorf("backing has no file descriptor for io_uring")
	}
	if dev.pool != nil {
		return nil, fmt.Errorf("grant copy waits for bounce pages")
	}
	fd, _ := rf.uringFD()
	var loops []ringRunner
	fail := func(err error) ([]ringRunner, error) {
		for _, l := range loops {
			l.(*ringLoop).close()
		}
		return nil, err
	}
	for _, q := range queues {
		ev, ok := q.evh.(evtchn.Poller)
		if !ok {
			return fail(fmt.Errorf("queue %d: event channel handle cannot be polled", q.idx))
		}
		evfd, err := ev.PollFD()
		if err != nil {
			return fail(fmt.Errorf("queue %d: %w", q.idx, err))
		}
		entries := uint32(4)
		for int(entries) < len(q.slots)+2 {
			entries <<= 1
		}
		u, err := uring.New(entries, false)
		if err != nil {
			return fail(fmt.Errorf("queue %d: %w", q.idx, err))
		}
		stopf, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			u.Close()
			return fail(fmt.Errorf("queue %d: eventfd: %w", q.idx, err))
		}
		loops = append(loops, &ringLoop{q: q, u: u, fd: fd, ev: ev, evfd: evfd, stopf: stopf,
			side: newPoolExec(dev, 2, len(q.slots))})
	}
	return loops, nil
}

// testStopWriteDelay delays the stop eventfd's write by this many ns
// (tests: TestRingThreadLateStopWrite widens the window in which a late
// write could reach a closed and reused descriptor). 0 in production.
var testStopWriteDelay atomic.Int64

// run is the ring's service loop (queue.run after its prelude).
func (l *ringLoop) run(ctx context.Context) (err error) {
	runtime.LockOSThread() // the thread that submits is the one that waits
	defer runtime.UnlockOSThread()
	if l.u.ExtArg() {
		// The loop keeps a P of its own while it waits with RawSyscall
		// (see wait): the rest of the process gets another.
		addProcs(1)
		defer addProcs(-1)
	}
	wrote := make(chan struct{})
	unwatch := context.AfterFunc(ctx, func() {
		defer close(wrote)
		if d := testStopWriteDelay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		one := uint64(1)
		unix.Write(l.stopf, (*[8]byte)(unsafe.Pointer(&one))[:])
	})
	defer func() {
		// A write already started must land before stopf is closed: its
		// number is reused at once (the next ring's stop eventfd, a
		// disk's descriptor). A late write to a reused stopf stopped the
		// next process's ring in the crash test (the CI check of 2b3630a).
		if !unwatch() {
			<-wrote
		}
	}()
	defer func() {
		// Every request the ring submitted completes before the
		// connection unmaps its pages.
		if ferr := l.finish(); ferr != nil && err == nil {
			err = ferr
		}
	}()
	q := l.q
	if err := l.u.QueuePoll(l.stopf, uring.PollIn, loopStop); err != nil {
		return fmt.Errorf("queue %d: %w", q.idx, err)
	}
	l.evt = true // requests may be waiting already; arms the poll
	for {
		if l.stopped || ctx.Err() != nil {
			return nil
		}
		if l.evt {
			l.evt = false
			n, err := l.ev.ReadPending(l.ports[:])
			if err != nil {
				return fmt.Errorf("queue %d: wait: %w", q.idx, err)
			}
			if n > 0 {
				if err := q.evh.Unmask(q.port); err != nil {
					return fmt.Errorf("queue %d: unmask: %w", q.idx, err)
				}
			}
			if err := l.u.QueuePoll(l.evfd, uring.PollIn, loopEvtchn); err != nil {
				return fmt.Errorf("queue %d: %w", q.idx, err)
			}
			if err := q.service(ctx); err != nil {
				if errors.Is(err, errDead) {
					return nil
				}
				return err
			}
		}
		if err := l.wait(); err != nil {
			return fmt.Errorf("queue %d: %w", q.idx, err)
		}
	}
}

// wait submits what the ring queued, waits for a completion or a poll, and
// handles everything posted; responses are published once per wait.
//
// While the ring is busy (the last wait found something) it waits with
// RawSyscall, keeping its P: a plain Syscall that blocks lets the
// runtime's sysmon hand the P to another thread and wake one to take it,
// which in the lab cost 10 thread switches and 4.3 ms of CPU per 4 KiB
// read at queue depth 1 (against 4.5 and 3.0 ms with the shared reaper in
// the boot beside it). A busy wait is bounded by rawWaitTimeout; one that
// times out with nothing done makes the ring idle, and an idle ring waits
// with Syscall, without a bound.
func (l *ringLoop) wait() error {
	raw := l.hot && l.u.ExtArg()
	if err := l.u.Enter(raw, rawWaitTimeout); err != nil {
		return err
	}
	l.hot = l.u.Each(l.completed) > 0
	l.q.pushInline()
	return nil
}

func (l *ringLoop) completed(user uint64, res int32) {
	switch user {
	case loopEvtchn:
		l.evt = true
		return
	case loopStop:
		l.stopped = true
		return
	}
	q := l.q
	if user >= uint64(len(q.slots)) {
		q.log.Error("blkback: io_uring completion for an unknown request", "user", user)
		return
	}
	l.inring--
	transferDone(&q.slots[user], res, nil) // published by wait after the batch
}

// finish reaps what the ring still has in io_uring.
func (l *ringLoop) finish() error {
	for l.inring > 0 {
		if err := l.wait(); err != nil {
			return fmt.Errorf("queue %d: reap at stop: %w", l.q.idx, err)
		}
	}
	return nil
}

func (l *ringLoop) submit(s *slot) {
	if queueSlot(l.u, l.fd, s, uint64(s.idx), l.side, nil) {
		l.inring++
	}
}

// flush does nothing: the loop submits with its next wait.
func (l *ringLoop) flush() {}

// drain waits, on the loop's thread, until the barrier's request is the
// only one in flight: it must reap the ring's own completions itself.
func (l *ringLoop) drain() {
	q := l.q
	for {
		q.mu.Lock()
		if q.inflight <= 1 || q.stopping {
			q.mu.Unlock()
			return
		}
		if l.inring == 0 {
			q.drained.Wait() // only the side pool's: it broadcasts
			q.mu.Unlock()
			continue
		}
		q.mu.Unlock()
		if err := l.wait(); err != nil {
			q.log.Error("blkback: io_uring wait in a barrier", "err", err)
			return
		}
	}
}

// stop runs after the loop returned (every io_uring request reaped).
func (l *ringLoop) stop() {
	l.side.stop()
	l.close()
}

func (l *ringLoop) close() {
	l.u.Close()
	unix.Close(l.stopf)
}
