package main

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

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
		time.Sleep(40 * time.Millisecond)
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
