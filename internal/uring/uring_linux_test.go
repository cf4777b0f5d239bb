//go:build linux

package uring

import (
	"bytes"
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

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
		{"sqe.buf_index", sqeOffBufIndex, 40},
		{"IORING_OP_READ_FIXED", OpReadFixed, 4},
		{"IORING_OP_WRITE_FIXED", OpWriteFixed, 5},
		{"IORING_REGISTER_BUFFERS", uringRegisterBuffers, 0},
		{"IORING_REGISTER_EVENTFD", uringRegisterEventfd, 4},
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

// complete flushes what is queued and returns the results of want
// completions by user_data.
func complete(t *testing.T, u *Ring, want int) map[uint64]int32 {
	t.Helper()
	got := map[uint64]int32{}
	for len(got) < want {
		if err := u.Enter(false, 0); err != nil {
			t.Fatal(err)
		}
		u.Each(func(user uint64, res int32) { got[user] = res })
	}
	return got
}

// TestFixedBuffers: a write from and a read into registered buffers, at an
// address inside one; an address outside every registered buffer fails
// the transfer (EFAULT), not the ring.
func TestFixedBuffers(t *testing.T) {
	u, err := New(8, false)
	if err != nil {
		t.Skip("io_uring not available here:", err)
	}
	defer u.Close()
	mem, err := unix.Mmap(-1, 0, 4*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	b0, b1 := mem[:2*4096], mem[2*4096:]
	if err := u.RegisterBuffers(nil); err == nil {
		t.Error("no buffers registered without an error")
	}
	if err := u.RegisterBuffers([][]byte{b0, b1}); err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(t.TempDir(), "fixed")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	for i := range b1 {
		b1[i] = byte(i * 7)
	}
	if err := u.QueueFixed(OpWriteFixed, fd, uintptr(unsafe.Pointer(&b1[0])), uint32(len(b1)), 4096, 1, 1); err != nil {
		t.Fatal(err)
	}
	if r := complete(t, u, 1); r[1] != int32(len(b1)) {
		t.Fatalf("write fixed: %v", r)
	}
	// Read the file's second page into the middle of buffer 0.
	if err := u.QueueFixed(OpReadFixed, fd, uintptr(unsafe.Pointer(&b0[4096])), 4096, 8192, 0, 2); err != nil {
		t.Fatal(err)
	}
	// An address in buffer 1 under buffer 0's index: outside it.
	if err := u.QueueFixed(OpReadFixed, fd, uintptr(unsafe.Pointer(&b1[0])), 4096, 0, 0, 3); err != nil {
		t.Fatal(err)
	}
	r := complete(t, u, 2)
	if r[2] != 4096 || r[3] != -int32(unix.EFAULT) {
		t.Fatalf("read fixed: %v, want 2:4096 3:%d", r, -int32(unix.EFAULT))
	}
	if !bytes.Equal(b0[4096:], b1[4096:]) {
		t.Error("read fixed: the bytes differ from the file's")
	}
	if err := u.QueueFixed(OpReadv, fd, 0, 0, 0, 0, 4); err == nil {
		t.Error("QueueFixed took a readv")
	}
	runtime.KeepAlive(mem)
}
