//go:build linux

package blkback

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestIoctlNumbers pins the block ioctls to <linux/fs.h>.
func TestIoctlNumbers(t *testing.T) {
	ioc := func(dir, typ, nr, size uint32) uint32 { return dir<<30 | size<<16 | typ<<8 | nr }
	pins := []struct {
		name      string
		got, want uint32
	}{
		{"BLKSSZGET", ioctlBLKSSZGET, ioc(0, 0x12, 104, 0)},
		{"BLKGETSIZE64", ioctlBLKGETSIZE64, ioc(2, 0x12, 114, 8)},
		{"BLKDISCARD", ioctlBLKDISCARD, ioc(0, 0x12, 119, 0)},
		{"BLKPBSZGET", ioctlBLKPBSZGET, ioc(0, 0x12, 123, 0)},
		{"BLKSECDISCARD", ioctlBLKSECDISCARD, ioc(0, 0x12, 125, 0)},
		{"x/sys BLKSSZGET", ioctlBLKSSZGET, unix.BLKSSZGET},
		{"x/sys BLKGETSIZE64", ioctlBLKGETSIZE64, unix.BLKGETSIZE64},
		{"x/sys BLKDISCARD", ioctlBLKDISCARD, unix.BLKDISCARD},
		{"x/sys BLKPBSZGET", ioctlBLKPBSZGET, unix.BLKPBSZGET},
		{"x/sys BLKSECDISCARD", ioctlBLKSECDISCARD, unix.BLKSECDISCARD},
		{"FALLOC_FL_PUNCH_HOLE", unix.FALLOC_FL_PUNCH_HOLE, 2},
		{"FALLOC_FL_KEEP_SIZE", unix.FALLOC_FL_KEEP_SIZE, 1},
	}
	for _, p := range pins {
		if p.got != p.want {
			t.Errorf("%s = %#x, want %#x", p.name, p.got, p.want)
		}
	}
}

func tempDisk(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// alignedPages returns page-aligned memory (O_DIRECT needs it).
func alignedPages(t testing.TB, n int) []byte {
	b, err := unix.Mmap(-1, 0, n*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func TestFileDisk(t *testing.T) {
	for _, direct := range []bool{true, false} {
		p := tempDisk(t, 1<<20)
		d, err := OpenBacking(p, OpenOptions{NoDirect: !direct})
		if err != nil {
			t.Fatal(err)
		}
		fd := d.(*fileDisk)
		t.Logf("direct requested %v, got %v; discard %v", direct, fd.direct, fd.discard)
		if n, err := d.Size(); err != nil || n != 1<<20 {
			t.Fatalf("Size = %d, %v", n, err)
		}
		if d.LogicalBlockSize() != 512 {
			t.Errorf("logical %d", d.LogicalBlockSize())
		}
		mem := alignedPages(t, 3)
		for i := range mem {
			mem[i] = byte(i*7 + 1)
		}
		// Three buffers of odd lengths at sector offsets within pages.
		w := &IO{Bufs: [][]byte{mem[512:4096], mem[4096 : 4096+1024], mem[8192 : 8192+4096]}, Off: 8192}
		if err := d.WriteV(w); err != nil {
			t.Fatal(err)
		}
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
		onDisk, _ := os.ReadFile(p)
		want := append(append(append([]byte{}, mem[512:4096]...), mem[4096:4096+1024]...), mem[8192:8192+4096]...)
		if !bytes.Equal(onDisk[8192:8192+len(want)], want) {
			t.Fatal("file content differs from the written buffers")
		}
		rd := alignedPages(t, 3)
		r := &IO{Bufs: [][]byte{rd[0:3584], rd[4096 : 4096+1024], rd[8192:12288]}, Off: 8192}
		if err := d.ReadV(r); err != nil {
			t.Fatal(err)
		}
		got := append(append(append([]byte{}, rd[0:3584]...), rd[4096:4096+1024]...), rd[8192:12288]...)
		if !bytes.Equal(got, want) {
			t.Fatal("read back differs")
		}
		if fd.discard {
			if err := d.Discard(8192, 4096, false); err != nil {
				t.Fatal(err)
			}
			onDisk, _ = os.ReadFile(p)
			if !bytes.Equal(onDisk[8192:12288], make([]byte, 4096)) {
				t.Error("punched range is not zero")
			}
			if err := d.Discard(0, 4096, true); err == nil {
				t.Error("secure discard on a file succeeded")
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFileDiskReadOnlyAndErrors(t *testing.T) {
	p := tempDisk(t, 4096)
	d, err := OpenBacking(p, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if ok, _, _ := d.DiscardInfo(); ok {
		t.Error("read-only backing offers discard")
	}
	if err := d.WriteV(&IO{Bufs: [][]byte{alignedPages(t, 1)}, Off: 0}); err == nil {
		t.Error("write to a read-only fd succeeded")
	}
	if _, err := OpenBacking(filepath.Join(t.TempDir(), "missing"), OpenOptions{}); err == nil {
		t.Error("opened a missing file")
	}
	if _, err := OpenBacking(t.TempDir(), OpenOptions{}); err == nil {
		t.Error("opened a directory")
	}
	if _, err := OpenTarget("null:abc", OpenOptions{}); err == nil {
		t.Error("bad null size accepted")
	}
	n, err := OpenTarget("null:1048576", OpenOptions{})
	if err != nil || !n.Inline() {
		t.Fatalf("null target: %v", err)
	}
	if sz, _ := n.Size(); sz != 1<<20 {
		t.Errorf("null size %d", sz)
	}
}

func TestFileDiskTmpfsFallback(t *testing.T) {
	if _, err := os.Stat("/dev/shm"); err != nil {
		t.Skip("no /dev/shm tmpfs here")
	}
	dir, err := os.MkdirTemp("/dev/shm", "blkback")
	if err != nil {
		t.Skip("cannot create in /dev/shm:", err)
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "d")
	os.WriteFile(p, make([]byte, 8192), 0o600)
	d, err := OpenBacking(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := alignedPages(t, 1)
	copy(buf, "hello")
	if err := d.WriteV(&IO{Bufs: [][]byte{buf}, Off: 4096}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if string(got[4096:4101]) != "hello" {
		t.Error("write on tmpfs lost")
	}
}

// loopDevice attaches a file as a loop block device for the test, or skips
// when this machine cannot (not root, no loop driver).
func loopDevice(t *testing.T, file string, block int) string {
	t.Helper()
	out, err := exec.Command("losetup", "--find", "--show", "-b", strconv.Itoa(block), file).CombinedOutput()
	if err != nil {
		t.Skipf("cannot attach a loop device here (needs root and the loop driver): %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// TestBlockDevice serves a real block device: size, block sizes and
// BLKDISCARD through the ioctls, data through preadv/pwritev.
func TestBlockDevice(t *testing.T) {
	for _, block := range []int{512, 4096} {
		t.Run(strconv.Itoa(block), func(t *testing.T) {
			file := tempDisk(t, 4<<20)
			if err := os.WriteFile(file, bytes.Repeat([]byte{0xee}, 4<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			dev := loopDevice(t, file, block)
			b, err := OpenBacking(dev, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			fd := b.(*fileDisk)
			if !fd.device {
				t.Fatal("not detected as a block device")
			}
			if n, err := b.Size(); err != nil || n != 4<<20 {
				t.Fatalf("Size = %d, %v", n, err)
			}
			if b.LogicalBlockSize() != uint32(block) {
				t.Fatalf("logical block %d, want %d", b.LogicalBlockSize(), block)
			}
			ok, secure, gran := b.DiscardInfo()
			t.Logf("%s: direct %v discard %v secure %v granularity %d", dev, fd.direct, ok, secure, gran)
			mem := alignedPages(t, 2)
			for i := range mem {
				mem[i] = byte(i % 251)
			}
			if err := b.WriteV(&IO{Bufs: [][]byte{mem}, Off: 65536}); err != nil {
				t.Fatal(err)
			}
			if err := b.Flush(); err != nil {
				t.Fatal(err)
			}
			rd := alignedPages(t, 2)
			if err := b.ReadV(&IO{Bufs: [][]byte{rd[:4096], rd[4096:]}, Off: 65536}); err != nil || !bytes.Equal(rd, mem) {
				t.Fatalf("read back: %v", err)
			}
			if !ok {
				t.Skip("this loop device offers no discard")
			}
			if err := b.Discard(65536, 4096, false); err != nil {
				t.Fatal(err)
			}
			if err := b.ReadV(&IO{Bufs: [][]byte{rd[:4096]}, Off: 65536}); err != nil || !bytes.Equal(rd[:4096], make([]byte, 4096)) {
				t.Fatalf("discarded block reads %x..., %v", rd[:8], err)
			}
			if !secure {
				if err := b.Discard(0, 4096, true); err == nil {
					t.Fatal("secure discard succeeded on a device that refused the probe")
				}
			}
		})
	}
}
