//go:build linux

package uring

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stopUser is the user_data of the NOP that ends the reaper of
// TestReaperWaitsOnTheNetpoller.
const stopUser = ^uint64(0)

// TestLayout pins the io_uring ABI numbers to <linux/io_uring.h>.
func TestLayout(t *testing.T) {
	pins := []struct {
		name      string
		got, want int
	}{
		{"sizeof(io_uring_params)", uringParamsSize, 120},
		{"io_uring_params.features", uparFeatures, 20},
		{"io_uring_params.sq_off", uparSqOff, 40},
		{"io_uring_params.cq_off", uparCqOff, 80},
		{"io_sqring_offsets.array", sqOffArray, 24},
		{"io_cqring_offsets.cqes", cqOffCqes, 20},
		{"IORING_OFF_CQ_RING", uringOffCqRing, 0x8000000},
		{"IORING_OFF_SQES", uringOffSqes, 0x10000000},
		{"sizeof(io_uring_sqe)", sqeSize, 64},
		{"sqe.fd", sqeOffFd, 4},
		{"sqe.off", sqeOffOff, 8},
		{"sqe.addr", sqeOffAddr, 16},
		{"sqe.len", sqeOffLen, 24},
		{"sqe.user_data", sqeOffUserData, 32},
		{"sizeof(io_uring_cqe)", cqeSize, 16},
		{"cqe.res", cqeOffRes, 8},
		{"IORING_OP_READV", OpReadv, 1},
		{"IORING_OP_WRITEV", OpWritev, 2},
		{"IORING_OP_POLL_ADD", OpPollAdd, 6},
		{"IORING_OP_NOP", OpNop, 0},
		{"IORING_ENTER_GETEVENTS", uringEnterGetEvents, 1},
		{"SYS_io_uring_setup", unix.SYS_IO_URING_SETUP, 425},
		{"SYS_io_uring_enter", unix.SYS_IO_URING_ENTER, 426},
	}
	for _, p := range pins {
		if p.got != p.want {
			t.Errorf("%s = %#x, want %#x", p.name, p.got, p.want)
		}
	}
}

// TestReaperWaitsOnTheNetpoller: the ring registers an eventfd, and a
// reaper parked on it (through the netpoller, not in a blocking
// io_uring_enter) wakes for a completion submitted after it parked, with
// GOMAXPROCS 1 as in a one-vCPU driver domain.
func TestReaperWaitsOnTheNetpoller(t *testing.T) {
	u, err := New(8, true)
	if err != nil {
		t.Skip("io_uring not available here:", err)
	}
	defer u.Close()
	if !u.HasEventfd() {
		t.Fatal("io_uring eventfd not registered (IORING_REGISTER_EVENTFD, Linux 5.2+)")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	got := make(chan uint64, 4)
	done := make(chan error, 1)
	go func() { // stopped by the stopUser NOP below
		done <- u.Reap(func(user uint64, _ int32) bool {
			got <- user
			return user != stopUser
		}, nil)
	}()
	time.Sleep(20 * time.Millisecond) // let the reaper find the ring empty and park
	if err := u.Submit(OpNop, -1, nil, 0, 0, 42); err != nil {
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
	if err := u.Submit(OpNop, -1, nil, 0, 0, stopUser); err != nil {
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
