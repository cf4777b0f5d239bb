package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// On-demand CPU profiling of the backend worker (config keys cpuprofile=DIR
// and cpuprofile-window=DURATION): the lab's driver domain runs under QEMU
// TCG without perf, so the worker profiles itself with runtime/pprof in
// consecutive windows and leaves one file per window for the lab to fetch.
const (
	// DefaultCPUProfileWindow is cpuprofile-window's default.
	DefaultCPUProfileWindow = 10 * time.Second
	// MinCPUProfileWindow is the shortest window the config accepts
	// (shorter ones would also give two windows the same file name).
	MinCPUProfileWindow = time.Second
	// CPUProfileKeep is how many profiles of one worker are kept: the
	// oldest are deleted (64 windows of 10 s: the last ~10 minutes).
	CPUProfileKeep = 64
)

// parseCPUProfileDir parses cpuprofile=DIR: a clean absolute path, or "" or
// "none" (off).
func parseCPUProfileDir(val string) (string, error) {
	if val == "" || val == "none" {
		return "", nil
	}
	if !filepath.IsAbs(val) || filepath.Clean(val) != val || val == "/" {
		return "", errors.New("want a clean absolute directory, or none")
	}
	return val, nil
}

// parseCPUProfileWindow parses cpuprofile-window=DURATION (Go syntax: 10s,
// 1m30s), at least MinCPUProfileWindow.
func parseCPUProfileWindow(val string) (time.Duration, error) {
	d, err := time.ParseDuration(val)
	if err != nil {
		return 0, fmt.Errorf("want a duration such as 10s: %w", err)
	}
	if d < MinCPUProfileWindow {
		return 0, fmt.Errorf("%v is below the minimum %v", d, MinCPUProfileWindow)
	}
	return d, nil
}

// cpuProfiler writes the process's CPU profile to Dir in consecutive
// windows: Dir/cpu-<Pid>-<unix seconds at the window's start>.pprof, each
// written to a hidden temporary name (.cpu-<Pid>.tmp) and renamed at the
// window's end, so a file with the final name is complete. It keeps the
// Keep newest files of Pid and touches no other file but the temporary
// files of dead processes. Failures (Dir
// cannot be created, another CPU profile runs in the process, a full disk)
// are logged once and retried at the next window; they never end Run.
type cpuProfiler struct {
	Dir    string
	Window time.Duration
	Keep   int
	Pid    int
	Log    *slog.Logger

	failed bool // a failure was logged
}

// cpuProfileName is the file name of Pid's window started at start.
func cpuProfileName(pid int, start time.Time) string {
	return fmt.Sprintf("cpu-%d-%d.pprof", pid, start.Unix())
}

// cpuProfileTemp is the name Pid's current window is written under.
func cpuProfileTemp(pid int) string {
	return fmt.Sprintf(".cpu-%d.tmp", pid)
}

// removeDeadTemps removes the partial windows of workers that died without
// a graceful stop (killed by the supervisor): their temporary files would
// otherwise pile up over the restarts of a faults run.
func (p *cpuProfiler) removeDeadTemps() {
	ents, err := os.ReadDir(p.Dir)
	if err != nil {
		return // begin reports what is wrong with Dir
	}
	for _, e := range ents {
		s, ok := strings.CutPrefix(e.Name(), ".cpu-")
		if !ok {
			continue
		}
		s, ok = strings.CutSuffix(s, ".tmp")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(s)
		if err != nil || pid <= 0 || pid == p.Pid || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue
		}
		os.Remove(filepath.Join(p.Dir, e.Name()))
	}
}

// Run profiles until ctx ends, then writes the partial window and returns.
func (p *cpuProfiler) Run(ctx context.Context) {
	p.Log.Info("cpu profiling", "dir", p.Dir, "window", p.Window, "keep", p.Keep)
	tmp := filepath.Join(p.Dir, cpuProfileTemp(p.Pid))
	p.removeDeadTemps()
	t := time.NewTimer(p.Window)
	defer t.Stop()
	for {
		start := time.Now()
		f, err := p.begin(tmp)
		if err != nil {
			p.fail(tmp, err)
		}
		t.Reset(p.Window)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		if f != nil {
			final := filepath.Join(p.Dir, cpuProfileName(p.Pid, start))
			if err := p.end(f, tmp, final); err != nil {
				p.fail(final, err)
			} else if err := p.prune(); err != nil {
				p.fail(p.Dir, err)
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// begin creates Dir and the temporary file and starts the profile into it.
func (p *cpuProfiler) begin(tmp string) (*os.File, error) {
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("cpu profile dir: %w", err)
	}
	f, err := os.Create(tmp)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return f, nil
}

// end stops the profile, flushes f and renames it from tmp to final.
func (p *cpuProfiler) end(f *os.File, tmp, final string) error {
	pprof.StopCPUProfile()
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cpu profile: %w", err)
	}
	return nil
}

// prune deletes Pid's oldest profiles beyond Keep.
func (p *cpuProfiler) prune() error {
	ents, err := os.ReadDir(p.Dir)
	if err != nil {
		return fmt.Errorf("cpu profile dir: %w", err)
	}
	type prof struct {
		name string
		secs int64
	}
	var mine []prof
	prefix := "cpu-" + strconv.Itoa(p.Pid) + "-"
	for _, e := range ents {
		s, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		s, ok = strings.CutSuffix(s, ".pprof")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || !e.Type().IsRegular() {
			continue
		}
		mine = append(mine, prof{e.Name(), n})
	}
	if len(mine) <= p.Keep {
		return nil
	}
	slices.SortFunc(mine, func(a, b prof) int { return cmp.Compare(a.secs, b.secs) })
	var first error
	for _, old := range mine[:len(mine)-p.Keep] {
		if err := os.Remove(filepath.Join(p.Dir, old.name)); err != nil && !errors.Is(err, os.ErrNotExist) && first == nil {
			first = fmt.Errorf("cpu profile: %w", err)
		}
	}
	return first
}

// fail logs the first failure only: a worker whose profiles cannot be
// written serves on, and a full disk must not flood the console.
func (p *cpuProfiler) fail(path string, err error) {
	if p.failed {
		return
	}
	p.failed = true
	p.Log.Warn("cpu profiling failed; the worker serves on (further failures are not logged)", "path", path, "err", err)
}
