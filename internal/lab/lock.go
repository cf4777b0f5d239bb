package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// LockPath is the machine-wide lab lock: one QEMU boot at a time, because
// a software-emulated Xen on a small machine slows to a crawl (and its
// timeouts fire) when two share the cores.
var LockPath = filepath.Join(os.TempDir(), "drvdom-lab.lock")

// lockPoll is how often a waiter looks at the lock and the queue.
var lockPoll = 200 * time.Millisecond

// lockLab takes LockPath, waiting (with a progress line) while another
// boot holds it; the returned function releases it. The lock is an flock:
// a killed holder releases it with its last fd. Waiters queue first come,
// first served: each leaves a ticket (LockPath+".q/<start ns>.<pid>") and
// tries the flock only while its ticket is the oldest of a live process
// (without the queue, whoever polled first after a release won, and a
// waiter could starve behind a series of boots).
func lockLab(ctx context.Context, p *Progress) (func(), error) {
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("lab: lock %s: %w", LockPath, err)
	}
	qdir := LockPath + ".q"
	ticket := ""
	if err := os.MkdirAll(qdir, 0o777); err == nil {
		ticket = filepath.Join(qdir, fmt.Sprintf("%020d.%d", time.Now().UnixNano(), os.Getpid()))
		if err := os.WriteFile(ticket, nil, 0o666); err != nil {
			ticket = ""
		}
	}
	dropTicket := func() {
		if ticket != "" {
			os.Remove(ticket)
		}
	}
	waited := false
	start := time.Now()
	for {
		if ticket == "" || firstInQueue(qdir, filepath.Base(ticket)) {
			err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			if err == nil {
				break
			}
			if err != syscall.EWOULDBLOCK {
				dropTicket()
				f.Close()
				return nil, fmt.Errorf("lab: lock %s: %w", LockPath, err)
			}
		}
		if !waited {
			p.Printf("another lab boot holds %s; waiting for it", LockPath)
			waited = true
		}
		select {
		case <-ctx.Done():
			dropTicket()
			f.Close()
			return nil, fmt.Errorf("lab: waiting for %s: %w", LockPath, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
	dropTicket()
	if waited {
		p.Printf("lab lock taken after %s", time.Since(start).Round(time.Second))
	}
	return func() { f.Close() }, nil
}

// firstInQueue reports whether mine is the oldest ticket in qdir whose
// process is alive; tickets of dead processes are removed.
func firstInQueue(qdir, mine string) bool {
	ents, err := os.ReadDir(qdir)
	if err != nil {
		return true
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		if n == mine {
			return true
		}
		_, pidText, ok := strings.Cut(n, ".")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 {
			os.Remove(filepath.Join(qdir, n))
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.Remove(filepath.Join(qdir, n))
			continue
		}
		return false
	}
	return true
}
