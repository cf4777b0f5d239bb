//go:build linux

package blkback

import (
	"testing"

	"drvdom/internal/uring"
)

// TestURingReadWrite drives the ring directly against a file.
func TestURingReadWrite(t *testing.T) {
	u, err := uring.New(8, true)
	if err != nil {
		t.Skip("io_uring not available here:", err) // a kernel or sysctl without io_uring
	}
	defer u.Close()
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
	if err := u.Submit(uring.OpWritev, fd, iov, n, 65536, 7); err != nil {
		t.Fatal(err)
	}
	rd := alignedPages(t, 2)
	r := &IO{Bufs: [][]byte{rd[:8192]}}
	var got []int32
	u.Reap(func(user uint64, res int32) bool {
		if user != 7 {
			t.Errorf("user_data %d", user)
		}
		got = append(got, res)
		iov, n := r.fillIovecs()
		if err := u.Submit(uring.OpReadv, fd, iov, n, 65536, 8); err != nil {
			t.Fatal(err)
		}
		return false
	}, nil)
	u.Reap(func(user uint64, res int32) bool {
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
