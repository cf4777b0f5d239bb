package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"drvdom/blkback"
	"drvdom/xenstore"
	"drvdom/xenstore/xenstored"
)

// fakeWorkerEnv makes the test binary act as a worker (see TestMain).
const fakeWorkerEnv = "DRVDOMD_FAKE_WORKER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeWorkerEnv); mode != "" {
		os.Exit(fakeWorker(mode))
	}
	os.Exit(m.Run())
}

// fakeWorker: "beat" beats every 10 ms until SIGTERM (exit 0); "exit:N"
// beats once and exits N; "silent" never beats.
func fakeWorker(mode string) int {
	hb := os.NewFile(3, "heartbeat")
	switch {
	case mode == "beat":
		term := make(chan os.Signal, 1)
		signalNotify(term)
		for {
			hb.Write([]byte{1})
			select {
			case <-term:
				return 0
			case <-time.After(10 * time.Millisecond):
			}
		}
	case strings.HasPrefix(mode, "exit:"):
		hb.Write([]byte{1})
		n, _ := strconv.Atoi(strings.TrimPrefix(mode, "exit:"))
		return n
	case mode == "silent":
		time.Sleep(time.Hour)
	case strings.HasPrefix(mode, "store:"):
		return fakeStoreWorker(strings.TrimPrefix(mode, "store:"))
	}
	return 99
}

func fakeCommand(mode string, last *atomic.Pointer[exec.Cmd]) func() *exec.Cmd {
	return func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fakeWorkerEnv+"="+mode)
		if last != nil {
			last.Store(cmd)
		}
		return cmd
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second, ResetAfter: 30 * time.Second}
	var got []time.Duration
	for range 7 {
		got = append(got, b.Next(time.Second))
	}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("delays %v, want %v ms", got, want)
		}
	}
	if d := b.Next(31 * time.Second); d != b.Min {
		t.Errorf("after a healthy run: %v, want %v", d, b.Min)
	}
	if d := b.Next(0); d != 2*b.Min {
		t.Errorf("then %v, want %v", d, 2*b.Min)
	}
}

func TestHealthCheck(t *testing.T) {
	now := time.Unix(1000, 0)
	h := NewHealth(5*time.Second, 10*time.Second)
	h.now = func() time.Time { return now }
	// run lets d pass with the supervision loop turning every second, as
	// the supervisor's does.
	run := func(d time.Duration) {
		for end := now.Add(d); now.Before(end); {
			now = now.Add(time.Second)
			if s := h.Loop(); s != 0 {
				t.Fatalf("a stall of %v reported with the loop turning every second", s)
			}
		}
	}
	if err := h.Check(); err != nil {
		t.Fatalf("booting (unarmed): %v", err)
	}
	h.Arm()
	run(9 * time.Second)
	if err := h.Check(); err != nil {
		t.Fatalf("first worker starting: %v", err)
	}
	run(2 * time.Second)
	if err := h.Check(); err == nil {
		t.Fatal("healthy with no heartbeat after the start grace")
	}
	h.Beat()
	if err := h.Check(); err != nil {
		t.Fatalf("after a beat: %v", err)
	}
	run(6 * time.Second)
	if err := h.Check(); err == nil || !strings.Contains(err.Error(), "heartbeat") {
		t.Fatalf("stale heartbeat: %v", err)
	}
	h.Beat()
	run(time.Second)
	now = now.Add(6 * time.Second) // the loop does not turn
	if err := h.Check(); err == nil || !strings.Contains(err.Error(), "heartbeat") {
		t.Fatalf("stale heartbeat, loop stuck: %v", err)
	}
	h.Beat()
	if err := h.Check(); err == nil || !strings.Contains(err.Error(), "supervision loop") {
		t.Fatalf("stuck supervision loop: %v", err)
	}
	h.Loop()
	if err := h.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestHealthStall: a turn of the loop long after the one before is a
// stall of the whole domain (the lab's console writes held its vCPU for
// 21 s): the worker, which could not run either, gets Stale from the end
// of the stall to beat again, and only then is hung.
func TestHealthStall(t *testing.T) {
	now := time.Unix(1000, 0)
	h := NewHealth(5*time.Second, 10*time.Second)
	h.now = func() time.Time { return now }
	h.Arm()
	now = now.Add(time.Second)
	h.Loop()
	h.Beat()
	now = now.Add(2 * time.Second)
	if s := h.Loop(); s != 0 {
		t.Fatalf("a 2 s turn taken for a stall of %v", s)
	}
	now = now.Add(20 * time.Second)
	if s := h.Loop(); s != 20*time.Second {
		t.Fatalf("stall reported as %v, want 20s", s)
	}
	if err := h.Check(); err != nil {
		t.Fatalf("right after a stall: %v", err)
	}
	for i := 0; i < 5; i++ {
		now = now.Add(time.Second)
		h.Loop()
	}
	if err := h.Check(); err != nil {
		t.Fatalf("Stale after the stall: %v", err)
	}
	now = now.Add(time.Second)
	h.Loop()
	if err := h.Check(); err == nil || !strings.Contains(err.Error(), "worker heartbeat 28s old") {
		t.Fatalf("no beat for Stale after the stall: %v", err)
	}
	h.Beat()
	if err := h.Check(); err != nil {
		t.Fatal(err)
	}

	// The first worker's start grace counts from the stall's end as well.
	now = time.Unix(2000, 0)
	h = NewHealth(5*time.Second, 10*time.Second)
	h.now = func() time.Time { return now }
	h.Arm()
	now = now.Add(30 * time.Second)
	h.Loop()
	if err := h.Check(); err != nil {
		t.Fatalf("start grace after a stall: %v", err)
	}
	for i := 0; i < 11; i++ {
		now = now.Add(time.Second)
		h.Loop()
	}
	if err := h.Check(); err == nil || !strings.Contains(err.Error(), "no worker heartbeat") {
		t.Fatalf("start grace over: %v", err)
	}
}

func newSup(cmd func() *exec.Cmd) *Supervisor {
	return &Supervisor{Command: cmd, Health: NewHealth(200*time.Millisecond, 0),
		Backoff:   Backoff{Min: 5 * time.Millisecond, Max: 40 * time.Millisecond, ResetAfter: time.Hour},
		LoopEvery: 10 * time.Millisecond, StopGrace: 2 * time.Second, Log: quiet}
}

func runSup(t *testing.T, s *Supervisor) (context.CancelFunc, <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() { done <- s.Run(ctx); close(finished) }()
	t.Cleanup(func() { cancel(); <-finished })
	return cancel, done
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A worker that keeps dying is restarted, with growing delays.
func TestSupervisorRestartsWorker(t *testing.T) {
	s := newSup(fakeCommand("exit:1", nil))
	start := time.Now()
	cancel, done := runSup(t, s)
	waitFor(t, "5 starts", func() bool { return s.Health.Beats() >= 5 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s.Starts() < 5 {
		t.Errorf("%d starts", s.Starts())
	}
	// 5+10+20+40 ms of backoff at least before the fifth start.
	if el := time.Since(start); el < 75*time.Millisecond {
		t.Errorf("5 starts in %v: backoff not applied", el)
	}
}

// TestSupervisorStallDuringBackoff: a stall of the domain while the
// supervisor waits out a restart's backoff is logged as one while a worker
// runs is (both turns go through Supervisor.turn).
func TestSupervisorStallDuringBackoff(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Unix(1000, 0).UnixNano())
	s := newSup(fakeCommand("exit:1", nil))
	s.Health.now = func() time.Time { return time.Unix(0, clock.Load()) }
	s.Backoff = Backoff{Min: time.Hour, Max: time.Hour, ResetAfter: time.Hour}
	logs := &lockedBuffer{}
	s.Log = slog.New(slog.NewTextHandler(logs, nil))
	runSup(t, s)
	waitFor(t, "the worker's exit", func() bool { return strings.Contains(logs.String(), "worker exited; restarting") })
	if strings.Contains(logs.String(), "stalled") {
		t.Fatalf("a stall logged before any: %s", logs)
	}
	clock.Add(int64(20 * time.Second))
	waitFor(t, "the stall logged", func() bool { return strings.Contains(logs.String(), "the domain stalled") })
	if !strings.Contains(logs.String(), "gap=20s") {
		t.Errorf("stall logged without its gap: %s", logs)
	}
	if n := s.Starts(); n != 1 {
		t.Errorf("%d starts, want 1 (still in the backoff)", n)
	}
}

func TestSupervisorFatalWorker(t *testing.T) {
	s := newSup(fakeCommand("exit:3", nil))
	_, done := runSup(t, s)
	select {
	case err := <-done:
		if !errors.Is(err, errFatal) {
			t.Fatalf("Run: %v, want errFatal", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a fatal worker is restarted")
	}
	if s.Starts() != 1 {
		t.Errorf("%d starts", s.Starts())
	}
}

func TestSupervisorStartFailureRetries(t *testing.T) {
	// The path is made here, not in the command func: that runs on the
	// supervisor's goroutine (t.TempDir's failure would Goexit it) and may
	// run again while the test is cleaning up.
	missing := filepath.Join(t.TempDir(), "missing")
	var n atomic.Int32
	s := newSup(func() *exec.Cmd { n.Add(1); return exec.Command(missing) })
	cancel, done := runSup(t, s)
	// Retried after its backoff: wait for it rather than for a fixed
	// time (100 ms once saw one attempt on a loaded machine).
	waitFor(t, "a second start attempt", func() bool { return n.Load() >= 2 })
	cancel()
	<-done
	if s.Health.Check() == nil {
		t.Error("healthy without a worker")
	}
}

// A stopped (hung) worker makes the health check fail; it recovers when
// the worker runs again; a stop of the supervisor terminates the worker.
func TestSupervisorHungWorker(t *testing.T) {
	var last atomic.Pointer[exec.Cmd]
	s := newSup(fakeCommand("beat", &last))
	cancel, done := runSup(t, s)
	waitFor(t, "healthy", func() bool { return s.Health.Beats() > 0 && s.Health.Check() == nil })
	pid := last.Load().Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "unhealthy after SIGSTOP", func() bool { return s.Health.Check() != nil })
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "healthy after SIGCONT", func() bool { return s.Health.Check() == nil })
	if s.Starts() != 1 {
		t.Errorf("a hung worker was restarted (%d starts): the watchdog, not the supervisor, handles hangs", s.Starts())
	}
	syscall.Kill(pid, syscall.SIGSTOP) // stopped again at shutdown: still terminated
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("worker %d still exists after the supervisor stopped", pid)
	}
}

func TestSupervisorSilentWorkerUnhealthy(t *testing.T) {
	s := newSup(fakeCommand("silent", nil))
	s.StopGrace = 50 * time.Millisecond // it ignores nothing, but SIGTERM kills it anyway
	cancel, done := runSup(t, s)
	// Waited for, not slept for: 300 ms did not promise a loaded machine
	// had started the supervisor and its worker.
	waitFor(t, "the silent worker started", func() bool { return s.Starts() >= 1 })
	waitFor(t, "a worker that never beats unhealthy", func() bool { return s.Health.Check() != nil })
	cancel()
	<-done
}

// The watchdog gets no keepalives while health fails.
func TestFeedWatchdogFollowsHealth(t *testing.T) {
	p := filepath.Join(t.TempDir(), "watchdog")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var ok atomic.Bool
	healthy := func() error {
		if ok.Load() {
			return nil
		}
		return errors.New("sick")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var disarm atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); feedWatchdog(ctx, p, 5*time.Millisecond, healthy, &disarm, quiet) }()
	time.Sleep(50 * time.Millisecond)
	b, _ := os.ReadFile(p)
	if len(b) != 0 {
		t.Errorf("%d keepalives while unhealthy", len(b))
	}
	ok.Store(true)
	// Keepalives every 5 ms once healthy: wait for three (50 ms once saw
	// one on a loaded machine).
	waitFor(t, "three keepalives once healthy", func() bool {
		b, _ := os.ReadFile(p)
		return len(b) >= 3
	})
	cancel()
	wg.Wait()
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) Len() int { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Len() }

func TestHeartbeatWithheld(t *testing.T) {
	var out lockedBuf
	var fail atomic.Bool
	fail.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		heartbeat(ctx, &out, 5*time.Millisecond, func(context.Context) error {
			if fail.Load() {
				return errors.New("ring stalled")
			}
			return nil
		}, quiet)
	}()
	time.Sleep(40 * time.Millisecond)
	if out.Len() != 0 {
		t.Errorf("%d beats while failing", out.Len())
	}
	fail.Store(false)
	// Loaded machines (-race, parallel builds) stretch 5 ms ticks: wait
	// for the beats rather than a fixed time.
	for deadline := time.Now().Add(5 * time.Second); out.Len() < 3 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	if out.Len() < 3 {
		t.Errorf("%d beats once healthy", out.Len())
	}
}

type stalled struct{ err error }

func (s stalled) Stalled(time.Duration) error { return s.err }

func TestWorkerCheck(t *testing.T) {
	ctx := context.Background()
	storeOK := func(context.Context) error { return nil }
	if err := workerCheck(storeOK, []any{stalled{}, 7})(ctx); err != nil {
		t.Fatal(err)
	}
	if err := workerCheck(func(context.Context) error { return fmt.Errorf("boom") }, []any{})(ctx); err == nil {
		t.Error("xenstore failure passes")
	}
	if err := workerCheck(storeOK, []any{stalled{err: errors.New("vbd 2/51712 queue 0 stalled")}})(ctx); err == nil {
		t.Error("stalled ring passes")
	}
}

// blkback's driver is a stallChecker: the worker's health sees its rings.
var _ stallChecker = (*blkback.Driver)(nil)

// dom0 writes kill-worker under the driver domain's control/: the worker
// dies (SIGKILL) and the supervisor starts another; stop-worker stops the
// heartbeat (the watchdog's cue).
func TestFaultHook(t *testing.T) {
	srv := xenstored.New()
	defer srv.Close()
	srv.IntroduceDomain(1)
	dd := xenstore.NewClient(srv.Connect(1))
	defer dd.Close()
	d0 := xenstore.NewClient(srv.Connect(0))
	defer d0.Close()
	var last atomic.Pointer[exec.Cmd]
	s := newSup(fakeCommand("beat", &last))
	runSup(t, s)
	waitFor(t, "first worker beating", func() bool { return s.Health.Beats() > 0 })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); faultHook(ctx, dd, 1, s, quiet) }()
	defer func() { cancel(); wg.Wait() }()
	key := "/local/domain/1/" + FaultKey
	time.Sleep(50 * time.Millisecond) // the watch is set
	if err := d0.Write(ctx, key, "kill-worker"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "worker restarted", func() bool { return s.Starts() >= 2 })
	waitFor(t, "key cleared", func() bool { v, _ := d0.Read(ctx, key); return v == "" })
	waitFor(t, "healthy again", func() bool { return s.Health.Check() == nil })
	if err := d0.Write(ctx, key, "stop-worker"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "unhealthy after stop-worker", func() bool { return s.Health.Check() != nil })
	if err := d0.Write(ctx, key, "cont-worker"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "healthy after cont-worker", func() bool { return s.Health.Check() == nil })
}

// A worker killed while serving (it beat, and ran HealthyReset) comes back
// at once every time; one that dies at once still backs off.
func TestSupervisorKilledHealthyWorkerRestartsAtOnce(t *testing.T) {
	var last atomic.Pointer[exec.Cmd]
	s := newSup(fakeCommand("beat", &last))
	s.Backoff = Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second, ResetAfter: time.Hour}
	s.HealthyReset = 100 * time.Millisecond
	cancel, done := runSup(t, s)
	for i := 1; i <= 5; i++ {
		waitFor(t, "worker started", func() bool { return s.Starts() == i && last.Load() != nil && last.Load().Process != nil })
		beats := s.Health.Beats()
		waitFor(t, "worker beating", func() bool { return s.Health.Beats() > beats })
		time.Sleep(150 * time.Millisecond) // serving, with heartbeats, past HealthyReset
		if err := s.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "restart", func() bool { return s.Starts() == i+1 })
		// Without the reset the delays would be 50 ms, 100, 200, 400, 800.
		if d := s.LastDelay(); d != 0 {
			t.Errorf("kill %d: restarted after a %v backoff, want at once", i, d)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	quick := newSup(fakeCommand("exit:1", nil))
	quick.Backoff = Backoff{Min: 20 * time.Millisecond, Max: 5 * time.Second, ResetAfter: time.Hour}
	quick.HealthyReset = 10 * time.Second // each run is shorter: a start-up crash
	start := time.Now()
	cancel, done = runSup(t, quick)
	waitFor(t, "5 starts", func() bool { return quick.Starts() >= 5 })
	cancel()
	<-done
	if d := quick.LastDelay(); d < 20*time.Millisecond {
		t.Errorf("a worker that dies at once restarted after %v, want a backoff", d)
	}
	// 20+40+80+160 ms before the fifth start: a start-up crash loop backs off.
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("5 starts of a worker that dies at once in %v: backoff not applied", el)
	}
}
