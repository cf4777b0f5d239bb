//go:build linux

package blkback_test

import (
	"bytes"
	"sync"
	"testing"

	"drvdom/blkback"
	"drvdom/internal/xensim/blkfront"
)

// TestFixedBuffersBounce: with registered bounce buffers, transfers of 32
// KiB to 128 KiB go through them (Bounced counts them) and the bytes
// arrive intact both ways; 4 KiB and 1 MiB transfers, and transfers
// finding every buffer busy (16 concurrent requests, 2 buffers), go to the
// frontend's pages.
func TestFixedBuffersBounce(t *testing.T) {
	for _, persistent := range []bool{true, false} {
		name := "map"
		if persistent {
			name = "persistent"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, func(d *blkback.Driver) { d.Engine, d.FixedBuffers = blkback.EngineURing, 2 })
			path := tempDisk(t, 8<<20)
			f, d := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: blkback.ProtoX86_64, Persistent: persistent})
			ctx := ctxT(t)
			if st := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Engine != "" }); st.Engine != "uring" {
				t.Fatalf("engine %q, want uring", st.Engine)
			}
			// One at a time, written then read: 4 KiB (not bounced), 32
			// KiB and 128 KiB (bounced).
			sizes := []int{4096, 32 << 10, 128 << 10}
			for i, n := range sizes {
				data := pattern(n, uint64(i+1))
				sector := uint64(i) * 512
				if err := f.Write(ctx, 0, sector, data); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(readFile(t, path)[sector*512:sector*512+uint64(n)], data) {
					t.Fatalf("%d-byte write not on disk", n)
				}
				got := make([]byte, n)
				if err := f.Read(ctx, 0, sector, got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("%d-byte read differs", n)
				}
			}
			st := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Reads == 3 && s.Writes == 3 })
			if st.Bounced != 4 {
				t.Fatalf("bounced %d transfers, want the 4 of 32 KiB to 128 KiB", st.Bounced)
			}
			// 1 MiB: larger than a buffer.
			big := pattern(1<<20, 9)
			if err := f.Write(ctx, 0, 4096, big); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(big))
			if err := f.Read(ctx, 0, 4096, got); err != nil || !bytes.Equal(got, big) {
				t.Fatalf("1 MiB read back: %v, equal %v", err, bytes.Equal(got, big))
			}
			if st := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Reads == 4 && s.Writes == 4 }); st.Bounced != 4 {
				t.Fatalf("bounced %d after 1 MiB transfers, want still 4", st.Bounced)
			}
			// 16 at once on 2 buffers: all intact, whichever way each went.
			var wg sync.WaitGroup
			errs := make([]error, 16)
			bufs := make([][]byte, 16)
			for i := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					bufs[i] = make([]byte, 32<<10)
					errs[i] = f.Read(ctx, 0, uint64(i)*64, bufs[i])
				}()
			}
			wg.Wait()
			disk := readFile(t, path)
			for i := range 16 {
				if errs[i] != nil || !bytes.Equal(bufs[i], disk[i*64*512:i*64*512+32<<10]) {
					t.Fatalf("concurrent read %d: %v", i, errs[i])
				}
			}
		})
	}
}
