package lab

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// BenchOptions configure `xenlab bench`.
type BenchOptions struct {
	Out      string   // run directory: bench.json, bench.md, bench.svg, one boot-* directory per boot
	Backends []string // backend modes, in the first repetition's order
	Reps     int
	Runtime  time.Duration // per fio job / iperf3 run
	Timeout  time.Duration // per boot; 0: BenchBootTimeout(Runtime)
	Keep     bool          // keep each boot's disk image and ramdisks
	Echo     io.Writer     // serial console copy, if set
	Drvdomd  string        // drvdomd binary for the drvdom mode
	Stall    time.Duration // stop a boot whose consoles are silent this long; 0: BenchStall
	// Makeup is the most boots added after the plan for rows left with
	// fewer than Reps figures.
	Makeup int

	// bootFn runs one boot (tests); nil: a lab boot.
	bootFn func(ctx context.Context, boot BenchBoot, dir string) (BenchBootLog, []BenchSample, error)
}

// BenchStall is the default silence after which a bench boot is stopped:
// longer than dom0's own waits (300 s), which report better reasons.
const BenchStall = 7 * time.Minute

// xlError returns ": " and the first libxl error of an xl log, or "".
func xlError(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if _, msg, ok := strings.Cut(line, "libxl: error: "); ok {
			// "libxl_device.c:1181:device_backend_callback: Domain 2:unable to add ..."
			if i := strings.LastIndex(msg, ":"); i >= 0 && i+1 < len(msg) {
				msg = msg[i+1:]
			}
			return ": " + strings.TrimSpace(msg)
		}
	}
	return ""
}

// lastStamp names the last dom0 T marker of a run, for failure reasons.
func lastStamp(r *Result) string {
	if r == nil || len(r.Stamps) == 0 {
		return ""
	}
	s := r.Stamps[len(r.Stamps)-1]
	return fmt.Sprintf(" (dom0 last reached %s at %.0fs)", s.Name, s.At.Seconds())
}

// BenchResult is the whole matrix.
type BenchResult struct {
	Out     string
	Plan    []BenchBoot
	Boots   []BenchBootLog
	Samples []BenchSample
	Rows    []BenchRow
}

// Measured reports whether at least one sample measured something.
func (r *BenchResult) Measured() bool {
	for _, s := range r.Samples {
		if s.OK {
			return true
		}
	}
	return false
}

// benchJSON is bench.json.
type benchJSON struct {
	RuntimeS float64        `json:"runtime_s"`
	Reps     int            `json:"reps"`
	Backends []string       `json:"backends"`
	Plan     []BenchBoot    `json:"plan"`
	Boots    []BenchBootLog `json:"boots"`
	Samples  []BenchSample  `json:"samples"`
}

// BenchBootLog is what bench.json keeps of one boot: how long it took and
// the host's load around it (TCG figures move with the host's load: read
// ratios from boots with similar load).
type BenchBootLog struct {
	Boot      int     `json:"boot"`
	Backend   string  `json:"backend"`
	Dir       string  `json:"dir"`
	ElapsedS  float64 `json:"elapsed_s"`
	LoadStart string  `json:"host_loadavg_start"`
	LoadEnd   string  `json:"host_loadavg_end"`
	Error     string  `json:"error,omitempty"`
	// DrvdomdRSSMaxKB is the largest sum of every drvdomd process's VmRSS
	// the driver domain's sampler saw (bench_ddstat), DrvdomdHWMKB the
	// largest sum of their VmHWM; 0 when no drvdomd ran or nothing was
	// sampled.
	DrvdomdRSSMaxKB uint64 `json:"drvdomd_rss_max_kb,omitempty"`
	DrvdomdHWMKB    uint64 `json:"drvdomd_hwm_kb,omitempty"`
	DrvdomdProcs    int    `json:"drvdomd_procs,omitempty"`
	// NVMeWatched: the driver domain's NVMe interrupt watchdog sent its
	// log (BenchNVMeWatchFile); NVMeResets are the controller resets it did.
	NVMeWatched bool        `json:"nvme_watched,omitempty"`
	NVMeResets  []NVMeReset `json:"nvme_resets,omitempty"`
}

func hostLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// WriteBenchOutputs writes bench.json, bench.md and bench.svg into out.
func WriteBenchOutputs(out string, o BenchOptions, res *BenchResult) error {
	res.Rows = AggregateBench(res.Samples, o.Backends)
	j, err := json.MarshalIndent(benchJSON{RuntimeS: o.Runtime.Seconds(), Reps: o.Reps, Backends: o.Backends,
		Plan: res.Plan, Boots: res.Boots, Samples: res.Samples}, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	var md, svg strings.Builder
	WriteBenchMarkdown(&md, res.Rows, o.Backends)
	WriteBenchAfter(&md, res.Samples)
	WriteBenchCPU(&md, res.Rows, res.Samples, o.Backends)
	WriteBenchFrames(&md, res.Rows, res.Samples, o.Backends)
	WriteBenchNVMeWatch(&md, res.Boots, res.Samples)
	WriteBenchMemory(&md, res.Boots)
	if err := WriteBenchSVG(&svg, res.Rows, o.Backends); err != nil {
		return fmt.Errorf("bench: svg: %w", err)
	}
	for name, data := range map[string]string{"bench.json": string(j) + "\n", "bench.md": md.String(), "bench.svg": svg.String()} {
		if err := os.WriteFile(filepath.Join(out, name), []byte(data), 0o644); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	return nil
}

// PrepareBench writes one bench boot's run directory: Scenario.Prepare,
// then the bench's own xl configs (the guest's second disk on the tmpfs
// file, the driver domain's larger memory) and dom0 script (a longer wait
// for the driver domain, whose baseline runs before it is ready).
func PrepareBench(s Scenario, a *Artifacts, dir string, runtime time.Duration) error {
	if err := s.Prepare(a, dir); err != nil {
		return err
	}
	dom0, err := BenchDom0Script(s, runtime)
	if err != nil {
		return err
	}
	for name, text := range map[string]string{"guest.cfg": BenchGuestConfig(s).Render(), "drvdom.cfg": BenchDrvdomConfig(s).Render(), "dom0.sh": dom0} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	return nil
}

func describeSample(s BenchSample) string {
	if !s.OK {
		return "FAILED: " + s.Error
	}
	switch {
	case s.Path == PathNet:
		return fmt.Sprintf("%.3f Gbit/s", s.Gbps) + describeCPU(s)
	default:
		d := fmt.Sprintf("%8.0f IOPS %8.1f MB/s %8.0f µs", s.IOPS, s.MBps, s.LatUs)
		if s.NVMeIrqPerIO > 0 {
			d += fmt.Sprintf(" %6.2f irq/io", s.NVMeIrqPerIO)
		}
		return d + describeCPU(s)
	}
}

func describeCPU(s BenchSample) string {
	if s.DDBusy <= 0 && s.Dom0Busy <= 0 {
		return ""
	}
	return fmt.Sprintf(" (cpu: driver domain %.0f%%, drvdomd %.0f%%, dom0 %.0f%%)", 100*s.DDBusy, 100*s.DrvdomdCPU, 100*s.Dom0Busy)
}

// RunBench boots the plan, one boot after the other, and collects every
// sample. A boot that fails leaves failed samples and the matrix goes on;
// the results are rewritten after every boot so an interrupted run keeps
// what it measured. Then, while rows of a backend mode have fewer than
// o.Reps figures (a boot whose guest was never created, a row disturbed by
// the passed-through NVMe's interrupt storms), it boots that mode again, at
// most o.Makeup times (BenchMakeup picks the mode). It stops early only
// when ctx ends.
func RunBench(ctx context.Context, a *Artifacts, o BenchOptions, p *Progress) (*BenchResult, error) {
	if p == nil {
		p = NewProgress(nil)
	}
	plan, err := PlanBench(o.Backends, o.Reps)
	if err != nil {
		return nil, err
	}
	if err := CheckBenchRuntime(o.Runtime); err != nil {
		return nil, err
	}
	if o.Makeup < 0 {
		return nil, fmt.Errorf("bench: make-up boots %d: want 0 or more", o.Makeup)
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	boot1 := o.bootFn
	if boot1 == nil {
		boot1 = func(ctx context.Context, boot BenchBoot, dir string) (BenchBootLog, []BenchSample, error) {
			return runBenchBoot(ctx, a, o, p, boot, dir)
		}
	}
	res := &BenchResult{Out: o.Out, Plan: plan}
	one := func(boot BenchBoot, total string) error {
		dir := filepath.Join(o.Out, benchBootDir(boot))
		p.Printf("bench boot %d/%s: rep %d/%d, backend=%s, %s", boot.Index, total, boot.Rep, o.Reps, boot.Backend, dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		blog, samples, err := boot1(ctx, boot, dir)
		if err != nil {
			return err
		}
		res.Boots = append(res.Boots, blog)
		p.Printf("bench boot %d/%s: %.0fs, host load %s -> %s", boot.Index, total, blog.ElapsedS, blog.LoadStart, blog.LoadEnd)
		for _, r := range blog.NVMeResets {
			p.Printf("  NVMe controller reset by the watchdog (%s) at %.0fs: %d interrupts for %d I/Os in 1 s", r.Why, r.UptimeS, r.Interrupts, r.IOs)
		}
		ok := 0
		for _, s := range samples {
			if s.OK {
				ok++
			}
			bk := s.Backing
			if bk == "" {
				bk = "-"
			}
			p.Printf("  %-6s %-6s %-5s %-18s %s", boot.Backend, s.Path, bk, s.Workload, describeSample(s))
		}
		p.Printf("bench boot %d/%s: %d of %d rows measured", boot.Index, total, ok, len(samples))
		res.Samples = append(res.Samples, samples...)
		return WriteBenchOutputs(o.Out, o, res)
	}
	total := fmt.Sprint(len(plan))
	for _, boot := range plan {
		if ctx.Err() != nil {
			break
		}
		if err := one(boot, total); err != nil {
			return res, err
		}
	}
	for extra := 1; extra <= o.Makeup && ctx.Err() == nil; extra++ {
		last := res.Plan[len(res.Plan)-1].Backend
		be, short := BenchMakeup(res.Samples, o.Backends, o.Reps, last)
		if be == "" {
			break
		}
		reps := 0
		for _, b := range res.Plan {
			if b.Backend == be {
				reps++
			}
		}
		boot := BenchBoot{Index: len(res.Plan) + 1, Rep: reps + 1, Backend: be, Makeup: true}
		res.Plan = append(res.Plan, boot)
		p.Printf("bench: make-up boot %d of at most %d, backend=%s: %s", extra, o.Makeup, be, strings.Join(short, ", "))
		if err := one(boot, fmt.Sprintf("%s+%d", total, extra)); err != nil {
			return res, err
		}
	}
	if err := WriteBenchOutputs(o.Out, o, res); err != nil {
		return res, err
	}
	return res, ctx.Err()
}

// benchBootDir names a boot's run directory.
func benchBootDir(b BenchBoot) string {
	if b.Makeup {
		return fmt.Sprintf("boot-%02d-makeup-%s", b.Index, b.Backend)
	}
	return fmt.Sprintf("boot-%02d-rep%d-%s", b.Index, b.Rep, b.Backend)
}

// runBenchBoot is one boot of the matrix in the lab: its samples, and what
// bench.json keeps of it. The error is only for a run directory it cannot
// write; a failed boot is failed samples.
func runBenchBoot(ctx context.Context, a *Artifacts, o BenchOptions, p *Progress, boot BenchBoot, dir string) (BenchBootLog, []BenchSample, error) {
	timeout := o.Timeout
	if timeout == 0 {
		timeout = BenchBootTimeout(o.Runtime)
	}
	stall := o.Stall
	if stall == 0 {
		stall = BenchStall
	}
	drvdomd := ""
	if boot.Backend == BackendDrvdom {
		drvdomd = o.Drvdomd
	}
	s := BenchScenario(boot, o.Runtime, drvdomd)
	blog := BenchBootLog{Boot: boot.Index, Backend: boot.Backend, Dir: dir, LoadStart: hostLoad()}
	bstart := time.Now()
	var rep *Report
	if err := PrepareBench(s, a, dir, o.Runtime); err != nil {
		p.Printf("bench boot %d: prepare: %v", boot.Index, err)
		rep = &Report{Out: dir, FailedDomain: "host", FailedWhy: "prepare: " + err.Error()}
	} else {
		bctx, stopBoot := context.WithCancel(ctx)
		followed, watched := make(chan struct{}), make(chan struct{})
		logs := domainLogs(dir)
		stalled := false
		go func() { // owned here: stopped and waited for right after Run
			defer close(followed)
			followBenchChecks(bctx, []string{logs[DrvdomName], logs[GuestName]}, 2*time.Second, func(_ string, c Check) {
				st := "ok"
				if !c.Pass {
					st = "FAILED"
				}
				p.Printf("  row %-40s %s %s", c.Name, st, c.Detail)
			})
		}()
		go func() { // owned here: ends with bctx or after stopping a stalled boot
			defer close(watched)
			watchStall(bctx, []string{filepath.Join(dir, "serial.log"), logs["dom0"], logs[DrvdomName], logs[GuestName]},
				5*time.Second, stall, func() {
					stalled = true
					p.Printf("bench boot %d: no console output for %s: stopping it", boot.Index, stall)
					stopBoot()
				})
		}()
		r, runErr := Run(bctx, a, RunOptions{Out: dir, Timeout: timeout, Echo: o.Echo}, p)
		stopBoot()
		<-followed
		<-watched
		if !o.Keep {
			Cleanup(dir)
		}
		rep = Collect(dir, r)
		benchBootFiles(dir, rep)
		rep.Backend = boot.Backend
		if strings.Contains(rep.FailedWhy, "xl create failed") {
			rep.FailedWhy += xlError(filepath.Join(dir, "xl-create-"+rep.FailedDomain+".log"))
		}
		switch {
		case stalled && rep.FailedDomain == "":
			rep.FailedDomain, rep.FailedWhy = "host", fmt.Sprintf("boot stalled: no console output for %s%s", stall, lastStamp(r))
		case runErr != nil && rep.FailedDomain == "":
			rep.FailedDomain, rep.FailedWhy = "host", runErr.Error()+lastStamp(r)
		}
		if runErr != nil {
			p.Printf("bench boot %d: %v", boot.Index, runErr)
		}
	}
	blog.ElapsedS, blog.LoadEnd = time.Since(bstart).Seconds(), hostLoad()
	if rep.FailedDomain != "" {
		blog.Error = rep.FailedDomain + ": " + rep.FailedWhy
	}
	blog.DrvdomdRSSMaxKB, blog.DrvdomdHWMKB, blog.DrvdomdProcs = DrvdomdMemory(rep.Files)
	samples := BenchSamples(boot, rep)
	if w, ok := BenchNVMeWatchOf(rep); ok {
		blog.NVMeWatched, blog.NVMeResets = true, w.Resets
	}
	return blog, samples, nil
}

// BenchMain is `xenlab bench [flags]`: build the lab (build), build
// drvdomd when the drvdom mode needs it (drvdomd, given a directory; may
// be nil), run the matrix, print the table to stdout. Exit code 0 when
// anything was measured, 1 when nothing was, 2 for bad flags.
func BenchMain(ctx context.Context, p *Progress, args []string, stdout io.Writer,
	build func(context.Context) (*Artifacts, error),
	drvdomd func(ctx context.Context, dir string) (string, error)) (int, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o BenchOptions
	backends := fs.String("backends", BackendKernel+","+BackendDrvdom, "backend modes, comma-separated (kernel,drvdom)")
	fs.IntVar(&o.Reps, "reps", 3, "repetitions: boots per backend mode (modes alternate order across repetitions)")
	fs.DurationVar(&o.Runtime, "runtime", 10*time.Second, "runtime of each fio job and iperf3 run (plain number: seconds)")
	fs.StringVar(&o.Out, "out", "", "run directory (default $XDG_CACHE_HOME/drvdom/runs/<time>-bench)")
	fs.DurationVar(&o.Timeout, "timeout", 0, "per-boot timeout (default from --runtime)")
	fs.BoolVar(&o.Keep, "keep", false, "keep each boot's disk image and ramdisks")
	fs.StringVar(&o.Drvdomd, "drvdomd", "", "drvdomd binary for the drvdom mode (default: built from this repo)")
	fs.DurationVar(&o.Stall, "stall", BenchStall, "stop a boot whose consoles stay silent this long (a TCG hang)")
	fs.IntVar(&o.Makeup, "makeup", 2, "boots added, at most, after the plan for a backend mode whose rows have fewer than --reps figures (a guest never created, rows lost to the NVMe's interrupt storms)")
	verbose := fs.Bool("v", false, "copy the serial console to stderr")
	recollect := fs.String("recollect", "", "boot nothing: read the finished run in this directory again (its boots' consoles and files) and write bench.json/md/svg into --out")
	// --runtime 5 means 5 s: accept a plain number.
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--runtime="); ok && isDigits(v) {
			args[i] = "--runtime=" + v + "s"
		} else if (a == "--runtime" || a == "-runtime") && i+1 < len(args) && isDigits(args[i+1]) {
			args[i+1] += "s"
		}
	}
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	if *recollect != "" {
		if o.Out == "" {
			return 2, errors.New("bench: --recollect needs --out (a directory other than the run's)")
		}
		if a, b := filepath.Clean(*recollect), filepath.Clean(o.Out); a == b {
			return 2, errors.New("bench: --recollect: --out must differ from the run directory")
		}
		res, ro, err := RecollectBench(*recollect, o.Out)
		if err != nil {
			return 1, err
		}
		fmt.Fprintf(stdout, "bench results (recollected from %s): %s/{bench.json,bench.md,bench.svg}\n\n", *recollect, o.Out)
		WriteBenchMarkdown(stdout, res.Rows, ro.Backends)
		return 0, nil
	}
	o.Backends = strings.Split(*backends, ",")
	if _, err := PlanBench(o.Backends, o.Reps); err != nil {
		return 2, err
	}
	if err := CheckBenchRuntime(o.Runtime); err != nil {
		return 2, err
	}
	if o.Makeup < 0 {
		return 2, fmt.Errorf("bench: --makeup %d: want 0 or more", o.Makeup)
	}
	if *verbose {
		o.Echo = os.Stderr
	}
	if o.Out == "" {
		dir, err := DefaultCacheDir()
		if err != nil {
			return 1, err
		}
		o.Out = filepath.Join(dir, "runs", time.Now().UTC().Format("20060102-150405")+"-bench")
	}
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return 1, err
	}
	o.Out = out
	a, err := build(ctx)
	if err != nil {
		return 1, err
	}
	if o.Drvdomd == "" && drvdomd != nil && strings.Contains(*backends, BackendDrvdom) {
		if o.Drvdomd, err = drvdomd(ctx, filepath.Join(o.Out, "bin")); err != nil {
			// The drvdom boots then fail their rows with the reason.
			p.Printf("bench: drvdomd: %v (the drvdom mode's rows will fail)", err)
			o.Drvdomd = ""
		}
	}
	plan, _ := PlanBench(o.Backends, o.Reps)
	est := BenchBootTimeout(o.Runtime) / 2
	p.Printf("bench: %d boots (%s) and up to %d make-up boots, runtime %s, ≈%s each; results in %s", len(plan), planString(plan), o.Makeup, o.Runtime, est.Round(time.Minute), o.Out)
	res, runErr := RunBench(ctx, a, o, p)
	if res != nil {
		fmt.Fprintf(stdout, "bench results: %s/{bench.json,bench.md,bench.svg}\n\n", o.Out)
		WriteBenchMarkdown(stdout, res.Rows, o.Backends)
	}
	if res == nil || !res.Measured() {
		if runErr == nil {
			runErr = errors.New("bench: nothing could be measured")
		}
		return 1, runErr
	}
	if runErr != nil {
		return 1, runErr
	}
	return 0, nil
}

func planString(plan []BenchBoot) string {
	var parts []string
	for _, b := range plan {
		parts = append(parts, b.Backend)
	}
	return strings.Join(parts, ",")
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
