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
	u, err := newURing(8, true)
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

// TestEngineChoice: io_uring for O_DIRECT backings always, and for
// buffered ones only when the process has a single P (a one-vCPU driver
// domain, where the pool's syscall per request costs most).
func TestEngineChoice(t *testing.T) {
	p := tempDisk(t, 1<<20)
	direct, err := OpenBacking(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	buffered, err := OpenBacking(p, OpenOptions{NoDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer buffered.Close()
	if _, d := direct.(rawFD).uringFD(); !d {
		t.Skip("O_DIRECT refused on this test machine's temp dir")
	}
	prev := runtime.GOMAXPROCS(2)
	defer runtime.GOMAXPROCS(prev)
	if !preferURing(direct) || preferURing(buffered) {
		t.Errorf("GOMAXPROCS 2: direct %v buffered %v, want io_uring for direct only", preferURing(direct), preferURing(buffered))
	}
	runtime.GOMAXPROCS(1)
	if !preferURing(direct) || !preferURing(buffered) {
		t.Errorf("GOMAXPROCS 1: direct %v buffered %v, want io_uring for both", preferURing(direct), preferURing(buffered))
	}
	if preferURing(NewNullDisk(1<<20, 512)) {
		t.Error("a backing without a descriptor cannot use io_uring")
	}
}
