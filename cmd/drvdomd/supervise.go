package main

// ======================= crash-only supervision =======================
// In drvdom mode the uinit (this process, the "parent") does the boot work
// and then runs the backends in a child process, `drvdomd worker`, which it
// restarts with bounded exponential backoff when it dies. The worker
// resumes every device from xenstore (the xenbus Manager reconnects devices
// left Connected) and every ring from its journal (internal/journal).
//
// Health: the worker writes one byte to its heartbeat pipe (fd 3) every
// beatEvery while its own checks pass (xenstore answers, no ring stalled).
// The parent pets Xen's watchdog only while the last beat is fresh and its
// own supervision loop is alive: a hung worker (SIGSTOP, deadlock, stalled
// ring) or a hung parent stops the petting and Xen restarts the domain
// (on_watchdog="restart"); dom0's `drvdomctl supervise` re-attaches the
// guests' devices to the new domain.
// ======================================================================

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"drvdom/xenstore"
)

// Exit codes of `drvdomd worker` that the parent acts on.
const (
	exitFatal = 3 // a restart would not help (no Xen devices, bad config): stop, disarm
)

// errFatal is returned by the supervisor when the worker exited with exitFatal.
var errFatal = errors.New("worker: fatal error, not restarting")

// Backoff is a bounded exponential backoff: Min, doubling up to Max; a
// worker that ran healthy for ResetAfter starts again from Min.
type Backoff struct {
	Min, Max, ResetAfter time.Duration
	cur                  time.Duration
}

// Reset makes the next delay Min again.
func (b *Backoff) Reset() { b.cur = 0 }

// Next returns the delay before the next start of a worker that ran for
// ran before it exited.
func (b *Backoff) Next(ran time.Duration) time.Duration {
	if ran >= b.ResetAfter || b.cur == 0 {
		b.cur = b.Min
		return b.cur
	}
	b.cur = min(2*b.cur, b.Max)
	return b.cur
}

// Health is what the watchdog feeder asks before each keepalive: the
// worker's last heartbeat and the supervision loop's last turn must both be
// within Stale. Until the supervisor arms it (boot: modules, network) it is
// healthy; once armed, the first worker has StartGrace to send its first
// heartbeat. Safe for concurrent use.
//
// A turn of the supervision loop more than Stale/2 after the one before
// is a stall of the whole domain, not of the worker: the supervisor did
// not run either (a PV console write holds the domain's only vCPU in the
// kernel until dom0's xenconsoled drains it, seen in the lab for 21-65 s;
// or the domain was paused). The worker's heartbeat (or its start grace)
// is then judged from the end of the stall, so a stall is never taken for
// a hung worker and answered with a SIGQUIT and a restart.
type Health struct {
	Stale      time.Duration
	StartGrace time.Duration
	now        func() time.Time

	mu       sync.Mutex
	armed    time.Time
	lastBeat time.Time
	lastLoop time.Time
	resumed  time.Time // end of the latest stall
	beats    uint64
}

// NewHealth returns an unarmed Health.
func NewHealth(stale, startGrace time.Duration) *Health {
	return &Health{Stale: stale, StartGrace: startGrace, now: time.Now}
}

// Arm starts checking: the supervisor runs.
func (h *Health) Arm() {
	h.mu.Lock()
	h.armed = h.now()
	h.lastLoop = h.armed
	h.mu.Unlock()
}

// Beat records a heartbeat from the worker.
func (h *Health) Beat() {
	h.mu.Lock()
	h.lastBeat = h.now()
	h.beats++
	h.mu.Unlock()
}

// Loop records a turn of the supervision loop. It returns how long the
// domain stalled before this turn (0: it did not; see Health).
func (h *Health) Loop() (stalled time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	if gap := now.Sub(h.lastLoop); !h.lastLoop.IsZero() && gap > h.Stale/2 {
		h.resumed = now
		stalled = gap
	}
	h.lastLoop = now
	return stalled
}

// Beats returns the number of heartbeats received.
func (h *Health) Beats() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.beats
}

// Check returns nil while both the worker and the supervision loop are alive.
func (h *Health) Check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	// The worker is judged from its last beat, its start or the end of
	// the latest stall, whichever came last.
	since := func(t time.Time) time.Duration {
		if h.resumed.After(t) {
			t = h.resumed
		}
		return now.Sub(t)
	}
	switch {
	case h.armed.IsZero():
		return nil // booting: the parent itself is making progress
	case h.lastBeat.IsZero() && since(h.armed) <= h.StartGrace:
		return nil // the first worker is starting
	case h.lastBeat.IsZero():
		return fmt.Errorf("no worker heartbeat %v after the supervisor started", now.Sub(h.armed).Round(time.Millisecond))
	case since(h.lastBeat) > h.Stale:
		return fmt.Errorf("worker heartbeat %v old", now.Sub(h.lastBeat).Round(time.Millisecond))
	case now.Sub(h.lastLoop) > h.Stale:
		return fmt.Errorf("supervision loop stuck for %v", now.Sub(h.lastLoop).Round(time.Millisecond))
	}
	return nil
}

// Supervisor runs the worker and restarts it.
type Supervisor struct {
	// Command returns the worker's command (not started). The supervisor
	// adds the heartbeat pipe as ExtraFiles[0] (fd 3 in the worker).
	Command func() *exec.Cmd
	Health  *Health
	Backoff Backoff
	// LoopEvery is how often the loop proves it is alive (Health.Loop).
	LoopEvery time.Duration
	// StopGrace is how long a worker has after SIGTERM before SIGKILL.
	StopGrace time.Duration
	Log       *slog.Logger
	// QuitAfter: a worker whose health has failed this long gets SIGQUIT
	// (goroutine dump on the console, exit, restart); 0: never.
	QuitAfter time.Duration
	// HealthyReset: a worker that sent heartbeats (it passed its own
	// health check: it was serving) and ran at least this long before it
	// died is restarted at once and the backoff starts again from Min: it
	// was killed or crashed while serving, which is no start-up crash
	// loop (at most one start per HealthyReset), and every moment it is
	// down stalls the guests. 0: only Backoff.ResetAfter resets the backoff.
	HealthyReset time.Duration
	// Files, if set, keeps the worker's TAP queue files across its
	// restarts (filestore.go).
	Files *fileStore

	starts    int
	lastDelay time.Duration // the wait before the latest restart
	mu        sync.Mutex
	cur       *os.Process // the running worker
}

// Signal sends sig to the running worker (fault injection).
func (s *Supervisor) Signal(sig os.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return errors.New("no worker running")
	}
	return s.cur.Signal(sig)
}

// LastDelay returns how long the supervisor waited before the latest
// restart (0: at once).
func (s *Supervisor) LastDelay() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastDelay
}

// Starts returns how many times the worker was started.
func (s *Supervisor) Starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
}

// Run starts the worker and restarts it whenever it exits, until ctx ends
// (the worker gets SIGTERM, then SIGKILL after StopGrace) or the worker
// exits with exitFatal (errFatal).
func (s *Supervisor) Run(ctx context.Context) error {
	tick := time.NewTicker(s.LoopEvery)
	defer tick.Stop()
	s.Health.Arm()
	for {
		started := time.Now()
		beats := s.Health.Beats()
		code, err := s.runOnce(ctx, tick)
		ran := time.Since(started)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			s.Log.Error("worker did not start", "err", err)
		} else if code == exitFatal {
			return errFatal
		}
		var delay time.Duration // a worker that died serving: at once
		if err == nil && s.HealthyReset > 0 && ran >= s.HealthyReset && s.Health.Beats() > beats {
			s.Backoff.Reset()
		} else {
			delay = s.Backoff.Next(ran)
		}
		s.Log.Warn("worker exited; restarting", "code", code, "ran", ran.Round(time.Millisecond), "after", delay)
		s.mu.Lock()
		s.lastDelay = delay
		s.mu.Unlock()
		t := time.NewTimer(delay)
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-tick.C:
				s.turn()
			case <-t.C:
				break wait
			}
		}
	}
}

// turn records a turn of the supervision loop, whether a worker runs or the
// supervisor waits out a restart's backoff, and logs a stall of the domain.
func (s *Supervisor) turn() {
	if d := s.Health.Loop(); d > 0 {
		s.Log.Warn("the domain stalled: the supervision loop ran late; heartbeats are judged from now", "gap", d.Round(time.Millisecond))
	}
}

// runOnce runs one worker to its end and returns its exit code.
func (s *Supervisor) runOnce(ctx context.Context, tick *time.Ticker) (int, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return -1, fmt.Errorf("heartbeat pipe: %w", err)
	}
	cmd := s.Command()
	cmd.ExtraFiles = append([]*os.File{w}, cmd.ExtraFiles...)
	var store *net.UnixConn
	passed := func() {}
	if s.Files != nil {
		var aerr error
		if store, passed, aerr = s.Files.attach(cmd); aerr != nil {
			s.Log.Warn("worker starts without the file store", "err", aerr)
		}
	}
	err = cmd.Start()
	w.Close() // the worker holds the write end; EOF when it dies
	passed()  // the same for the store's socket and the kept files
	if err != nil {
		r.Close()
		if store != nil {
			store.Close()
		}
		return -1, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	storeDone := make(chan struct{})
	if store != nil {
		go func() { // owned: ends at EOF, when the worker is gone
			defer close(storeDone)
			s.Files.serve(store)
		}()
	} else {
		close(storeDone)
	}
	s.mu.Lock()
	s.starts++
	n := s.starts
	s.cur = cmd.Process
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.cur = nil
		s.mu.Unlock()
	}()
	s.Log.Info("worker started", "pid", cmd.Process.Pid, "start", n)
	beatsDone := make(chan struct{})
	go func() { // owned: ends at EOF, when the worker (and every copy of w) is gone
		defer close(beatsDone)
		var b [64]byte
		for {
			n, err := r.Read(b[:])
			if n > 0 {
				s.Health.Beat()
			}
			if err != nil {
				return
			}
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // owned: ends when the worker does
	var werr error
	var sickSince time.Time
	dumped := false
loop:
	for {
		select {
		case werr = <-exited:
			break loop
		case <-tick.C:
			s.turn()
			// A worker without heartbeats for QuitAfter is hung: SIGQUIT
			// makes the Go runtime print every goroutine's stack on its
			// console (stderr) and exit, and it is restarted.
			if err := s.Health.Check(); err == nil {
				sickSince = time.Time{}
			} else if sickSince.IsZero() {
				sickSince = time.Now()
			} else if s.QuitAfter > 0 && !dumped && time.Since(sickSince) >= s.QuitAfter {
				dumped = true
				s.Log.Error("worker hung: SIGQUIT for a goroutine dump, then a restart", "pid", cmd.Process.Pid, "err", err)
				_ = cmd.Process.Signal(syscall.SIGQUIT)
			}
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Process.Signal(syscall.SIGCONT) // a stopped worker must see it
			select {
			case werr = <-exited:
			case <-time.After(s.StopGrace):
				_ = cmd.Process.Kill()
				werr = <-exited
			}
			break loop
		}
	}
	r.Close()
	<-beatsDone
	<-storeDone // every file the worker sent before it died is kept
	code := -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		return code, werr
	}
	return code, nil
}

// heartbeatFile is the worker's end of the heartbeat pipe, or nil when the
// worker was not started by a supervisor.
func heartbeatFile() io.Writer {
	f := os.NewFile(3, "heartbeat")
	if f == nil {
		return nil
	}
	if _, err := f.Stat(); err != nil {
		return nil
	}
	// Nothing the worker runs may hold the pipe open past its death: the
	// supervisor reads until EOF.
	syscall.CloseOnExec(3)
	return f
}

// heartbeat writes a byte to w every `every` while check passes, until ctx
// ends. A failing check is logged once per change.
func heartbeat(ctx context.Context, w io.Writer, every time.Duration, check func(context.Context) error, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	var failing bool
	for {
		err := check(ctx)
		switch {
		case err == nil:
			if failing {
				log.Info("worker healthy again")
			}
			failing = false
			if _, werr := w.Write([]byte{1}); werr != nil {
				log.Warn("heartbeat", "err", werr)
			}
		case !failing:
			failing = true
			log.Error("worker unhealthy: heartbeat withheld", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// FaultKey (under the driver domain's home) injects a fault when drvdomd
// runs with drvdom.faults=1: "kill-worker" (SIGKILL: the supervisor
// restarts it, the rings resume from their journals), "stop-worker"
// (SIGSTOP: the heartbeat stops, so do the watchdog keepalives and Xen
// restarts the domain), "cont-worker" (SIGCONT). drvdomd clears the key and
// logs "fault injected".
const FaultKey = "control/drvdomd-fault"

// faultStore is the xenstore client faultHook needs.
type faultStore interface {
	Read(ctx context.Context, path string) (string, error)
	Write(ctx context.Context, path, value string) error
	Watch(ctx context.Context, path, token string) (*xenstore.Watch, error)
}

// faultHook serves FaultKey until ctx ends.
func faultHook(ctx context.Context, store faultStore, self uint16, sup *Supervisor, log *slog.Logger) {
	path := fmt.Sprintf("/local/domain/%d/%s", self, FaultKey)
	w, err := store.Watch(ctx, path, "drvdomd-fault")
	if err != nil {
		log.Warn("fault injection unavailable", "key", path, "err", err)
		return
	}
	defer w.Close()
	log.Warn("fault injection enabled (drvdom.faults=1)", "key", path)
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.Events():
			if !ok {
				return
			}
		}
		v, err := store.Read(ctx, path)
		if err != nil || strings.TrimSpace(v) == "" {
			continue
		}
		var sig syscall.Signal
		switch strings.TrimSpace(v) {
		case "kill-worker":
			sig = syscall.SIGKILL
		case "stop-worker":
			sig = syscall.SIGSTOP
		case "cont-worker":
			sig = syscall.SIGCONT
		default:
			log.Warn("unknown fault", "fault", truncate(v, 32))
			_ = store.Write(ctx, path, "")
			continue
		}
		err = sup.Signal(sig)
		log.Warn("fault injected", "fault", strings.TrimSpace(v), "err", err)
		if err := store.Write(ctx, path, ""); err != nil {
			log.Warn("clear fault key", "err", err)
		}
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
