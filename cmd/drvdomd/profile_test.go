package main

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// runProfiler runs p until done (called every 20 ms) holds, then ends
// Run's context; it returns once Run returned, with how long it ran at
// most. It waits for what the test needs rather than for a time: a loaded
// machine (-race, parallel packages) starts Run late and stretches its
// windows (1.5 s for one whole 1 s window once was a bet). A run in which
// done never holds fails after a minute.
func runProfiler(t *testing.T, p *cpuProfiler, what string, done func() bool) time.Duration {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(ended)
		p.Run(ctx)
	}()
	ok := true
	for deadline := time.Now().Add(time.Minute); !done(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			ok = false
			break
		}
	}
	cancel()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if !ok {
		t.Fatalf("cpu profiler: no %s within a minute", what)
	}
	return time.Since(start)
}

var profileName = regexp.MustCompile(`^cpu-([0-9]+)-([0-9]+)\.pprof$`)

// profiles returns the names in dir that look like profiles of pid, oldest
// first, and every other name.
func profiles(t *testing.T, dir string, pid int) (mine, other []string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		m := profileName.FindStringSubmatch(e.Name())
		if m != nil && m[1] == strconv.Itoa(pid) {
			mine = append(mine, e.Name())
		} else {
			other = append(other, e.Name())
		}
	}
	slices.SortFunc(mine, func(a, b string) int { return cmp.Compare(profileSecs(t, a), profileSecs(t, b)) })
	return mine, other
}

func profileSecs(t *testing.T, name string) int64 {
	m := profileName.FindStringSubmatch(name)
	if m == nil {
		t.Fatalf("%q is not a profile name", name)
	}
	n, err := strconv.ParseInt(m[2], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkProfile fails unless path is a whole gzip stream holding a CPU
// profile (pprof's protobuf with its cpu/nanoseconds sample type).
func checkProfile(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("%s: no gzip magic: % x", path, b[:min(len(b), 8)])
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	raw, err := io.ReadAll(zr) // checks the trailer's CRC and length: a truncated file fails
	if err != nil {
		t.Fatalf("%s: incomplete gzip: %v", path, err)
	}
	if !bytes.Contains(raw, []byte("nanoseconds")) || !bytes.Contains(raw, []byte("cpu")) {
		t.Fatalf("%s: %d bytes without a CPU profile's sample type", path, len(raw))
	}
}

func burn(d time.Duration) {
	x := 1
	for end := time.Now().Add(d); time.Now().Before(end); {
		for range 10000 {
			x = x*31 + 7
		}
	}
	_ = x
}

// noOtherCPUProfile skips a test of the profiler under `go test
// -cpuprofile`, which holds the process's only CPU profile.
func noOtherCPUProfile(t *testing.T) {
	t.Helper()
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		t.Skipf("the process's CPU profile is taken (go test -cpuprofile?): %v", err)
	}
	pprof.StopCPUProfile()
}

func TestCPUProfilerWritesCompleteWindows(t *testing.T) {
	noOtherCPUProfile(t)
	dir := filepath.Join(t.TempDir(), "missing", "prof") // Run creates it
	pid := os.Getpid()
	p := &cpuProfiler{Dir: dir, Window: time.Second, Keep: CPUProfileKeep, Pid: pid, Log: quiet}
	seen := map[string]bool{}
	ran := runProfiler(t, p, "two whole windows", func() bool {
		burn(5 * time.Millisecond)
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			// Any file with a final name is complete, even mid-run.
			if profileName.MatchString(e.Name()) && !seen[e.Name()] {
				checkProfile(t, filepath.Join(dir, e.Name()))
				seen[e.Name()] = true
			}
		}
		return len(seen) >= 2
	})
	mine, other := profiles(t, dir, pid)
	if len(other) != 0 {
		t.Errorf("other files left in %s: %q (a temporary file?)", dir, other)
	}
	// The two whole windows seen and the partial one written at the end
	// (more whole ones if the poll was late), and no more windows of at
	// least a second than the run's length holds.
	if len(mine) < 3 || len(mine) > int(ran/p.Window)+1 {
		t.Fatalf("%d profiles after %v of 1 s windows: %q", len(mine), ran.Round(time.Millisecond), mine)
	}
	for i, name := range mine {
		checkProfile(t, filepath.Join(dir, name))
		if i > 0 && profileSecs(t, name) <= profileSecs(t, mine[i-1]) {
			t.Errorf("window start times not increasing: %q", mine)
		}
	}
	if p.failed {
		t.Error("a failure was logged")
	}
}

func TestCPUProfilerKeepsTheNewest(t *testing.T) {
	noOtherCPUProfile(t)
	dir := t.TempDir()
	pid := os.Getpid()
	old := []string{cpuProfileName(pid, time.Unix(100, 0)), cpuProfileName(pid, time.Unix(200, 0))}
	// A process that is gone: its partial window is removed; a live
	// one's (the parent's) stays.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	old = append(old, cpuProfileTemp(gone.Process.Pid))
	keepOthers := []string{cpuProfileName(pid+1, time.Unix(50, 0)), "notes.txt", "cpu-" + strconv.Itoa(pid) + "-x.pprof", cpuProfileTemp(os.Getppid())}
	for _, n := range append(slices.Clone(old), keepOthers...) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := &cpuProfiler{Dir: dir, Window: time.Second, Keep: 2, Pid: pid, Log: quiet}
	// One whole window of this run (more if the poll was late), then the
	// partial one at the end: the 2 newest.
	runProfiler(t, p, "whole window", func() bool {
		mine, _ := profiles(t, dir, pid)
		for _, n := range mine {
			if !slices.Contains(old, n) {
				return true
			}
		}
		return false
	})
	mine, other := profiles(t, dir, pid)
	if len(mine) != 2 {
		t.Fatalf("kept %q, want the 2 newest", mine)
	}
	for _, n := range mine {
		if slices.Contains(old, n) {
			t.Errorf("the old %s was kept: %q", n, mine)
		}
		checkProfile(t, filepath.Join(dir, n))
	}
	slices.Sort(other)
	want := slices.Sorted(slices.Values(keepOthers))
	if !slices.Equal(other, want) {
		t.Errorf("other files %q, want %q untouched", other, want)
	}
}

// lockedBuffer is a log sink for a goroutine's slog (or the console of
// workerConsole's copier), counting the writes it is given.
type lockedBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestCPUProfilerFailuresLoggedOnce(t *testing.T) {
	noOtherCPUProfile(t)
	t.Run("dir", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		var logs lockedBuffer
		dir := filepath.Join(file, "prof") // under a regular file: MkdirAll fails
		p := &cpuProfiler{Dir: dir, Window: 20 * time.Millisecond, Keep: 2, Pid: os.Getpid(), Log: slog.New(slog.NewTextHandler(&logs, nil))}
		runProfiler(t, p, "failure logged", failedThenWindows(&logs))
		if n := strings.Count(logs.String(), "cpu profiling failed"); n != 1 {
			t.Errorf("%d failures logged, want 1:\n%s", n, logs.String())
		}
		if !strings.Contains(logs.String(), dir) {
			t.Errorf("the failure does not name %s:\n%s", dir, logs.String())
		}
	})
	t.Run("busy", func(t *testing.T) {
		// Another CPU profile runs in the process: StartCPUProfile fails
		// and no temporary file stays behind.
		if err := pprof.StartCPUProfile(io.Discard); err != nil {
			t.Fatal(err)
		}
		defer pprof.StopCPUProfile()
		var logs lockedBuffer
		dir := t.TempDir()
		p := &cpuProfiler{Dir: dir, Window: 20 * time.Millisecond, Keep: 2, Pid: os.Getpid(), Log: slog.New(slog.NewTextHandler(&logs, nil))}
		runProfiler(t, p, "failure logged", failedThenWindows(&logs))
		if n := strings.Count(logs.String(), "cpu profiling failed"); n != 1 {
			t.Errorf("%d failures logged, want 1:\n%s", n, logs.String())
		}
		if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
			t.Errorf("files left: %v %v", ents, err)
		}
	})
}

// failedThenWindows is runProfiler's done for a profiler that fails: the
// first failure logged and about 10 windows of 20 ms after it, which must
// not log it again.
func failedThenWindows(logs *lockedBuffer) func() bool {
	var first time.Time
	return func() bool {
		if first.IsZero() && strings.Contains(logs.String(), "cpu profiling failed") {
			first = time.Now()
		}
		return !first.IsZero() && time.Since(first) >= 200*time.Millisecond
	}
}

func TestParseCPUProfileWindowErrors(t *testing.T) {
	for _, tc := range []struct{ val, want string }{
		{"10", "want a duration"},
		{"soon", "want a duration"},
		{"999ms", "below the minimum 1s"},
		{"-5s", "below the minimum 1s"},
	} {
		_, err := parseCPUProfileWindow(tc.val)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseCPUProfileWindow(%q) = %v, want an error with %q", tc.val, err, tc.want)
		}
	}
	if d, err := parseCPUProfileWindow("1s"); err != nil || d != time.Second {
		t.Errorf("1s: %v %v", d, err)
	}
}
