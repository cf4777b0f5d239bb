package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// benchBootFiles adds to a boot's report the files dom0 wrote straight
// into the run directory (not through a console): its sampler's file; and
// the driver domain console's NVMe interrupt lines (the watchdog's marks,
// the kernel's "Disabling IRQ") as BenchNVMeConsoleFile, for a boot whose
// watchdog log never arrived.
func benchBootFiles(dir string, rep *Report) {
	if rep.Files == nil {
		rep.Files = map[string][]byte{}
	}
	if _, ok := rep.Files[BenchDom0StatFile]; !ok {
		if b, err := os.ReadFile(filepath.Join(dir, BenchDom0StatFile)); err == nil {
			rep.Files[BenchDom0StatFile] = b
		}
	}
	if b, err := os.ReadFile(domainLogs(dir)[DrvdomName]); err == nil {
		if lines := nvmeConsoleLines(b); len(lines) > 0 {
			rep.Files[BenchNVMeConsoleFile] = lines
		}
	}
}

// recollectReport reads one finished boot directory as Collect does,
// without writing anything into it: its consoles' checks and files, dom0's
// failure marker and exit code, and dom0's own files.
func recollectReport(dir string) *Report {
	r := &Report{Out: dir, Files: map[string][]byte{}}
	logs := domainLogs(dir)
	for _, dom := range []string{"dom0", DrvdomName, GuestName} {
		b, err := os.ReadFile(logs[dom])
		if err != nil {
			continue
		}
		ms := ParseMarkers(b)
		r.Checks = append(r.Checks, Checks(ms, dom)...)
		if dom == "dom0" {
			r.FailedDomain, r.FailedWhy, _ = FailedDomain(ms)
		}
		for name, data := range ExtractFiles(b) {
			r.Files[name] = data
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "exit-code")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			r.Result = &Result{ExitCode: n}
		}
	}
	if r.Result == nil {
		r.Result = &Result{ExitCode: -1}
	}
	benchBootFiles(dir, r)
	return r
}

// RecollectBench rebuilds a finished bench run's samples from its boot
// directories (the consoles and files the boots left) with this build's
// parsers, and writes bench.json, bench.md and bench.svg into out: the same
// measurements, read again. The plan, the boots' durations and host load
// come from run's bench.json.
func RecollectBench(run, out string) (*BenchResult, BenchOptions, error) {
	var o BenchOptions
	b, err := os.ReadFile(filepath.Join(run, "bench.json"))
	if err != nil {
		return nil, o, fmt.Errorf("bench: recollect: %w", err)
	}
	var j benchJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, o, fmt.Errorf("bench: recollect: %s: %w", filepath.Join(run, "bench.json"), err)
	}
	if len(j.Boots) == 0 {
		return nil, o, errors.New("bench: recollect: the run has no boot")
	}
	o = BenchOptions{Out: out, Backends: j.Backends, Reps: j.Reps, Runtime: time.Duration(j.RuntimeS * float64(time.Second))}
	plan := map[int]BenchBoot{}
	for _, p := range j.Plan {
		plan[p.Index] = p
	}
	res := &BenchResult{Out: out, Plan: j.Plan}
	for _, bl := range j.Boots {
		boot, ok := plan[bl.Boot]
		if !ok {
			return nil, o, fmt.Errorf("bench: recollect: boot %d not in the plan", bl.Boot)
		}
		dir := filepath.Join(run, filepath.Base(bl.Dir))
		if _, err := os.Stat(dir); err != nil {
			return nil, o, fmt.Errorf("bench: recollect: boot %d: %w", bl.Boot, err)
		}
		rep := recollectReport(dir)
		rep.Backend = boot.Backend
		if bl.Error != "" && rep.FailedDomain == "" {
			// Why the boot failed as the run saw it (a stall, a timeout).
			dom, why, _ := strings.Cut(bl.Error, ": ")
			rep.FailedDomain, rep.FailedWhy = dom, why
		}
		bl.DrvdomdRSSMaxKB, bl.DrvdomdHWMKB, bl.DrvdomdProcs = DrvdomdMemory(rep.Files)
		bl.NVMeWatched, bl.NVMeResets = false, nil
		if w, ok := BenchNVMeWatchOf(rep); ok {
			bl.NVMeWatched, bl.NVMeResets = true, w.Resets
		}
		res.Boots = append(res.Boots, bl)
		res.Samples = append(res.Samples, BenchSamples(boot, rep)...)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, o, fmt.Errorf("bench: recollect: %w", err)
	}
	if err := WriteBenchOutputs(out, o, res); err != nil {
		return nil, o, err
	}
	return res, o, nil
}
