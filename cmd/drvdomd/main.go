// Command drvdomd runs in the driver domain as the u-root init's uinit. At
// boot it mounts what is missing, loads the kernel modules, reads its config
// (image file, kernel command line, xenstore), puts the passed-through NIC in
// the bridge and then serves the guests' devices:
//
//   - drvdom mode (drvdom.backend=drvdom): the xenbus Manager with drvdom's
//     userspace backends (see drivers.go);
//   - kernel mode (drvdom.backend=kernel): the kernel's xen-blkback and
//     xen-netback, with drvdomd doing their hotplug (loop devices, bridge).
//
// In drvdom mode the backends run in a child process, `drvdomd worker`,
// which this process restarts when it dies and whose heartbeat gates the
// watchdog (see supervise.go).
//
// Subcommands: `drvdomd selftest` (checks of the Xen devices), `drvdomd
// config` (the effective configuration), `drvdomd worker` (the backends;
// started by drvdomd itself).
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

// ConfigFile is drvdomd's config in the image.
const ConfigFile = "/etc/drvdom/drvdomd.conf"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "selftest":
			return selftest(ctx, args[1:], stdout, stderr)
		case "worker":
			return worker(ctx, stderr)
		case "config":
			log := slog.New(slog.NewTextHandler(stderr, nil))
			cfg := loadConfig(log)
			fmt.Fprintf(stdout, "backend=%s\nnic=%s\nbridge=%s\nmodules=%s\nloglevel=%s\nwatchdog=%v\nwaitnic=%d\nfaults=%v\nscratch=%s\ncpuprofile=%s\ncpuprofile-window=%v\nblkgrants=%s\nblkrings=%s\nblkfixed=%d\n",
				cfg.Backend, cfg.NIC, cfg.Bridge, strings.Join(cfg.Modules, ","), cfg.LogLevel, cfg.Watchdog, cfg.WaitNIC, cfg.Faults, scratchString(cfg.Scratch), cmp.Or(cfg.CPUProfile, "none"), cfg.CPUProfileWindow, blkGrants.name(cfg.BlkGrantCopy), blkRings.name(cfg.BlkRingThreads), cfg.BlkFixed)
			return 0
		case "-h", "-help", "--help", "help":
			fmt.Fprintln(stdout, "usage: drvdomd [selftest|config|worker]   (no argument: run the driver domain)")
			return 0
		default:
			fmt.Fprintf(stderr, "drvdomd: unknown argument %q (usage: drvdomd [selftest|config|worker])\n", args[0])
			return 2
		}
	}
	return daemon(ctx, stderr)
}

func loadConfig(log *slog.Logger) Config {
	cfg := DefaultConfig()
	if f, err := os.Open(ConfigFile); err == nil {
		if err := cfg.ApplyFile(f, log); err != nil {
			log.Warn("config file", "path", ConfigFile, "err", err)
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		cfg.ApplyCmdline(string(b), log)
	}
	return cfg
}

func without(list, drop []string) []string {
	var out []string
	for _, m := range list {
		if !slices.ContainsFunc(drop, func(d string) bool { return modEq(d, m) }) {
			out = append(out, m)
		}
	}
	return out
}

func modEq(a, b string) bool {
	return strings.ReplaceAll(a, "-", "_") == strings.ReplaceAll(b, "-", "_")
}

// openStore opens xenstore, waiting a little for the xenbus device.
func openStore(ctx context.Context, wait time.Duration, log *slog.Logger) (*xenstore.Client, error) {
	deadline := time.Now().Add(wait)
	for {
		c, err := xenstore.Open()
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		log.Debug("xenstore not there yet", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func daemon(ctx context.Context, console io.Writer) int {
	level := new(slog.LevelVar)
	log := slog.New(slog.NewTextHandler(console, &slog.HandlerOptions{Level: level}))
	ensureBaseMounts(log)
	cfg := loadConfig(log)
	level.Set(cfg.LogLevel)
	log.Info("drvdomd starting", "backend", cfg.Backend, "nic", cfg.NIC, "bridge", cfg.Bridge, "kernel", kernelRelease())

	ml := newModuleLoader("/lib/modules", log)
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		ml.params = moduleParams(string(b))
	}
	if n, err := ml.Load(without(cfg.Modules, BackendModules)...); err != nil {
		log.Warn("some modules did not load; carrying on", "loaded", n, "first_err", err)
	}
	if _, err := os.Stat(xenfsMount.target); err != nil {
		log.Error("no /proc/xen: not running on Xen, or the xenfs module did not load", "err", err)
	} else if err := ensureMount(xenfsMount, log); err != nil {
		log.Error("xenfs", "err", err)
	}

	store, err := openStore(ctx, 10*time.Second, log)
	if err != nil {
		log.Error("no xenstore: is this a Xen domain with xen-evtchn/xenfs loaded?", "err", err)
		return 1
	}
	defer store.Close()

	self := cfg.DomID
	if self < 0 {
		v, err := store.Read(ctx, "domid")
		if err == nil {
			if n, perr := strconv.ParseUint(strings.TrimSpace(v), 10, 16); perr == nil {
				self = int(n)
			}
		}
		if self < 0 {
			log.Error("cannot learn this domain's id from xenstore \"domid\"; set drvdom.domid=N", "err", err)
			return 1
		}
	}
	cfg.ApplyXenstore(ctx, store, uint16(self), log)
	level.Set(cfg.LogLevel)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Scratch files (guests' file backings) exist before any backend starts.
	stopScratch := startScratch(ctx, cfg.Scratch, store, uint16(self), log)
	defer stopScratch()
	// The watchdog has its own context, ended by the deferred wdCancel
	// only after disarm is decided (a signal must not end it first).
	var wg sync.WaitGroup
	wdCtx, wdCancel := context.WithCancel(context.Background())
	defer wg.Wait()
	defer wdCancel()
	var disarm atomic.Bool // set on a clean stop and on configuration errors
	var healthy func() error
	health := NewHealth(healthStale, workerStartGrace)
	if cfg.Backend != "kernel" {
		// The watchdog follows the worker's heartbeat, once the supervisor
		// had its chance to restart a hung worker.
		healthy = watchdogHealth(health.Check, watchdogGrace, time.Now)
	}
	if cfg.Watchdog {
		wg.Add(1)
		go func() {
			defer wg.Done()
			feedWatchdog(wdCtx, "/dev/watchdog", watchdogEvery, healthy, &disarm, log)
		}()
	}

	setupNetwork(ctx, cfg, log)
	logBlockDevices("/sys/block", log)

	// The lab (internal/lab ReadyImage) waits for this line: it is printed
	// just before the backends start watching xenstore. Keep its message.
	log.Info("driver domain", "domid", self, "backend", cfg.Backend)

	switch cfg.Backend {
	case "kernel":
		if _, err := ml.Load(BackendModules...); err != nil {
			log.Error("kernel backends did not load", "err", err)
		}
		h := newKernelHotplug(store, uint16(self), cfg.Bridge, log, realHotplugOps{})
		if err := h.Run(ctx); err != nil {
			log.Error("kernel-mode hotplug stopped", "err", err)
			return 1
		}
	default:
		exe, err := os.Executable()
		if err != nil {
			exe = "/proc/self/exe"
		}
		var workerOut io.Writer = console
		if w, stop, err := workerConsole(console, 2*time.Second, log); err != nil {
			log.Warn("workers write to the console directly", "err", err)
		} else {
			defer stop()
			workerOut = w // see console.go
		}
		sup := &Supervisor{
			Command: func() *exec.Cmd {
				cmd := exec.Command(exe, "worker")
				cmd.Stdout, cmd.Stderr = workerOut, workerOut
				cmd.Env = append(os.Environ(), "GOTRACEBACK=all")
				return cmd
			},
			Health:    health,
			Backoff:   Backoff{Min: 200 * time.Millisecond, Max: 10 * time.Second, ResetAfter: 30 * time.Second},
			LoopEvery: time.Second,
			StopGrace: 10 * time.Second,
			QuitAfter: 2 * healthStale,
			Log:       log.With("role", "supervisor"),
			Files:     newFileStore(log.With("role", "supervisor")),
		}
		defer sup.Files.Close()
		sup.HealthyReset = time.Second // killed while serving: back at once
		fctx, fcancel := context.WithCancel(ctx)
		var fwg sync.WaitGroup
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			publishProcStats(fctx, store, fmt.Sprintf("/local/domain/%d/%ssupervisor", self, StatsKeyPrefix), procStatsEvery, log)
		}()
		if cfg.Faults {
			fwg.Add(1)
			go func() {
				defer fwg.Done()
				faultHook(fctx, store, uint16(self), sup, log)
			}()
		}
		err = sup.Run(ctx)
		fcancel()
		fwg.Wait()
		if err != nil {
			log.Error("drvdom mode unavailable", "err", err)
			disarm.Store(true) // a restart would not help
			return 1
		}
	}
	disarm.Store(true)
	log.Info("drvdomd stopped")
	return 0
}

// Supervision timing (see supervise.go). xen_wdt's default timeout is 60 s:
// a worker whose heartbeat is older than healthStale stops the petting, and
// Xen restarts the domain at most a minute later.
const (
	watchdogEvery = 5 * time.Second
	healthStale   = 5 * time.Second
	beatEvery     = time.Second
	// workerStartGrace is how long the first worker may take to send its
	// first heartbeat (xenstore, Xen devices).
	workerStartGrace = 30 * time.Second
	// checkTimeout bounds the health check's xenstore read: under TCG, with
	// dom0 busy creating a domain, a read can take over a second.
	checkTimeout = 4 * time.Second
	// xenstoreStall: a worker whose xenstore read waited this long is
	// unhealthy (slower is only a busy dom0; see storeProbe).
	xenstoreStall = 30 * time.Second
	// watchdogGrace: the watchdog keepalives stop once the worker has been
	// unhealthy this long: enough for the supervisor's SIGQUIT (after
	// healthStale+QuitAfter) and a new worker's resync of every device.
	watchdogGrace = 40 * time.Second
	// procStatsEvery is how often each process publishes its ProcStats.
	procStatsEvery = 5 * time.Second
)

// stallChecker is implemented by drivers that can tell whether one of their
// rings has work and makes no progress (blkback).
type stallChecker interface {
	Stalled(after time.Duration) error
}

// worker runs the drvdom-mode backends: `drvdomd worker`, started and
// restarted by the daemon. It resumes every device left Connected (the
// Manager's resync) and every ring from its journal, and sends heartbeats
// on fd 3 while xenstore answers and no ring is stalled.
func worker(ctx context.Context, console io.Writer) int {
	level := new(slog.LevelVar)
	log := slog.New(slog.NewTextHandler(console, &slog.HandlerOptions{Level: level})).With("role", "worker", "pid", os.Getpid())
	cfg := loadConfig(log)
	level.Set(cfg.LogLevel)
	store, err := openStore(ctx, 10*time.Second, log)
	if err != nil {
		log.Error("no xenstore", "err", err)
		return 1
	}
	defer store.Close()
	self := cfg.DomID
	if self < 0 {
		v, err := store.Read(ctx, "domid")
		if n, perr := strconv.ParseUint(strings.TrimSpace(v), 10, 16); err == nil && perr == nil {
			self = int(n)
		} else {
			log.Error("cannot learn this domain's id from xenstore \"domid\"; set drvdom.domid=N", "err", err)
			return exitFatal
		}
	}
	cfg.ApplyXenstore(ctx, store, uint16(self), log)
	level.Set(cfg.LogLevel)
	denv := driverEnv{Cfg: cfg, Log: log}
	files := openStoreClient(log)
	if files != nil {
		defer files.Close()
		denv.TapStore = files
		if n := files.Inherited(); n > 0 {
			log.Info("file store: TAP queues kept across the restart", "files", n)
		}
	}
	drivers, cleanup, err := buildDrivers(denv)
	if err != nil {
		log.Error("drvdom mode unavailable", "err", err)
		return exitFatal
	}
	defer cleanup()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait
	if cfg.CPUProfile != "" {
		prof := &cpuProfiler{Dir: cfg.CPUProfile, Window: cfg.CPUProfileWindow, Keep: CPUProfileKeep, Pid: os.Getpid(), Log: log}
		wg.Add(1)
		go func() {
			defer wg.Done()
			prof.Run(ctx) // writes the partial window when ctx ends
		}()
	}
	if hb := heartbeatFile(); hb != nil {
		probe := newStoreProbe(func(ctx context.Context) error {
			_, err := store.Read(ctx, "domid")
			if errors.Is(err, xenstore.ErrNotExist) {
				err = nil
			}
			return err
		}, xenstoreStall)
		wg.Add(1)
		go func() {
			defer wg.Done()
			heartbeat(ctx, hb, beatEvery, workerCheck(probe.check, drivers), log)
			probe.wait()
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		publishProcStats(ctx, store, fmt.Sprintf("/local/domain/%d/%sworker", self, StatsKeyPrefix), procStatsEvery, log)
	}()
	if files != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			files.releaseUnclaimed(ctx, keptGrace)
		}()
	}
	log.Debug("worker: drivers ready")
	m := xenbus.NewManager(store, uint16(self), log, drivers...)
	m.RemoveNodes = true // the driver domain cleans its backend side, as xl devd does
	// ... once dom0 read Closed (libxl reads it at once, then allows 10 s
	// for the directory to go) or removed the frontend.
	m.RemoveGrace = 2 * time.Second
	m.ProbeWait = 30 * time.Second // a passed-through disk may still be probing
	// dom0's `drvdomctl supervise` re-attaches the guests' devices to a
	// restarted driver domain once this says the backends run (the
	// Manager's first scan sees devices attached before its watch).
	if err := store.Write(ctx, fmt.Sprintf("/local/domain/%d/%s", self, ReadyKey), "running"); err != nil {
		log.Warn("cannot announce the backends to dom0", "key", ReadyKey, "err", err)
	}
	log.Debug("worker: announced", "key", ReadyKey)
	if err := m.Run(ctx); err != nil {
		log.Error("xenbus manager stopped", "err", err)
		return 1
	}
	return 0
}

// ReadyKey (under the driver domain's home) tells dom0's supervisor that
// drvdomd's backends run; drvdomctl supervise waits for "running".
const ReadyKey = "data/drvdomd"

// workerCheck is the worker's health: xenstore answers (storeCheck, a
// storeProbe's check) and no driver reports a stalled ring.
func workerCheck[D any](storeCheck func(context.Context) error, drivers []D) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := storeCheck(ctx); err != nil {
			return err
		}
		for _, d := range drivers {
			if sc, ok := any(d).(stallChecker); ok {
				if err := sc.Stalled(3 * healthStale); err != nil {
					return err
				}
			}
		}
		return nil
	}
}
