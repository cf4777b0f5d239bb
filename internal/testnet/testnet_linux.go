//go:build linux

package testnet

import (
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Run runs fn on a locked OS thread inside a fresh network namespace and
// returns when fn has. It skips t when not root (creating a namespace needs
// CAP_SYS_ADMIN). fn runs on another goroutine than the test's: it reports
// failures with t.Errorf, never t.Fatal or t.Skip. Goroutines fn starts run
// in the host's namespace, not fn's (netlink.NewHandleAt reaches fn's).
//
// The thread is never unlocked: it ends with its goroutine, taking the
// namespace and every link in it along.
func Run(t testing.TB, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Errorf("testnet: get the current netns: %v", err)
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Errorf("testnet: new netns: %v", err)
			return
		}
		defer ns.Close()
		fn()
		if err := netns.Set(orig); err != nil {
			t.Errorf("testnet: restore the netns: %v", err)
		}
	}()
	<-done
}

// Runner runs closures on one OS thread inside a private network
// namespace that lives as long as the test: TAP creation, netlink and
// sockets bind to the calling thread's namespace, so everything that must
// see the namespace goes through Do.
type Runner struct{ ch chan func() }

// NewRunner starts the namespace's thread; it skips t when not root or
// without /dev/net/tun. The thread stops at the test's cleanup.
func NewRunner(t testing.TB) *Runner {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace and TAP devices")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
	r := &Runner{ch: make(chan func())}
	ready := make(chan error, 1)
	stop, exited := make(chan struct{}), make(chan struct{})
	go func() { // owned by the test: stopped and waited for in Cleanup
		defer close(exited)
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace
		ns, err := netns.New()
		if err != nil {
			ready <- err
			return
		}
		defer ns.Close()
		ready <- nil
		for {
			select {
			case f := <-r.ch:
				f()
			case <-stop:
				return
			}
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() { close(stop); <-exited })
	return r
}

// Do runs f in the namespace and returns when it has.
func (r *Runner) Do(f func()) {
	done := make(chan struct{})
	r.ch <- func() { defer close(done); f() }
	<-done
}

// WaitOperUp waits until the kernel's linkwatch reports the link up (a
// carrier change reaches it up to a second late), so the bridge forwards
// to it.
func (r *Runner) WaitOperUp(t testing.TB, name string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var st netlink.LinkOperState
		r.Do(func() {
			if l, err := netlink.LinkByName(name); err == nil {
				st = l.Attrs().OperState
			}
		})
		if st == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s operstate %v, want up", name, st)
		}
	}
}
