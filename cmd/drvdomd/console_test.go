package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// chunkRecorder records each write it is given and when.
type chunkRecorder struct {
	now    func() time.Time
	buf    bytes.Buffer
	sizes  []int
	at     []time.Time
	failAt int // fail the write that would make the total exceed this (0: never)
}

func (r *chunkRecorder) Write(b []byte) (int, error) {
	if r.failAt > 0 && r.buf.Len()+len(b) > r.failAt {
		return 0, errors.New("console gone")
	}
	r.sizes = append(r.sizes, len(b))
	r.at = append(r.at, r.now())
	return r.buf.Write(b)
}

// TestPacedWriter: a log line passes at once; a goroutine dump's worth of
// output goes in pieces of at most a chunk, the burst at once and then a
// chunk per interval, every byte in order; an idle spell refills the burst.
func TestPacedWriter(t *testing.T) {
	now := time.Unix(1000, 0)
	var slept time.Duration
	rec := &chunkRecorder{now: func() time.Time { return now }}
	p := newPacedWriter(rec)
	p.now = func() time.Time { return now }
	p.sleep = func(d time.Duration) { slept += d; now = now.Add(d) }

	line := "time=... level=INFO msg=\"worker started\"\n"
	if n, err := p.Write([]byte(line)); n != len(line) || err != nil || slept != 0 {
		t.Fatalf("a log line: %d, %v, slept %v", n, err, slept)
	}
	dump := []byte(strings.Repeat("goroutine 7 [select]:\nruntime.gopark(...)\n", 600)) // 24 KB
	if n, err := p.Write(dump); n != len(dump) || err != nil {
		t.Fatalf("dump: %d, %v", n, err)
	}
	if got := rec.buf.String(); got != line+string(dump) {
		t.Fatal("the bytes passed on differ from the bytes written")
	}
	for i, n := range rec.sizes {
		if n > consoleChunk {
			t.Fatalf("write %d passed on %d bytes, more than a chunk", i, n)
		}
	}
	// Past the burst, each chunk takes consoleEvery: the 24 KB after the
	// first 4 KB (less the line) take about 20 intervals.
	total := len(line) + len(dump)
	want := time.Duration(float64(total-consoleBurst) / consoleChunk * float64(consoleEvery))
	if slept < want-consoleEvery || slept > want+consoleEvery {
		t.Errorf("slept %v for %d bytes, want about %v", slept, total, want)
	}
	// Any window of 2 s passed on at most the burst plus 2 s at the rate.
	limit := consoleBurst + int(2*time.Second/consoleEvery)*consoleChunk
	for i := range rec.at {
		sum := 0
		for j := i; j < len(rec.at) && rec.at[j].Sub(rec.at[i]) < 2*time.Second; j++ {
			sum += rec.sizes[j]
		}
		if sum > limit {
			t.Fatalf("%d bytes within 2 s from write %d, limit %d", sum, i, limit)
		}
	}

	// After an idle minute the burst is back: 4 KB at once.
	now = now.Add(time.Minute)
	slept = 0
	if _, err := p.Write(make([]byte, consoleBurst)); err != nil || slept != 0 {
		t.Fatalf("burst after idling: %v, slept %v", err, slept)
	}

	// A failing console stops the write and says how much went out.
	rec2 := &chunkRecorder{now: func() time.Time { return now }, failAt: 2500}
	p2 := newPacedWriter(rec2)
	p2.now, p2.sleep = p.now, p.sleep
	if n, err := p2.Write(make([]byte, 5000)); err == nil || n != 2048 {
		t.Fatalf("failing console: %d, %v; want 2048 and the error", n, err)
	}
}

// TestWorkerConsole: a process given the pipe as its output (as a worker
// is) exits without waiting for the console, its output reaches the console
// whole and in order, in pieces no larger than a chunk, and the pipe holds
// a large goroutine dump (1 MiB, or the system's maximum).
func TestWorkerConsole(t *testing.T) {
	console := &lockedBuffer{}
	w, stop, err := workerConsole(console, 30*time.Second, quiet)
	if err != nil {
		t.Fatal(err)
	}
	size, err := unix.FcntlInt(w.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := workerPipeSize
	if b, err := os.ReadFile("/proc/sys/fs/pipe-max-size"); err == nil {
		if m, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && m < want {
			want = m
		}
	}
	if size < want {
		t.Errorf("pipe holds %d bytes, want %d", size, want)
	}

	dump := strings.Repeat("goroutine 7 [select]:\nruntime.gopark(0x0)\n", 1200) // 48 KB
	f := filepath.Join(t.TempDir(), "dump")
	if err := os.WriteFile(f, []byte(dump), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cat", f)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	stop()
	console.mu.Lock()
	defer console.mu.Unlock()
	if console.b.String() != dump {
		t.Fatalf("console got %d bytes, want the %d the process wrote, in order", console.b.Len(), len(dump))
	}
	if min := len(dump) / consoleChunk; console.writes < min {
		t.Errorf("%d console writes for %d bytes: not paced in chunks", console.writes, len(dump))
	}
}
