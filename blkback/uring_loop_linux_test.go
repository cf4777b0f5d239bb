package blkback_test

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"drvdom/blkback"
	"drvdom/internal/xensim/blkfront"
)

// TestRingThreadLetsTheWorldStop: a busy ring's thread waits in
// io_uring_enter keeping its P (RawSyscall), and a garbage collection must
// stop every P. After the I/O stops, with the ring's thread waiting again,
// runtime.GC returns: the stop of the world's preemption signal ends the
// wait with EINTR (it also returns with rawWaitTimeout raised to an hour),
// and the loop reaches a safe point.
func TestRingThreadLetsTheWorldStop(t *testing.T) {
	e := newEnv(t, func(d *blkback.Driver) { d.Engine, d.RingThreads = blkback.EngineURing, true })
	f, d := e.attach(t, 51712, tempDisk(t, 1<<20), "w", blkfront.Config{Protocol: blkback.ProtoX86_64, Persistent: true})
	ctx := ctxT(t)
	got := make([]byte, 4096)
	for i := range 20 {
		data := pattern(4096, uint64(i))
		if err := f.Write(ctx, 0, uint64(i*8), data); err != nil {
			t.Fatal(err)
		}
		if err := f.Read(ctx, 0, uint64(i*8), got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d: %v (data equal %v)", i, err, bytes.Equal(got, data))
		}
	}
	if st := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Reads == 20 }); st.Engine != "uring-rings" {
		t.Fatalf("engine %q, want uring-rings", st.Engine)
	}
	for range 3 {
		done := make(chan struct{})
		go func() { runtime.GC(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("a garbage collection could not stop the world: the ring's thread keeps its P")
		}
		if err := f.Write(ctx, 0, 0, got); err != nil { // busy again
			t.Fatal(err)
		}
	}
}
