package main

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The watchdog ioctl numbers are uapi/linux/watchdog.h's.
func TestWatchdogIoctlNumbers(t *testing.T) {
	if wdiocSetTimeout != unix.WDIOC_SETTIMEOUT || wdiocGetTimeout != unix.WDIOC_GETTIMEOUT {
		t.Errorf("WDIOC_SETTIMEOUT %#x (want %#x), WDIOC_GETTIMEOUT %#x (want %#x)",
			wdiocSetTimeout, unix.WDIOC_SETTIMEOUT, wdiocGetTimeout, unix.WDIOC_GETTIMEOUT)
	}
	// Not a watchdog: the ioctl fails (ENOTTY) and the caller keeps the
	// driver's timeout.
	f, err := os.CreateTemp(t.TempDir(), "wd")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := setWatchdogTimeout(f, 30*time.Second); err == nil {
		t.Error("setting a timeout on a regular file succeeded")
	}
	if watchdogTimeout < 4*watchdogEvery || watchdogTimeout > 60*time.Second {
		t.Errorf("watchdogTimeout %v: want at least 4 feed periods (%v) and no more than xen_wdt's default", watchdogTimeout, watchdogEvery)
	}
}

func TestFeedWatchdog(t *testing.T) {
	for _, clean := range []bool{true, false} {
		p := filepath.Join(t.TempDir(), "watchdog")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var disarm atomic.Bool
		done := make(chan struct{})
		go func() {
			defer close(done)
			feedWatchdog(ctx, p, 5*time.Millisecond, nil, &disarm, quiet)
		}()
		// Keepalives every 5 ms: wait for three rather than sleep for
		// them (a loaded machine stretches the ticks; 40 ms was a bet).
		waitFor(t, "three keepalives", func() bool {
			b, _ := os.ReadFile(p)
			return len(b) >= 3
		})
		disarm.Store(clean)
		cancel()
		<-done
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 3 {
			t.Errorf("only %d keepalives", len(b))
		}
		if got := b[len(b)-1] == 'V'; got != clean {
			t.Errorf("clean=%v: magic close written = %v (%q)", clean, got, b)
		}
	}
	// No watchdog device: returns at once.
	var disarm atomic.Bool
	feedWatchdog(context.Background(), "/nonexistent/watchdog", time.Hour, nil, &disarm, quiet)
}
