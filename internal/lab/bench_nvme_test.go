package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchNVMeWatchFlagsAStorm runs the watchdog for real
// (bash) on fake /proc/interrupts, block stat and reset_controller files:
// healthy seconds (about one interrupt per I/O) raise nothing, a storm
// (thousands of interrupts, no I/O) is marked on the console and logged, the
// controller is never reset (NVW_DO_RESET unset), and the log sent to the
// host carries both.
func TestBenchNVMeWatchFlagsAStorm(t *testing.T) {
	bash := hostBash(t)
	dir := t.TempDir()
	intr, stat, reset := filepath.Join(dir, "interrupts"), filepath.Join(dir, "stat"), filepath.Join(dir, "reset")
	write := func(irqs, ios int) {
		t.Helper()
		// Two CPUs' columns, as /proc/interrupts has them.
		in := fmt.Sprintf("           CPU0       CPU1\n  8:  %d  %d  xen-pirq    -ioapic-level  nvme0q0, nvme0q1\n  9:   77  0  xen-pirq  -ioapic-level  eth0\n", irqs-irqs/2, irqs/2)
		st := fmt.Sprintf("  %d 0 0 0 %d 0 0 0 0 0 0\n", ios-ios/3, ios/3)
		// Replace atomically: the watchdog reads them while we write.
		for name, text := range map[string]string{intr: in, stat: st} {
			if err := os.WriteFile(name+".new", []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(name+".new", name); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(100, 100)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bash, "-c", hostLibSh()+benchNVMeWatchSh+"bench_nvmewatch\n")
	cmd.Env = append(os.Environ(), "DDSTAT_DIR="+dir, "NVW_INTERRUPTS="+intr, "NVW_STAT="+stat, "NVW_RESET="+reset)
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() { // the output is read only once bash is gone
		if !stopped {
			stopped = true
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	defer stop()
	// bash is paced by a 1 s read timeout, the test by its sleeps: a loaded
	// machine (the race detector, a lab boot) delays bash's start and
	// stretches its seconds. So the healthy seconds start once the
	// watchdog counts (its first line), and the end is waited for rather
	// than slept for: a line after the storm's (the marker is printed
	// before it) and the healthy I/O, bounded by ctx.
	logPath := filepath.Join(dir, "nvmewatch.txt")
	for {
		if b, _ := os.ReadFile(logPath); bytes.HasPrefix(b, []byte("W ")) {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the watchdog never logged a second")
		}
		time.Sleep(20 * time.Millisecond)
	}
	irqs, ios := 100, 100
	for range 3 { // healthy: 400 I/Os and 400 interrupts a second
		time.Sleep(time.Second)
		irqs, ios = irqs+400, ios+400
		write(irqs, ios)
	}
	if _, err := os.Stat(reset); err == nil {
		t.Fatal("healthy seconds reset the controller")
	}
	for range 3 { // storm: 20000 interrupts, 3 I/Os a second
		time.Sleep(time.Second)
		irqs, ios = irqs+20000, ios+3
		write(irqs, ios)
	}
	for ctx.Err() == nil {
		b, _ := os.ReadFile(logPath)
		w := ParseNVMeWatch(b)
		var logged int64
		for _, s := range w.Seconds {
			logged += s.IOs
		}
		r := bytes.LastIndex(b, []byte("\nR "))
		if r >= 0 && bytes.Contains(b[r+1:], []byte("\nW ")) && logged >= 400 && len(w.Seconds) >= 4 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	if _, err := os.Stat(reset); err == nil {
		t.Fatal("the watchdog reset the controller without NVW_DO_RESET=1")
	}
	logb, err := os.ReadFile(filepath.Join(dir, "nvmewatch.txt"))
	if err != nil {
		t.Fatal(err)
	}
	w := ParseNVMeWatch(logb)
	// The two fake files are replaced one after the other, so a second may
	// see one updated and not the other: look for the storm among the
	// events and for the healthy seconds' I/O in the log.
	storm := false
	for _, r := range w.Resets {
		storm = storm || (r.Why == "storm" && r.Interrupts >= 10000)
	}
	var logged int64
	for _, s := range w.Seconds {
		logged += s.IOs
	}
	if !storm || logged < 400 || len(w.Seconds) < 4 {
		t.Errorf("events %+v, %d I/Os over %d seconds in\n%s", w.Resets, logged, len(w.Seconds), logb)
	}
	if !strings.Contains(out.String(), "@@LAB NVME-IRQ storm at ") {
		t.Errorf("no reset marker on the console:\n%s", out.String())
	}
}

func fioAt(endMs, runtimeMs int64, iops float64) []byte {
	return fmt.Appendf(nil, `{"timestamp_ms":%d,"jobs":[{"error":0,"job_runtime":%d,"read":{"iops":%g,"bw_bytes":4096000,"total_ios":1000,"lat_ns":{"mean":1000000}}}]}`, endMs, runtimeMs, iops)
}

// TestBenchSamplesApplyTheNVMeWatch: an NVMe row during which the
// watchdog reset the controller is not counted (its figure kept, the
// reason given), every NVMe row gets its interrupts per I/O, and the
// tmpfs rows are left alone.
func TestBenchSamplesApplyTheNVMeWatch(t *testing.T) {
	files := map[string][]byte{
		// 1000..1005 s: healthy; 1010..1015 s: a reset at 1012.
		BenchFileName(PathDevice, BackingNVMe, "4k-randread-qd1"):  fioAt(1005_000, 5000, 900),
		BenchFileName(PathDevice, BackingNVMe, "4k-randread-qd32"): fioAt(1015_000, 5000, 200),
		BenchFileName(PathDevice, BackingTmpfs, "4k-randread-qd1"): fioAt(1012_000, 5000, 2000),
		// 1020..1025 s: the line disabled, I/O polled.
		BenchFileName(PathDeviceAfter, BackingNVMe, "4k-randread-qd1"): fioAt(1025_000, 5000, 10),
		BenchNVMeWatchFile: []byte("W 1001 900 900\nW 1002 1000 900\nW 1003 900 900\nW 1004 900 900\nW 1005 900 900\n" +
			"W 1011 30000 10\nR 1012 55.5 30000 10 storm\nW 1013 200 190\nW 1014 200 200\nbad line\n" +
			"W 1021 0 10\nW 1022 0 10\nR 1022 80.1 0 10 silent\nW 1023 0 10\nW 1024 0 10\nW 1025 0 10\n"),
	}
	rep := &Report{Files: files, Result: &Result{}}
	ss := BenchSamples(BenchBoot{Index: 2, Rep: 1, Backend: BackendDrvdom}, rep)
	get := func(path, bk, wl string) BenchSample {
		for _, s := range ss {
			if s.Path == path && s.Backing == bk && s.Workload == wl {
				return s
			}
		}
		t.Fatalf("no sample %s %s %s", path, bk, wl)
		return BenchSample{}
	}
	ok := get(PathDevice, BackingNVMe, "4k-randread-qd1")
	if !ok.OK || ok.IOPS != 900 || ok.NVMeIrqPerIO < 1.0 || ok.NVMeIrqPerIO > 1.03 {
		t.Errorf("healthy row %+v", ok)
	}
	bad := get(PathDevice, BackingNVMe, "4k-randread-qd32")
	if bad.OK || bad.IOPS != 200 || !strings.Contains(bad.Error, "disturbed: NVMe interrupt storm during the row (30000 interrupts for 10 I/Os") || bad.NVMeIrqPerIO < 70 {
		t.Errorf("disturbed row %+v", bad)
	}
	if sil := get(PathDeviceAfter, BackingNVMe, "4k-randread-qd1"); sil.OK || !strings.Contains(sil.Error, "interrupt line was silent during the row (50 I/Os") {
		t.Errorf("silent row %+v", sil)
	}
	if tm := get(PathDevice, BackingTmpfs, "4k-randread-qd1"); !tm.OK || tm.NVMeIrqPerIO != 0 {
		t.Errorf("tmpfs row %+v", tm)
	}
	w, found := BenchNVMeWatchOf(rep)
	if !found || len(w.Resets) != 2 || w.Resets[0].UptimeS != 55.5 || w.Resets[1].Why != "silent" {
		t.Errorf("watch %+v %v", w, found)
	}
	// Without a log nothing changes.
	delete(files, BenchNVMeWatchFile)
	for _, s := range BenchSamples(BenchBoot{Index: 2, Rep: 1, Backend: BackendDrvdom}, rep) {
		if s.Workload == "4k-randread-qd32" && s.Path == PathDevice && s.Backing == BackingNVMe && (!s.OK || s.NVMeIrqPerIO != 0) {
			t.Errorf("without a log: %+v", s)
		}
	}
}

func TestWriteBenchNVMeWatch(t *testing.T) {
	var b strings.Builder
	WriteBenchNVMeWatch(&b, []BenchBootLog{{Boot: 1, Backend: BackendKernel}}, nil)
	if b.Len() != 0 {
		t.Fatalf("no watched boot wrote %q", b.String())
	}
	WriteBenchNVMeWatch(&b, []BenchBootLog{
		{Boot: 1, Backend: BackendKernel, NVMeWatched: true},
		{Boot: 2, Backend: BackendDrvdom, NVMeWatched: true, NVMeResets: []NVMeReset{{UptimeS: 47.6, Interrupts: 30000, IOs: 12, Why: "storm"}}},
	}, []BenchSample{
		{Path: PathDevice, Backing: BackingNVMe, Workload: "4k-randread-qd1", NVMeIrqPerIO: 1.02},
		{Path: PathDevice, Backing: BackingNVMe, Workload: "4k-randread-qd1", NVMeIrqPerIO: 350},
	})
	for _, want := range []string{
		"- boot 1 (kernel): healthy\n",
		"- boot 2 (drvdom): 1 event(s): storm at 48 s (30000 interrupts, 12 I/Os)\n",
		"- device nvme 4k-randread-qd1: 1.02, 350.00\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("lacks %q in\n%s", want, b.String())
		}
	}
}

// TestBenchDrvdomWatchesTheNVMe: the bench's driver domain boots with
// noirqdebug, starts the watchdog before its first row and sends its log
// before it marks the end of the after-guest rows.
func TestBenchDrvdomWatchesTheNVMe(t *testing.T) {
	s := BenchScenario(BenchBoot{Index: 1, Rep: 1, Backend: BackendDrvdom}, 5*time.Second, "")
	if c := BenchDrvdomConfig(s); strings.Contains(c.Extra, "noirqdebug") {
		t.Errorf("driver domain command line %q", c.Extra)
	}
	dd := BenchDrvdomScript(5 * time.Second)
	start := strings.Index(dd, "bench_nvmewatch </dev/null 2>/dev/null &\n")
	if start < 0 || start > strings.Index(dd, "\nbench_fio ") {
		t.Error("watchdog not started before the first row")
	}
	put := strings.Index(dd, "bench_put "+BenchNVMeWatchFile+" ")
	if put < 0 || put > strings.Index(dd, `lab_mark "`+BenchAfterMark+`"`) || put < strings.Index(dd, "bench_after() {") {
		t.Error("watchdog log not sent at the end of the after-guest rows")
	}
}

// TestBenchNVMeWatchFromTheConsole: a boot that failed before sending the
// watchdog's log still has the console's marks and the kernel's
// "Disabling IRQ"; dated through the sampler's uptime-to-wallclock offset
// they fail the rows they touch and every NVMe row that ends after the
// line was disabled.
func TestBenchNVMeWatchFromTheConsole(t *testing.T) {
	console := []byte("[    6.6] nvme nvme0: 1/0/0 default/read/poll queues\n" +
		"@@LAB CHECK bench-device-nvme-4k-randread-qd1 PASS fio@@\n" +
		"@@LAB CHECK bench-device-nvme-1m-read-qd4 PASS fio@@\n" +
		"@@LAB NVME-IRQ storm at 46.92s: 29840 interrupts for 0 I/Os in 1 s@@\r\n" +
		"@@LAB CHECK bench-device-nvme-1m-write-qd4 PASS fio@@\n" +
		"bench: bench-device-nvme-1m-write-qd4 rc=0\n" +
		"[   57.270754] irq 8: nobody cared (try booting with the \"irqpoll\" option)\n" +
		"[   57.275704] Disabling IRQ #8\n" +
		"@@LAB CHECK bench-device-tmpfs-4k-randread-qd1 PASS fio@@\n")
	if nvmeConsoleLines([]byte("@@LAB CHECK bench-device-nvme-4k-randread-qd1 PASS fio@@\n")) != nil {
		t.Error("a console without NVMe events kept")
	}
	lines := nvmeConsoleLines(console)
	if strings.Count(string(lines), "\n") != 6 {
		t.Fatalf("console lines %q", lines)
	}
	files := map[string][]byte{
		BenchNVMeConsoleFile: lines,
		// uptime 100 s is epoch 1100 s.
		benchStatPrefix + "1.txt": []byte("T 100.0 cpu 1 0 1 1 0 0 0 0\nE 1100\n"),
		// the 1m-write row ran 1043-1048 (storm at 1046.9), a tmpfs row
		// later, the after-guest row at 1200-1205 (line disabled at 1057.3).
		BenchFileName(PathDevice, BackingNVMe, "1m-write-qd4"):         fioAt(1048_000, 5000, 300),
		BenchFileName(PathDevice, BackingNVMe, "4k-randread-qd1"):      fioAt(1020_000, 5000, 900),
		BenchFileName(PathDeviceAfter, BackingNVMe, "4k-randread-qd1"): fioAt(1205_000, 5000, 10),
		BenchFileName(PathDevice, BackingTmpfs, "4k-randread-qd1"):     fioAt(1065_000, 5000, 2000),
	}
	rep := &Report{Files: files, Result: &Result{ExitCode: -1}}
	w, ok := BenchNVMeWatchOf(rep)
	if !ok || len(w.Resets) != 2 || w.Resets[0].Epoch != 1046 || w.Resets[1].Why != "disabled" || w.Resets[1].Epoch != 1057 {
		t.Fatalf("watch %+v %v", w, ok)
	}
	for _, s := range BenchSamples(BenchBoot{Index: 5, Rep: 3, Backend: BackendKernel}, rep) {
		switch {
		case s.Path == PathDevice && s.Backing == BackingNVMe && s.Workload == "1m-write-qd4":
			if s.OK || !strings.Contains(s.Error, "disturbed: NVMe interrupt storm at 46.92s: 29840 interrupts for 0 I/Os in 1 s (driver domain console)") || strings.Contains(s.Error, "@@") {
				t.Errorf("storm row %+v", s)
			}
		case s.Path == PathDevice && s.Backing == BackingNVMe && s.Workload == "4k-randread-qd1":
			if !s.OK {
				t.Errorf("row before the storm %+v", s)
			}
		case s.Path == PathDeviceAfter && s.Workload == "4k-randread-qd1":
			if s.OK || !strings.Contains(s.Error, "the kernel disabled the NVMe's interrupt line (irq nobody cared) before the row") {
				t.Errorf("row after the line was disabled %+v", s)
			}
		case s.Path == PathDevice && s.Backing == BackingTmpfs && s.Workload == "4k-randread-qd1":
			if !s.OK {
				t.Errorf("tmpfs row %+v", s)
			}
		}
	}
	// No sampler, no dates: nothing is claimed.
	delete(files, benchStatPrefix+"1.txt")
	if _, ok := BenchNVMeWatchOf(rep); ok {
		t.Error("console watch without an offset")
	}
}
