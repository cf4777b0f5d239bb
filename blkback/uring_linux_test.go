//go:build linux

package blkback

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestURingLayout pins the io_uring ABI numbers to <linux/io_uring.h>.
func TestURingLayout(t *testing.T) {
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
		{"IORING_OP_READV", uringOpReadv, 1},
		{"IORING_OP_WRITEV", uringOpWritev, 2},
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

// TestURingReadWrite drives the ring directly against a file.
func TestURingReadWrite(t *testing.T) {
	u, err := newURing(8, true)
	if err != nil {
		t.Skip("io_uring not available here:", err) // a kernel or sysctl without io_uring
	}
	defer u.close()
	p := tempDisk(t, 1<<20)
	b, err := OpenBacking(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fd, _ := b.(rawFD).uringFD()
	mem := alignedPages(t, 2)
	for i := range mem {
		mem[i] = byte(i)
	}
	w := &IO{Bufs: [][]byte{mem[:4096], mem[4096:8192]}}
	iov, n := w.fillIovecs()
	if err := u.submit(uringOpWritev, fd, iov, n, 65536, 7); err != nil {
		t.Fatal(err)
	}
	rd := alignedPages(t, 2)
	r := &IO{Bufs: [][]byte{rd[:8192]}}
	var got []int32
	u.reap(func(user uint64, res int32) bool {
		if user != 7 {
			t.Errorf("user_data %d", user)
		}
		got = append(got, res)
		iov, n := r.fillIovecs()
		if err := u.submit(uringOpReadv, fd, iov, n, 65536, 8); err != nil {
			t.Fatal(err)
		}
		return false
	}, nil)
	u.reap(func(user uint64, res int32) bool {
		got = append(got, res)
		return false
	}, nil)
	if len(got) != 2 || got[0] != 8192 || got[1] != 8192 {
		t.Fatalf("results %v", got)
	}
	for i := range rd {
		if rd[i] != byte(i) {
			t.Fatalf("byte %d differs", i)
		}
	}
}
