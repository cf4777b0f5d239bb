package blkback_test

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"drvdom/blkback"
	"drvdom/internal/xensim/blkfront"
)

// TestStatsAllocatedBytesFollowDiscard: a file backing's drvdom-stats
// carry its allocated bytes, which grow with writes and shrink when the
// guest's discards punch holes (the lab's dom0 reads them to see that
// blkdiscard left holes); a block device has none.
func TestStatsAllocatedBytesFollowDiscard(t *testing.T) {
	path := tempDisk(t, 8<<20)
	f0, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Fallocate(int(f0.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 9<<20, 4096)
	f0.Close()
	if err != nil {
		t.Skipf("the test directory's filesystem cannot punch holes (%v): needs tmpfs, ext4 or the like", err)
	}
	e := newEnv(t, nil)
	f, d := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: blkback.ProtoX86_64})
	ctx := ctxT(t)
	data := pattern(1<<20, 5)
	for off := uint64(0); off < 4<<20/512; off += 1 << 20 / 512 {
		for i := 0; i < 1<<20; i += 11 * 4096 {
			n := min(11*4096, 1<<20-i)
			if err := f.Write(ctx, 0, off+uint64(i/512), data[i:i+n]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Flush(ctx, 0); err != nil {
		t.Fatal(err)
	}
	full := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.AllocatedBytes >= 4<<20 })
	if err := f.Discard(ctx, 0, 0, 4<<20/512, false); err != nil {
		t.Fatal(err)
	}
	holed := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.AllocatedBytes < 1<<20 })
	t.Logf("allocated %d bytes after 4 MiB of writes, %d after discarding them", full.AllocatedBytes, holed.AllocatedBytes)
	got := make([]byte, 4096)
	if err := f.Read(ctx, 0, 0, got); err != nil {
		t.Fatal(err)
	}
	for _, b := range got {
		if b != 0 {
			t.Fatal("a discarded block does not read back as zeroes")
		}
	}
}
