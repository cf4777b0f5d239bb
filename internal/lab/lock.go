package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// LockPath is the machine-wide lab lock: one QEMU boot at a time, because
// a software-emulated Xen on a small machine slows to a crawl (and its
// timeouts fire) when two share the cores.
var LockPath = filepath.Join(os.TempDir(), "drvdom-lab.lock")

// lockLab takes LockPath, waiting (with a progress line) while another
// boot holds it; the returned function releases it. The lock is an flock:
// a killed holder releases it with its last fd.
func lockLab(ctx context.Context, p *Progress) (func(), error) {
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, fmt.Errorf("lab: lock %s: %w", LockPath, err)
	}
	waited := false
	start := time.Now()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("lab: lock %s: %w", LockPath, err)
		}
		if !waited {
			p.Printf("another lab boot holds %s; waiting for it", LockPath)
			waited = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lab: waiting for %s: %w", LockPath, ctx.Err())
		case <-time.After(time.Second):
		}
	}
	if waited {
		p.Printf("lab lock taken after %s", time.Since(start).Round(time.Second))
	}
	return func() { f.Close() }, nil
}
