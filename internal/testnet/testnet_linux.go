//go:build linux

package testnet

import (
	"os"
	"runtime"
	"testing"

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
