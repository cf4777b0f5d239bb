//go:build linux

package blkback

import (
	"runtime"
	"testing"
	"time"
)

// TestURingReaperWaitsOnTheNetpoller: the ring registers an eventfd, and a
// reaper parked on it (through the netpoller, not in a blocking
// io_uring_enter) wakes for a completion submitted after it parked, with
// GOMAXPROCS 1 as in a one-vCPU driver domain.
func TestURingReaperWaitsOnTheNetpoller(t *testing.T) {
	u, err := newURing(8)
	if err != nil {
		t.Skip("io_uring not available here:", err)
	}
	defer u.close()
	if u.efd == nil {
		t.Fatal("io_uring eventfd not registered (IORING_REGISTER_EVENTFD, Linux 5.2+)")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	got := make(chan uint64, 4)
	done := make(chan error, 1)
	go func() { // stopped by the uringStop NOP below
		done <- u.reap(func(user uint64, _ int32) bool {
			got <- user
			return user != uringStop
		}, nil)
	}()
	time.Sleep(20 * time.Millisecond) // let the reaper find the ring empty and park
	if err := u.submit(uringOpNop, -1, nil, 0, 0, 42); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-got:
		if v != 42 {
			t.Fatalf("user_data %d, want 42", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reaper did not wake for a completion")
	}
	if err := u.submit(uringOpNop, -1, nil, 0, 0, uringStop); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reaper did not stop")
	}
}
