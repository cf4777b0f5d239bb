package lab

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestBenchDDStatSamplesDrvdomd runs the driver domain's sampler for real
// (bash, this host's /proc) next to a process named drvdomd and parses
// what it sent: snapshots with CPU time, network devices and that
// process's resident memory.
func TestBenchDDStatSamplesDrvdomd(t *testing.T) {
	bash := hostBash(t)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep on this host:", err)
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "drvdomd")
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fake, b, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	proc := exec.CommandContext(ctx, fake, "30")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { proc.Process.Kill(); proc.Wait() }()
	script := hostLibSh() + benchDDStatSh + "bench_ddstat 1 2\n"
	var out lockedBuffer
	cmd := exec.CommandContext(ctx, bash, "-c", script)
	cmd.Env = append(os.Environ(), "DDSTAT_DIR="+dir)
	cmd.Stdout = &out
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// 4 snapshots a second apart make two files; a loaded host (the race
	// detector, a lab boot) once took longer than the 4.5 s this waited.
	for !bytes.Contains(out.Bytes(), []byte("@@LAB EOF "+benchStatPrefix+"2.txt@@")) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	files := ExtractFiles(out.Bytes())
	f1, f2 := files[benchStatPrefix+"1.txt"], files[benchStatPrefix+"2.txt"]
	if f1 == nil || f2 == nil {
		t.Fatalf("files sent: %v\n%s", len(files), string(out.Bytes()))
	}
	snaps := append(ParseDDStat(f1), ParseDDStat(f2)...)
	if len(snaps) != 4 {
		t.Fatalf("%d snapshots, want 4:\n%s\n%s", len(snaps), f1, f2)
	}
	for i, s := range snaps {
		if s.Total == 0 || s.Busy > s.Total || s.Uptime <= 0 || s.Epoch < 1.7e9 {
			t.Errorf("snapshot %d: cpu busy %d total %d uptime %v epoch %d", i, s.Busy, s.Total, s.Uptime, s.Epoch)
		}
		found := false
		for _, p := range s.Procs {
			if p.PID == proc.Process.Pid {
				found = p.RSSKB > 0 && p.HWMKB >= p.RSSKB
			}
		}
		if !found || s.RSSKB() == 0 {
			t.Errorf("snapshot %d: drvdomd pid %d not sampled with its memory: %+v", i, proc.Process.Pid, s.Procs)
		}
		if i > 0 && s.Uptime <= snaps[i-1].Uptime {
			t.Errorf("snapshot %d: uptime %v not after %v", i, s.Uptime, snaps[i-1].Uptime)
		}
	}
}

func TestParseDDStat(t *testing.T) {
	in := "T 120.50 cpu  100 0 50 800 50 0 10 0 0 0\n" +
		"D eth0: 1000 10 0 1 0 0 0 0 2000 20 0 3 0 0 0 0\n" +
		"D vif2.0: 5 1 0 0 0 0 0 0 6 2 0 7 0 0 0 0\n" +
		"P 321 20480 30720 150 75\n" +
		"P 322 1024 2048 1 2\n" +
		"Q qdisc noqueue 0: dev eth0 root refcnt 2\n" +
		"garbage\n" +
		"T 125.50 cpu  200 0 60 1700 50 0 20 0 0 0\n"
	s := ParseDDStat([]byte(in))
	if len(s) != 2 {
		t.Fatalf("%d snapshots", len(s))
	}
	if s[0].Busy != 160 || s[0].Total != 1010 || s[1].Busy != 280 {
		t.Errorf("cpu %+v %+v", s[0], s[1])
	}
	if d := s[0].Devs["vif2.0"]; d.TxDrop != 7 || d.TxPackets != 2 || d.RxBytes != 5 {
		t.Errorf("vif2.0 %+v", d)
	}
	if d := s[0].Devs["eth0"]; d.RxDrop != 1 || d.TxBytes != 2000 {
		t.Errorf("eth0 %+v", d)
	}
	if s[0].RSSKB() != 21504 || s[0].Procs[0].UTime != 150 || s[0].Procs[0].STime != 75 || len(s[1].Procs) != 0 {
		t.Errorf("procs %+v", s[0].Procs)
	}
}

func TestDrvdomdMemoryAndMarkdown(t *testing.T) {
	files := map[string][]byte{
		benchStatPrefix + "1.txt":         []byte("T 1 cpu 1 0 1 1 0 0 0 0\nP 10 30000 31000 1 1\nP 11 2000 2500 1 1\n"),
		benchStatPrefix + "2.txt":         []byte("T 6 cpu 1 0 1 1 0 0 0 0\nP 10 40000 41000 1 1\nP 11 1000 2500 1 1\nT 11 cpu 1 0 1 1 0 0 0 0\nP 10 20000 41000 1 1\n"),
		"bench-net-guest-to-dom0-P1.json": []byte("P 1 999999 999999 1 1\n"),
	}
	rss, hwm, n := DrvdomdMemory(files)
	if rss != 41000 || hwm != 43500 || n != 2 {
		t.Errorf("rss %d hwm %d procs %d, want 41000 43500 2", rss, hwm, n)
	}
	var b strings.Builder
	WriteBenchMemory(&b, []BenchBootLog{{Boot: 1, Backend: BackendKernel}, {Boot: 2, Backend: BackendDrvdom, DrvdomdRSSMaxKB: rss, DrvdomdHWMKB: hwm, DrvdomdProcs: n}})
	if !strings.Contains(b.String(), "boot 2 (drvdom): 40.0 MB in 2 processes, peak 42.5 MB") || strings.Contains(b.String(), "boot 1") {
		t.Errorf("markdown:\n%s", b.String())
	}
}

func TestBenchDom0PhaseSamplesInTheBackground(t *testing.T) {
	b := BenchScenario(BenchBoot{Index: 1, Rep: 1, Backend: BackendKernel}, 5*time.Second, "")
	if b.Dom0Phase != BenchDom0Phase || !strings.Contains(b.Dom0Script(), BenchDom0Phase) {
		t.Fatal("bench scenario does not run the dom0 sampler")
	}
	// In the background (dom0's script goes on to wait for the guest),
	// writing into the run directory, parseable by ParseDDStat's D lines.
	if !strings.Contains(BenchDom0Phase, "done ) </dev/null >/dev/null 2>&1 &") || !strings.Contains(BenchDom0Phase, "/lab/"+BenchDom0StatFile) {
		t.Errorf("dom0 sampler:\n%s", BenchDom0Phase)
	}
	bashSyntax(t, "dom0.sh", b.Dom0Script())
	snaps := ParseDDStat([]byte("T 10.5 cpu 1 0 1 1 0 0 0 0\nD eth0: 1 2 0 3 0 0 0 0 4 5 0 6 0 0 0 0\n"))
	if len(snaps) != 1 || snaps[0].Devs["eth0"].RxDrop != 3 {
		t.Errorf("parse: %+v", snaps)
	}
}

// TestBenchAfterRows: the driver domain measures the NVMe again once the
// guest's vif has come and gone, and marks the end; the samples are kept.
func TestBenchAfterRows(t *testing.T) {
	dd := BenchDrvdomScript(5 * time.Second)
	i := strings.Index(dd, "bench_after() {")
	if i < 0 || !strings.Contains(dd, "bench_after </dev/null 2>/dev/null &\n") {
		t.Fatal("driver domain script lacks the after-guest rows")
	}
	after := dd[i:]
	for _, w := range BenchAfterWorkloads {
		key := benchCheckName(BenchFileName(PathDeviceAfter, BackingNVMe, w))
		if !strings.Contains(after, "bench_fio "+key+" "+NVMeTarget+" randread 4k ") {
			t.Errorf("no after-guest row %s", key)
		}
	}
	if strings.Index(after, "set -- /sys/class/net/vif*") > strings.Index(after, "bench_fio ") ||
		strings.Index(after, "bench_fio ") > strings.Index(after, `lab_mark "`+BenchAfterMark+`"`) {
		t.Error("after-guest rows not between the guest's departure and the mark")
	}
	// The rows run after the baseline's loop device is released.
	if strings.Index(dd, `losetup -d "$loop"`) > i {
		t.Error("after-guest function defined before the baseline ends")
	}
	fio := []byte(`{"jobs":[{"error":0,"read":{"iops":500,"bw_bytes":2048000,"total_ios":2500,"lat_ns":{"mean":64000}}}]}`)
	rep := &Report{Files: map[string][]byte{BenchFileName(PathDeviceAfter, BackingNVMe, "4k-randread-qd32"): fio}, Result: &Result{}}
	var got []BenchSample
	for _, s := range BenchSamples(BenchBoot{Index: 1, Rep: 1, Backend: BackendDrvdom}, rep) {
		if s.Path == PathDeviceAfter {
			got = append(got, s)
		}
	}
	if len(got) != 1 || !got[0].OK || got[0].IOPS != 500 || got[0].Workload != "4k-randread-qd32" {
		t.Errorf("after-guest samples %+v", got)
	}
}

func TestWriteBenchAfter(t *testing.T) {
	var b strings.Builder
	WriteBenchAfter(&b, []BenchSample{
		{Path: PathDevice, Backing: BackingNVMe, Workload: "4k-randread-qd32", OK: true, IOPS: 100},
		{Path: PathDeviceAfter, Backing: BackingNVMe, Workload: "4k-randread-qd32", OK: true, IOPS: 600, LatUs: 50},
		{Path: PathDeviceAfter, Backing: BackingNVMe, Workload: "4k-randread-qd32", OK: true, IOPS: 800, LatUs: 40},
		{Path: PathDeviceAfter, Backing: BackingNVMe, Workload: "4k-randread-qd1", Error: "x"},
	})
	if !strings.Contains(b.String(), "- nvme 4k-randread-qd32: 700 IOPS after (n=2, 45 µs) vs 100 at boot (n=1)") || strings.Contains(b.String(), "qd1:") {
		t.Errorf("got:\n%s", b.String())
	}
	b.Reset()
	WriteBenchAfter(&b, nil)
	if b.Len() != 0 {
		t.Errorf("no samples wrote %q", b.String())
	}
}

func TestBenchVbdStats(t *testing.T) {
	if VdevNumber("xvdb") != 51728 || VdevNumber("xvdc") != 51744 || VdevNumber("sda") != -1 {
		t.Errorf("vdev numbers %d %d %d", VdevNumber("xvdb"), VdevNumber("xvdc"), VdevNumber("sda"))
	}
	g := BenchGuestScript(5 * time.Second)
	if !strings.Contains(g, "for d in 51728 51744; do") || !strings.Contains(g, "lab_put "+BenchVbdStatFile+" /tmp/vbdstats.txt") {
		t.Error("guest script does not collect the vbd statistics")
	}
	for _, bk := range Backings {
		for _, w := range BlockWorkloads {
			key := benchCheckName(BenchFileName(PathGuest, bk, w.Name))
			if !strings.Contains(g, "bench_fio "+key+" ") || !strings.Contains(g, "\nbench_vbdstat "+key+"\n") {
				t.Errorf("row %s without its statistics", key)
			}
		}
	}
}

// TestBenchPutPacksAndTheHostUnpacks runs bench_put for real (bash, gzip,
// base64 of this host) and reads its output back as the bench does.
func TestBenchPutPacksAndTheHostUnpacks(t *testing.T) {
	bash := hostBash(t)
	for _, tool := range []string{"gzip", "base64"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s on this host: %v", tool, err)
		}
	}
	dir := t.TempDir()
	fio := `{"jobs":[{"error":0,"read":{"iops":321.5,"bw_bytes":1316864,"total_ios":1607,"lat_ns":{"mean":3110000}},"write":{}}]}` + "\n"
	src := filepath.Join(dir, "bench.json")
	if err := os.WriteFile(src, []byte(strings.Repeat(" ", 4000)+fio), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bash, "-c", hostLibSh()+benchPutSh+"bench_put bench-guest-nvme-4k-randread-qd1.json "+src).Output()
	if err != nil {
		t.Fatal(err)
	}
	files := ExtractFiles(out)
	packed := files["bench-guest-nvme-4k-randread-qd1.json"+BenchPackedSuffix]
	if packed == nil || bytes.Count(packed, []byte("\n")) != 0 || len(packed) > 400 {
		t.Fatalf("packed file %q (%d bytes) from\n%s", packed, len(packed), out)
	}
	rep := &Report{Files: files, Result: &Result{}}
	for _, s := range BenchSamples(BenchBoot{Index: 1, Rep: 1, Backend: BackendKernel}, rep) {
		if s.Path == PathGuest && s.Backing == BackingNVMe && s.Workload == "4k-randread-qd1" {
			if !s.OK || s.IOPS != 321.5 || s.LatUs != 3110 {
				t.Errorf("sample from the packed file: %+v", s)
			}
			return
		}
	}
	t.Fatal("no sample for the row")
}

// TestBenchLockedPutDoesNotInterleave runs two background bench_lput of
// large files at once (bash and flock of this host): both arrive whole.
func TestBenchLockedPutDoesNotInterleave(t *testing.T) {
	bash := hostBash(t)
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("no flock on this host:", err)
	}
	dir := t.TempDir()
	a, b := strings.Repeat("a", 199)+"\n", strings.Repeat("b", 199)+"\n"
	for name, line := range map[string]string{"a.txt": a, "b.txt": b} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Repeat(line, 20000)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := hostLibSh() + benchLockedPutSh + "cd " + dir + "\nbench_lput a.txt a.txt &\nbench_lput b.txt b.txt &\nwait\n"
	out, err := exec.Command(bash, "-c", script).Output()
	if err != nil {
		t.Fatal(err)
	}
	files := ExtractFiles(out)
	if got := string(files["a.txt"]); got != strings.TrimSuffix(strings.Repeat(a, 20000), "\n") && got != strings.Repeat(a, 20000) {
		t.Errorf("a.txt arrived with %d bytes, %d b's", len(got), strings.Count(got, "b"))
	}
	if got := string(files["b.txt"]); strings.Count(got, "a") != 0 || strings.Count(got, "b") != 20000*199 {
		t.Errorf("b.txt arrived with %d bytes, %d a's", len(got), strings.Count(got, "a"))
	}
}

// lockedBuffer is a bytes.Buffer a command writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Bytes returns a copy of what was written so far.
func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}
