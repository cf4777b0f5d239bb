package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPlanBenchAlternatesModesAcrossReps(t *testing.T) {
	plan, err := PlanBench([]string{BackendKernel, BackendDrvdom}, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []BenchBoot{
		{1, 1, BackendKernel, false}, {2, 1, BackendDrvdom, false},
		{3, 2, BackendDrvdom, false}, {4, 2, BackendKernel, false},
		{5, 3, BackendKernel, false}, {6, 3, BackendDrvdom, false},
	}
	if len(plan) != len(want) {
		t.Fatalf("plan %v: want %d boots", plan, len(want))
	}
	for i := range want {
		if plan[i] != want[i] {
			t.Errorf("boot %d = %+v, want %+v", i, plan[i], want[i])
		}
	}
	one, err := PlanBench([]string{BackendDrvdom}, 2)
	if err != nil || len(one) != 2 || one[0].Backend != BackendDrvdom || one[1].Backend != BackendDrvdom || one[1].Rep != 2 {
		t.Errorf("single mode plan %v, %v", one, err)
	}
	for name, c := range map[string]struct {
		be   []string
		reps int
	}{
		"zero reps": {[]string{BackendKernel}, 0}, "no backend": {nil, 1},
		"unknown": {[]string{"qemu"}, 1}, "twice": {[]string{BackendKernel, BackendKernel}, 1},
	} {
		if _, err := PlanBench(c.be, c.reps); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestBenchScriptsRunEveryRowWithItsFile(t *testing.T) {
	dd := BenchDrvdomScript(7 * time.Second)
	g := BenchGuestScript(7 * time.Second)
	for _, w := range BlockWorkloads {
		for _, bk := range Backings {
			dkey := benchCheckName(BenchFileName(PathDevice, bk, w.Name))
			gkey := benchCheckName(BenchFileName(PathGuest, bk, w.Name))
			dev := map[string]string{BackingNVMe: NVMeTarget, BackingTmpfs: "$loop"}[bk]
			line := "bench_fio " + dkey + " " + dev + " " + w.RW + " " + w.BS + " " + itoa(w.QD) + "\n"
			if strings.Count(dd, line) != 1 {
				t.Errorf("driver domain script lacks %q", line)
			}
			gdev := map[string]string{BackingNVMe: "/dev/xvdb", BackingTmpfs: "/dev/xvdc"}[bk]
			line = "bench_fio " + gkey + " " + gdev + " " + w.RW + " " + w.BS + " " + itoa(w.QD) + "\n"
			if strings.Count(g, line) != 1 {
				t.Errorf("guest script lacks %q", line)
			}
			if strings.Contains(g, dkey) || strings.Contains(dd, gkey) {
				t.Errorf("%s: device and guest rows mixed up", w.Name)
			}
		}
	}
	for _, s := range []string{dd, g} {
		for _, want := range []string{"--ioengine=libaio", "--direct=1", "--time_based", "--runtime=7 ", "--output-format=json", `bench_put "$key.json"`} {
			if !strings.Contains(s, want) {
				t.Errorf("script lacks %q", want)
			}
		}
	}
	if !strings.Contains(dd, "dd if=/dev/zero of="+BenchTmpfsFile+" bs=1M count=256") || !strings.Contains(dd, "losetup -f --show "+BenchTmpfsFile) ||
		!strings.Contains(dd, `losetup -d "$loop"`) {
		t.Error("driver domain script does not make, loop and release the tmpfs backing")
	}
	// The loop device is released before the guest's backend may take the file.
	baseline := dd[:strings.Index(dd, "bench_after() {")] // the after-guest rows come later
	if strings.Index(dd, `losetup -d "$loop"`) < strings.LastIndex(baseline, "bench_fio ") {
		t.Error("loop released before the last baseline row")
	}
	for _, w := range NetWorkloads {
		key := benchCheckName(BenchFileName(PathNet, "", w.Name))
		cmd := "iperf3 -c " + Dom0IP + " -t 7 -P " + itoa(w.Streams)
		if w.Reverse {
			cmd += " -R"
		}
		cmd += " -J"
		if !strings.Contains(g, cmd) || !strings.Contains(g, "bench_put "+key+".json") || !strings.Contains(g, "lab_check "+key+" $r") {
			t.Errorf("guest script lacks %s (%q)", key, cmd)
		}
	}
	if strings.Count(g, "iperf3 -c") != len(NetWorkloads) {
		t.Errorf("guest script runs iperf3 %d times, want %d", strings.Count(g, "iperf3 -c"), len(NetWorkloads))
	}
	// Keys must survive the marker syntax (ParseMarkers).
	ms := ParseMarkers([]byte("@@LAB CHECK " + benchCheckName(BenchFileName(PathGuest, BackingTmpfs, "1m-write-qd4")) + " FAIL fio: x@@"))
	if len(ms) != 1 || len(Checks(ms, GuestName)) != 1 {
		t.Errorf("bench check name does not parse as a marker: %v", ms)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestBenchConfigsAndTimeouts(t *testing.T) {
	s := BenchScenario(BenchBoot{Index: 1, Rep: 1, Backend: BackendDrvdom}, 5*time.Second, "/x/drvdomd")
	if s.Backend != BackendDrvdom || s.Drvdomd != "/x/drvdomd" || s.DrvdomScript == "" || s.GuestScript == "" {
		t.Fatalf("scenario %+v", s)
	}
	g := BenchGuestConfig(s).Render()
	if !strings.Contains(g, DiskSpec("xvdb", DrvdomName, NVMeTarget)) || !strings.Contains(g, DiskSpec("xvdc", DrvdomName, BenchTmpfsFile)) {
		t.Errorf("guest config lacks a disk:\n%s", g)
	}
	d := BenchDrvdomConfig(s).Render()
	if !strings.Contains(d, "memory = 1024\n") || !strings.Contains(d, "drvdom.backend=drvdom") {
		t.Errorf("driver domain config:\n%s", d)
	}
	if s.GuestTimeout <= 14*5*time.Second || BenchBootTimeout(5*time.Second) <= s.GuestTimeout {
		t.Errorf("guest timeout %s, boot timeout %s", s.GuestTimeout, BenchBootTimeout(5*time.Second))
	}
	for _, rt := range []time.Duration{0, 500 * time.Millisecond, 61 * time.Second} {
		if CheckBenchRuntime(rt) == nil {
			t.Errorf("runtime %s accepted", rt)
		}
	}
	if err := CheckBenchRuntime(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// fioJSON is a synthetic fio result.
func fioJSON(readIOPS, readBw, readLatNs, writeIOPS, writeBw, writeLatNs float64, ios int) []byte {
	rios, wios := 0, 0
	if readIOPS > 0 {
		rios = ios
	}
	if writeIOPS > 0 {
		wios = ios
	}
	return []byte(`fio: warning first
{"jobs":[{"jobname":"x","error":0,
 "read":{"iops":` + f(readIOPS) + `,"bw_bytes":` + f(readBw) + `,"total_ios":` + itoa(rios) + `,"lat_ns":{"mean":` + f(readLatNs) + `}},
 "write":{"iops":` + f(writeIOPS) + `,"bw_bytes":` + f(writeBw) + `,"total_ios":` + itoa(wios) + `,"lat_ns":{"mean":` + f(writeLatNs) + `}}}]}`)
}

func f(v float64) string { b, _ := json.Marshal(v); return string(b) }

func iperfJSON(bps float64) []byte {
	return []byte(`{"end":{"sum_sent":{"bits_per_second":` + f(bps*1.01) + `},"sum_received":{"bits_per_second":` + f(bps) + `}}}`)
}

func TestBenchSamplesFromReport(t *testing.T) {
	boot := BenchBoot{Index: 3, Rep: 2, Backend: BackendKernel}
	rep := &Report{Result: &Result{ExitCode: 1}, Files: map[string][]byte{}}
	rep.Files[BenchFileName(PathDevice, BackingNVMe, "4k-randread-qd1")] = fioJSON(1500, 1500*4096, 600e3, 0, 0, 0, 15000)
	rep.Files[BenchFileName(PathGuest, BackingNVMe, "4k-randwrite-qd32")] = fioJSON(0, 0, 0, 1000, 1000*4096, 30e6, 10000)
	rep.Files[BenchFileName(PathGuest, BackingTmpfs, "4k-randread-qd1")] = []byte("fio: io_u error\n")
	rep.Files[BenchFileName(PathNet, "", "dom0-to-guest-P4")] = iperfJSON(2.5e9)
	rep.Files[BenchFileName(PathNet, "", "guest-to-dom0-P1")] = []byte(`{"error":"unable to connect to server"}`)
	rep.Checks = []Check{
		{Name: benchCheckName(BenchFileName(PathGuest, BackingTmpfs, "1m-read-qd4")), Pass: false, Detail: "no block device /dev/xvdc"},
		{Name: benchCheckName(BenchFileName(PathGuest, BackingTmpfs, "4k-randread-qd1")), Pass: false, Detail: "fio randread: Invalid argument"},
	}
	ss := BenchSamples(boot, rep)
	if want := 2*len(Backings)*len(BlockWorkloads) + len(NetWorkloads); len(ss) != want {
		t.Fatalf("%d samples, want %d", len(ss), want)
	}
	get := func(path, bk, w string) BenchSample {
		for _, s := range ss {
			if s.Path == path && s.Backing == bk && s.Workload == w {
				return s
			}
		}
		t.Fatalf("no sample %s/%s/%s", path, bk, w)
		return BenchSample{}
	}
	for _, s := range ss {
		if s.Boot != 3 || s.Rep != 2 || s.Backend != BackendKernel {
			t.Fatalf("sample %+v: boot fields not set", s)
		}
	}
	s := get(PathDevice, BackingNVMe, "4k-randread-qd1")
	if !s.OK || s.IOPS != 1500 || math.Abs(s.MBps-6.144) > 1e-9 || s.LatUs != 600 {
		t.Errorf("device randread: %+v", s)
	}
	s = get(PathGuest, BackingNVMe, "4k-randwrite-qd32")
	if !s.OK || s.IOPS != 1000 || s.LatUs != 30000 {
		t.Errorf("guest randwrite (write side only; zero-I/O read side must not dilute the latency): %+v", s)
	}
	s = get(PathGuest, BackingTmpfs, "4k-randread-qd1")
	if s.OK || !strings.Contains(s.Error, "fio json") || !strings.Contains(s.Error, "Invalid argument") || s.IOPS != 0 {
		t.Errorf("unparseable file: %+v", s)
	}
	s = get(PathGuest, BackingTmpfs, "1m-read-qd4")
	if s.OK || s.Error != "failed: no block device /dev/xvdc" {
		t.Errorf("failed check: %+v", s)
	}
	s = get(PathGuest, BackingNVMe, "1m-read-qd4")
	if s.OK || s.Error != "not run: no result" {
		t.Errorf("missing row: %+v", s)
	}
	s = get(PathNet, "", "dom0-to-guest-P4")
	if !s.OK || s.Gbps != 2.5 {
		t.Errorf("iperf3: %+v", s)
	}
	s = get(PathNet, "", "guest-to-dom0-P1")
	if s.OK || !strings.Contains(s.Error, "unable to connect") {
		t.Errorf("iperf3 error: %+v", s)
	}

	dead := &Report{FailedDomain: "guest", FailedWhy: "no READY marker after 300s", Result: &Result{ExitCode: 1}}
	for _, s := range BenchSamples(BenchBoot{Index: 1, Rep: 1, Backend: BackendDrvdom}, dead) {
		if s.OK || !strings.Contains(s.Error, "domain guest failed (no READY marker after 300s)") {
			t.Fatalf("dead boot sample %+v", s)
		}
	}
	unfinished := &Report{}
	if s := BenchSamples(boot, unfinished)[0]; s.Error != "not run: the boot did not finish" {
		t.Errorf("unfinished boot: %q", s.Error)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{5}, 5}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{10, 10, 1000}, 10}} {
		in := append([]float64(nil), c.in...)
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
		for i := range in {
			if in[i] != c.in[i] {
				t.Fatalf("Median reordered its input")
			}
		}
	}
}

// synthSamples: 3 reps, nvme 4k-randread-qd1 measured everywhere, drvdom
// guest failing on tmpfs, network measured by the kernel only.
func synthSamples() []BenchSample {
	var ss []BenchSample
	add := func(be, path, bk, w string, rep int, v float64, errMsg string) {
		s := BenchSample{Boot: rep*2 - 1, Rep: rep, Backend: be, Path: path, Backing: bk, Workload: w, OK: errMsg == "", Error: errMsg}
		if s.OK {
			switch path {
			case PathNet:
				s.Gbps = v
			default:
				s.IOPS, s.MBps, s.LatUs = v, v*4096/1e6, 1e6/v
			}
		}
		ss = append(ss, s)
	}
	for rep := 1; rep <= 3; rep++ {
		// limit: kernel boots 1000, 1100, 1200; drvdom boots 900, 1000, 5000
		add(BackendKernel, PathDevice, BackingNVMe, "4k-randread-qd1", rep, 900+100*float64(rep), "")
		add(BackendDrvdom, PathDevice, BackingNVMe, "4k-randread-qd1", rep, []float64{900, 1000, 5000}[rep-1], "")
		add(BackendKernel, PathGuest, BackingNVMe, "4k-randread-qd1", rep, []float64{700, 800, 900}[rep-1], "")
		add(BackendDrvdom, PathGuest, BackingNVMe, "4k-randread-qd1", rep, []float64{400, 500, 9999}[rep-1], "")
		add(BackendDrvdom, PathGuest, BackingTmpfs, "1m-write-qd4", rep, 0, "not run: domain guest failed (no READY | marker)")
		add(BackendKernel, PathNet, "", "guest-to-dom0-P4", rep, float64(rep), "")
	}
	// one of the drvdom samples failed on top
	add(BackendDrvdom, PathGuest, BackingNVMe, "4k-randread-qd1", 3, 0, "fio died")
	return ss
}

func findRow(t *testing.T, rows []BenchRow, label string) BenchRow {
	t.Helper()
	for _, r := range rows {
		if r.Label() == label {
			return r
		}
	}
	t.Fatalf("no row %q", label)
	return BenchRow{}
}

func TestAggregateBenchMediansAndRatios(t *testing.T) {
	be := []string{BackendKernel, BackendDrvdom}
	rows := AggregateBench(synthSamples(), be)
	if want := len(Backings)*len(BlockWorkloads) + len(NetWorkloads); len(rows) != want {
		t.Fatalf("%d rows, want %d", len(rows), want)
	}
	if rows[0].Label() != "nvme 4k-randread-qd1" || rows[len(rows)-1].Label() != "net dom0-to-guest-P4" {
		t.Errorf("row order: first %q last %q", rows[0].Label(), rows[len(rows)-1].Label())
	}
	r := findRow(t, rows, "nvme 4k-randread-qd1")
	if r.Limit.N != 6 || r.Limit.Median != 1050 { // 900 1000 1000 1100 1200 5000
		t.Errorf("limit %+v", r.Limit)
	}
	if r.LimitBy[BackendKernel].Median != 1100 || r.LimitBy[BackendDrvdom].Median != 1000 {
		t.Errorf("limit by mode %+v", r.LimitBy)
	}
	if g := r.Guest[BackendKernel]; g.N != 3 || g.Median != 800 || g.Failed != 0 {
		t.Errorf("kernel %+v", g)
	}
	if g := r.Guest[BackendDrvdom]; g.N != 3 || g.Median != 500 || g.Failed != 1 || g.Reason != "fio died" {
		t.Errorf("drvdom %+v", g)
	}
	if lat := r.Guest[BackendKernel].LatUs; math.Abs(lat-1e6/800) > 1e-6 {
		t.Errorf("kernel latency median %v", lat)
	}
	qs := r.Ratios(be)
	want := []BenchRatio{{"drvdom/kernel", 500.0 / 800, true}, {"kernel/limit", 800.0 / 1100, true}, {"drvdom/limit", 500.0 / 1000, true}}
	if len(qs) != len(want) {
		t.Fatalf("ratios %v", qs)
	}
	for i := range want {
		if qs[i].Name != want[i].Name || qs[i].OK != want[i].OK || math.Abs(qs[i].Value-want[i].Value) > 1e-12 {
			t.Errorf("ratio %d = %+v, want %+v", i, qs[i], want[i])
		}
	}
	tm := findRow(t, rows, "tmpfs 1m-write-qd4")
	if g := tm.Guest[BackendDrvdom]; g.OK() || g.Failed != 3 || !strings.Contains(g.Reason, "domain guest failed") {
		t.Errorf("failed cell %+v", g)
	}
	for _, q := range tm.Ratios(be) {
		if q.OK {
			t.Errorf("tmpfs 1m-write ratio %+v without data", q)
		}
	}
	n := findRow(t, rows, "net guest-to-dom0-P4")
	if n.Guest[BackendKernel].Median != 2 || n.Limit.OK() {
		t.Errorf("net row %+v", n)
	}
	if qs := n.Ratios(be); len(qs) != 1 || qs[0].Name != "drvdom/kernel" || qs[0].OK {
		t.Errorf("net ratios %+v", qs)
	}
	// One backend only: no drvdom/kernel column.
	if qs := findRow(t, AggregateBench(synthSamples(), []string{BackendKernel}), "nvme 4k-randread-qd1").Ratios([]string{BackendKernel}); len(qs) != 1 || qs[0].Name != "kernel/limit" {
		t.Errorf("kernel-only ratios %+v", qs)
	}
}

func TestWriteBenchMarkdown(t *testing.T) {
	be := []string{BackendKernel, BackendDrvdom}
	var b bytes.Buffer
	WriteBenchMarkdown(&b, AggregateBench(synthSamples(), be), be)
	md := b.String()
	lines := strings.Split(md, "\n")
	if lines[0] != "| row | metric | device limit | kernel | drvdom | drvdom/kernel | kernel/limit | drvdom/limit |" {
		t.Errorf("header %q", lines[0])
	}
	if lines[1] != "|---|---|---:|---:|---:|---:|---:|---:|" {
		t.Errorf("separator %q", lines[1])
	}
	table := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "| ") {
			table++
			// every row has the header's column count (escaped pipes aside)
			if c := strings.Count(strings.ReplaceAll(l, `\|`, ""), "|"); c != 9 {
				t.Errorf("%d pipes in %q", c, l)
			}
		}
	}
	if want := 1 + len(Backings)*len(BlockWorkloads) + len(NetWorkloads); table != want {
		t.Errorf("%d table lines, want %d", table, want)
	}
	for _, want := range []string{
		"| nvme 4k-randread-qd1 | IOPS | 1050 (n=6, 900–5000, 955 µs) | 800 (n=3, 700–900, 1250 µs) | 500 (n=3, 400–9999, 2000 µs, 1 failed) | 0.62x | 0.73x | 0.50x |",
		"| tmpfs 1m-write-qd4 | MB/s | — | — | FAILED: not run: domain guest failed (no READY \\| marker) | — | — | — |",
		"| net guest-to-dom0-P4 | Gbit/s | — | 2.000 (n=3, 1.000–3.000) | — | — |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks\n%s\nin\n%s", want, md)
		}
	}
}

func TestWriteBenchSVGWellFormedOneBarPerRatio(t *testing.T) {
	be := []string{BackendKernel, BackendDrvdom}
	rows := AggregateBench(synthSamples(), be)
	// A label that needs escaping.
	rows[0].Workload = `4k<&>"qd1"`
	var b bytes.Buffer
	if err := WriteBenchSVG(&b, rows, be); err != nil {
		t.Fatal(err)
	}
	wantBars := 0
	for _, r := range rows {
		for _, q := range r.Ratios(be) {
			if q.OK {
				wantBars++
			}
		}
	}
	if wantBars != 3 {
		t.Fatalf("synthetic data has %d defined ratios, want 3", wantBars)
	}
	d := xml.NewDecoder(&b)
	bars, lines, texts := 0, 0, []string{}
	var root string
	var widths []string
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("svg is not well-formed XML: %v", err)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = e.Name.Local
				if e.Name.Space != "http://www.w3.org/2000/svg" {
					t.Errorf("root namespace %q", e.Name.Space)
				}
			}
			attr := map[string]string{}
			for _, a := range e.Attr {
				attr[a.Name.Local] = a.Value
			}
			if e.Name.Local == "rect" && attr["class"] == "bar" {
				bars++
				widths = append(widths, attr["width"])
			}
			if e.Name.Local == "line" && attr["class"] == "one" {
				lines++
			}
		case xml.CharData:
			texts = append(texts, string(e))
		}
	}
	if root != "svg" || bars != wantBars || lines != 1 {
		t.Errorf("root %q, %d bars (want %d), %d 1.0x lines", root, bars, wantBars, lines)
	}
	all := strings.Join(texts, "\n")
	for _, want := range []string{`nvme 4k<&>"qd1" (IOPS)`, "0.62x", "0.73x", "0.50x", "1.0x", "drvdom/limit n/a", "net guest-to-dom0-P4 (Gbit/s)"} {
		if !strings.Contains(all, want) {
			t.Errorf("svg text lacks %q", want)
		}
	}
	// Bars are proportional: drvdom/kernel 0.625 vs drvdom/limit 0.5.
	var w []float64
	for _, s := range widths {
		var v float64
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("width %q: %v", s, err)
		}
		w = append(w, v)
	}
	if math.Abs(w[0]/w[2]-0.625/0.5) > 0.01 {
		t.Errorf("bar widths %v not proportional to the ratios", w)
	}
}

func TestWriteBenchOutputs(t *testing.T) {
	dir := t.TempDir()
	o := BenchOptions{Backends: []string{BackendKernel, BackendDrvdom}, Reps: 3, Runtime: 10 * time.Second}
	plan, _ := PlanBench(o.Backends, o.Reps)
	res := &BenchResult{Plan: plan, Samples: synthSamples(),
		Boots: []BenchBootLog{{Boot: 1, Backend: BackendKernel, ElapsedS: 326, LoadStart: "1.90 3.24 3.45", LoadEnd: "2.00 2.10 2.20"}}}
	if err := WriteBenchOutputs(dir, o, res); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		RuntimeS float64           `json:"runtime_s"`
		Plan     []BenchBoot       `json:"plan"`
		Samples  []json.RawMessage `json:"samples"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.RuntimeS != 10 || len(doc.Plan) != 6 || len(doc.Samples) != len(res.Samples) {
		t.Errorf("bench.json: runtime %v, %d boots, %d samples", doc.RuntimeS, len(doc.Plan), len(doc.Samples))
	}
	if !bytes.Contains(b, []byte(`"plan": [
    {
      "boot": 1,`)) {
		t.Errorf("bench.json plan not in lower-case keys")
	}
	for _, key := range []string{`"backend"`, `"path"`, `"backing"`, `"workload"`, `"rep"`, `"iops"`, `"mb_s"`, `"lat_us"`, `"gbit_s"`, `"error"`, `"host_loadavg_start": "1.90 3.24 3.45"`, `"elapsed_s": 326`} {
		if !bytes.Contains(b, []byte(key)) {
			t.Errorf("bench.json lacks %s", key)
		}
	}
	md, _ := os.ReadFile(filepath.Join(dir, "bench.md"))
	svg, _ := os.ReadFile(filepath.Join(dir, "bench.svg"))
	if !bytes.HasPrefix(md, []byte("| row |")) || !bytes.HasPrefix(svg, []byte("<svg ")) {
		t.Errorf("bench.md/bench.svg not written")
	}
	if !res.Measured() || (&BenchResult{Samples: []BenchSample{{Error: "x"}}}).Measured() {
		t.Error("Measured")
	}
}

func TestBenchMainFlags(t *testing.T) {
	built := false
	for _, args := range [][]string{{"--reps", "0"}, {"--backends", "kernel,xen"}, {"--runtime", "61"}, {"--nope"}, {"--makeup", "-1"}} {
		code, err := BenchMain(t.Context(), NewProgress(nil), args, io.Discard, func(ctx context.Context) (*Artifacts, error) {
			built = true
			return nil, errors.New("no lab here")
		}, nil)
		if code != 2 || err == nil {
			t.Errorf("%v: code %d, err %v; want 2 and an error", args, code, err)
		}
	}
	if built {
		t.Error("lab built despite bad flags")
	}
	// Good flags reach the build; its failure is exit code 1.
	code, err := BenchMain(t.Context(), NewProgress(nil), []string{"--runtime", "5", "--reps", "1", "--out", t.TempDir()}, io.Discard,
		func(ctx context.Context) (*Artifacts, error) { built = true; return nil, errors.New("no lab here") }, nil)
	if code != 1 || err == nil || !built {
		t.Errorf("build failure: code %d err %v built %v", code, err, built)
	}
	if !regexp.MustCompile(`^\d+$`).MatchString("5") || isDigits("5s") || isDigits("") {
		t.Error("isDigits")
	}
}

func TestBenchScriptsParseAsShell(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash on this host:", err)
	}
	for name, s := range map[string]string{"drvdom.sh": BenchDrvdomScript(10 * time.Second), "guest.sh": BenchGuestScript(10 * time.Second)} {
		cmd := exec.Command(bash, "-n")
		cmd.Stdin = strings.NewReader(s)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: bash -n: %v\n%s", name, err, out)
		}
	}
}

func TestFollowBenchChecksReportsRowsAsTheyAppear(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "dd.log"), filepath.Join(dir, "missing-yet.log")
	if err := os.WriteFile(a, []byte("boot noise\n@@LAB CHECK drvdom-nvme-passthrough PASS x@@\n@@LAB CHECK bench-device-nvme-4k-randread-qd1 PASS fio@@\n@@LAB CHECK bench-dev"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		followBenchChecks(ctx, []string{a, b}, 5*time.Millisecond, func(src string, c Check) {
			got <- filepath.Base(src) + " " + c.Name + " " + strconv.FormatBool(c.Pass)
		})
	}()
	if s := <-got; s != "dd.log bench-device-nvme-4k-randread-qd1 true" {
		t.Fatalf("first row %q", s)
	}
	// Finish the half-written marker, and the second log appears.
	fa, err := os.OpenFile(a, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fa.WriteString("ice-tmpfs-1m-write-qd4 FAIL oops@@\n")
	fa.Close()
	if err := os.WriteFile(b, []byte("@@LAB CHECK bench-net-guest-to-dom0-P1 PASS iperf3@@\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < 2 {
		seen[<-got] = true
	}
	cancel()
	<-done
	if !seen["dd.log bench-device-tmpfs-1m-write-qd4 false"] || !seen["missing-yet.log bench-net-guest-to-dom0-P1 true"] {
		t.Errorf("rows %v", seen)
	}
	select {
	case s := <-got:
		t.Errorf("row reported twice or non-bench check reported: %q", s)
	default:
	}
}

func TestWatchStall(t *testing.T) {
	dir := t.TempDir()
	live, quiet := filepath.Join(dir, "live.log"), filepath.Join(dir, "quiet.log")
	os.WriteFile(quiet, []byte("x"), 0o644)

	// Silent files: onStall fires once, and watchStall returns.
	fired := 0
	start := time.Now()
	watchStall(t.Context(), []string{quiet, filepath.Join(dir, "absent.log")}, 5*time.Millisecond, 60*time.Millisecond, func() { fired++ })
	if fired != 1 || time.Since(start) < 60*time.Millisecond {
		t.Fatalf("fired %d after %s", fired, time.Since(start))
	}

	// A file that keeps growing holds it off; ctx ending returns without firing.
	// The stall is 100 times the writer's period: a writer held off by a
	// loaded machine (the race detector, a lab boot beside the tests) for
	// 80 ms once made a stall of 80 ms fire.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	fired = 0
	go func() {
		defer close(done)
		watchStall(ctx, []string{quiet, live}, 5*time.Millisecond, time.Second, func() { fired++ })
	}()
	f, err := os.Create(live)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); { // past the 1 s stall
		f.WriteString("line\n")
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if fired != 0 {
		t.Errorf("fired %d times on a live log", fired)
	}
}

// TestWatchStallWaitsForTheFirstOutput: a boot queued behind other boots
// for the lab's lock has empty logs; that is not a hang (bench boot 1 of
// /tmp/h4/real was stopped after 7 minutes in the queue). The clock starts
// with the first output.
func TestWatchStallWaitsForTheFirstOutput(t *testing.T) {
	dir := t.TempDir()
	serial := filepath.Join(dir, "serial.log")
	if err := os.WriteFile(serial, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fired := make(chan time.Time, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchStall(ctx, []string{serial, filepath.Join(dir, "absent.log")}, 5*time.Millisecond, 40*time.Millisecond, func() { fired <- time.Now() })
	}()
	select {
	case <-fired:
		t.Fatal("fired while the logs were still empty (queued for the lab)")
	case <-time.After(200 * time.Millisecond):
	}
	wrote := time.Now()
	if err := os.WriteFile(serial, []byte("Xen 4.17\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-fired:
		if at.Sub(wrote) < 40*time.Millisecond {
			t.Errorf("fired %v after the first output, before the 40ms stall", at.Sub(wrote))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a boot silent after its first output was not stopped")
	}
	<-done
}

func TestLastStampInFailureReasons(t *testing.T) {
	if lastStamp(nil) != "" || lastStamp(&Result{}) != "" {
		t.Error("stamp from nothing")
	}
	r := &Result{Stamps: []Stamp{{"dom0-ready", 26 * time.Second}, {"images-copied", 34 * time.Second}}}
	if got := lastStamp(r); got != " (dom0 last reached images-copied at 34s)" {
		t.Errorf("lastStamp = %q", got)
	}
}

func TestBenchDom0ScriptWaitsLongerForTheBaseline(t *testing.T) {
	s := BenchScenario(BenchBoot{Index: 1, Rep: 1, Backend: BackendKernel}, 10*time.Second, "")
	got, err := BenchDom0Script(s, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	w := BenchDrvdomWait(10 * time.Second)
	if w != 300+10*40 {
		t.Errorf("wait %d", w)
	}
	want := "lab_wait_log \"$DDLOG\" '" + ReadyShell + "' " + itoa(w) + " || fail_domain drvdom \"not ready after " + itoa(w) + "s"
	if !strings.Contains(got, want) {
		t.Errorf("dom0 script lacks %q", want)
	}
	// It waits for the driver domain's after-guest rows just before it
	// ends; nothing else changed.
	after := benchDom0AfterWait(10 * time.Second)
	if !strings.Contains(after, "'@@LAB "+BenchAfterMark+"'") || !strings.Contains(got, after+"xl list\n[ \"$fails\" = 0 ] || dump\nlab_t dom0-done\n") {
		t.Errorf("dom0 script does not wait for the after-guest rows at its end:\n%s", got)
	}
	if strings.Replace(strings.Replace(got, after, "", 1), itoa(w), "300", 2) != s.Dom0Script() {
		t.Error("dom0 script changed beyond the ready wait and the after-guest wait")
	}
	s.DrvdomReady = "something else"
	if _, err := BenchDom0Script(s, 10*time.Second); err != nil {
		t.Errorf("custom ready pattern: %v", err)
	}
}

func TestXlErrorNamesTheFirstLibxlError(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "xl-create-guest.log")
	os.WriteFile(p, []byte("domainbuilder: detail: loader probe failed\n"+
		"libxl: error: libxl_device.c:1181:device_backend_callback: Domain 2:unable to add device with path /local/domain/1/backend/vbd/2/51728\n"+
		"libxl: error: libxl_create.c:1672:domcreate_launch_dm: Domain 2:unable to add disk devices\n"), 0o644)
	if got := xlError(p); got != ": unable to add device with path /local/domain/1/backend/vbd/2/51728" {
		t.Errorf("xlError = %q", got)
	}
	if xlError(filepath.Join(dir, "none.log")) != "" {
		t.Error("error from a missing log")
	}
}

func TestHostLoad(t *testing.T) {
	if _, err := os.Stat("/proc/loadavg"); err != nil {
		t.Skip("no /proc/loadavg:", err)
	}
	if f := strings.Fields(hostLoad()); len(f) != 3 {
		t.Errorf("hostLoad() = %q", hostLoad())
	}
}

// benchBootSamples is every sample of one boot of be, measured, except the
// rows lost names (BenchFileName's check names, "" for none).
func benchBootSamples(boot BenchBoot, lost ...string) []BenchSample {
	var out []BenchSample
	add := func(path, bk, w string) {
		s := BenchSample{Boot: boot.Index, Rep: boot.Rep, Backend: boot.Backend, Path: path, Backing: bk, Workload: w, OK: true, IOPS: 100, MBps: 1, Gbps: 0.1}
		for _, l := range lost {
			if l == benchCheckName(BenchFileName(path, bk, w)) {
				s = BenchSample{Boot: boot.Index, Rep: boot.Rep, Backend: boot.Backend, Path: path, Backing: bk, Workload: w, Error: "disturbed: storm"}
			}
		}
		out = append(out, s)
	}
	for _, path := range []string{PathDevice, PathGuest} {
		for _, bk := range Backings {
			for _, w := range BlockWorkloads {
				add(path, bk, w.Name)
			}
		}
	}
	for _, w := range NetWorkloads {
		add(PathNet, "", w.Name)
	}
	return out
}

func TestBenchMakeupPicksTheShortestMode(t *testing.T) {
	be := []string{BackendKernel, BackendDrvdom}
	plan, _ := PlanBench(be, 3)
	var all []BenchSample
	for _, b := range plan {
		all = append(all, benchBootSamples(b)...)
	}
	if got, short := BenchMakeup(all, be, 3, BackendDrvdom); got != "" || short != nil {
		t.Errorf("complete matrix: make-up %q %v", got, short)
	}
	// A kernel boot whose guest never started: its guest and net rows fail.
	var lost []string
	for _, w := range BlockWorkloads {
		for _, bk := range Backings {
			lost = append(lost, benchCheckName(BenchFileName(PathGuest, bk, w.Name)))
		}
	}
	for _, w := range NetWorkloads {
		lost = append(lost, benchCheckName(BenchFileName(PathNet, "", w.Name)))
	}
	var ss []BenchSample
	for _, b := range plan {
		switch {
		case b.Index == 1:
			ss = append(ss, benchBootSamples(b, lost...)...)
		case b.Backend == BackendDrvdom && b.Rep == 2:
			ss = append(ss, benchBootSamples(b, "bench-guest-nvme-1m-read-qd4")...)
		default:
			ss = append(ss, benchBootSamples(b)...)
		}
	}
	got, short := BenchMakeup(ss, be, 3, BackendDrvdom)
	if got != BackendKernel || len(short) != len(lost) || !slices.Contains(short, "nvme 4k-randread-qd1 guest 2/3") || !slices.Contains(short, "dom0-to-guest-P4 net 2/3") {
		t.Errorf("make-up %q, short rows %q", got, short)
	}
	// One row short on each side: the mode not booted last.
	ss = append(ss, benchBootSamples(BenchBoot{Index: 7, Rep: 4, Backend: BackendKernel, Makeup: true}, "bench-guest-tmpfs-4k-randread-qd1")...)
	for _, last := range be {
		got, short := BenchMakeup(ss, be, 3, last)
		if got == last || len(short) != 1 {
			t.Errorf("tie after %s: make-up %q %q", last, got, short)
		}
	}
	if got, _ := BenchMakeup(ss, be, 2, BackendKernel); got != "" {
		t.Errorf("reps 2: make-up %q, want none", got)
	}
}

func TestRunBenchMakeupBoots(t *testing.T) {
	// Boot 1 (kernel) loses two rows, boot 2 (drvdom) an NVMe row; the
	// first make-up boot (kernel: two rows short against one) loses one of
	// them again, so one row is short on each side and the second goes to
	// drvdom (not booted last), the third to the kernel; then nothing is
	// short and the budget's other two are not used.
	var booted []BenchBoot
	fake := func(ctx context.Context, b BenchBoot, dir string) (BenchBootLog, []BenchSample, error) {
		booted = append(booted, b)
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("boot %d: run directory: %v", b.Index, err)
		}
		var lost []string
		switch b.Index {
		case 1, 3:
			lost = []string{"bench-guest-tmpfs-1m-write-qd4", "bench-net-guest-to-dom0-P1"}
		case 2:
			lost = []string{"bench-guest-nvme-4k-randread-qd32"}
		}
		if b.Index == 3 && b.Makeup {
			lost = lost[:1]
		}
		return BenchBootLog{Boot: b.Index, Backend: b.Backend, Dir: dir}, benchBootSamples(b, lost...), nil
	}
	out := t.TempDir()
	o := BenchOptions{Out: out, Backends: []string{BackendKernel, BackendDrvdom}, Reps: 1, Runtime: 10 * time.Second, Makeup: 5, bootFn: fake}
	var log strings.Builder
	res, err := RunBench(t.Context(), nil, o, NewProgress(&log))
	if err != nil {
		t.Fatal(err)
	}
	want := []BenchBoot{
		{1, 1, BackendKernel, false}, {2, 1, BackendDrvdom, false},
		{3, 2, BackendKernel, true}, {4, 2, BackendDrvdom, true}, {5, 3, BackendKernel, true},
	}
	if !slices.Equal(booted, want) || !slices.Equal(res.Plan, want) {
		t.Errorf("booted %v, plan %v; want %v", booted, res.Plan, want)
	}
	for _, d := range []string{"boot-01-rep1-kernel", "boot-03-makeup-kernel", "boot-04-makeup-drvdom"} {
		if _, err := os.Stat(filepath.Join(out, d)); err != nil {
			t.Errorf("run directory: %v", err)
		}
	}
	for _, r := range res.Rows {
		for be, st := range r.Guest {
			if st.N < 1 {
				t.Errorf("%s %s: n=%d after make-up boots", r.Label(), be, st.N)
			}
		}
	}
	if !strings.Contains(log.String(), "make-up boot 1 of at most 5, backend=kernel: tmpfs 1m-write-qd4 guest 0/1, guest-to-dom0-P1 net 0/1") ||
		!strings.Contains(log.String(), "bench boot 5/2+3:") {
		t.Errorf("progress lacks the make-up boots:\n%s", log.String())
	}
	var doc benchJSON
	b, _ := os.ReadFile(filepath.Join(out, "bench.json"))
	if err := json.Unmarshal(b, &doc); err != nil || len(doc.Plan) != 5 || !doc.Plan[4].Makeup || len(doc.Boots) != 5 {
		t.Errorf("bench.json: plan %v, %d boots, %v", doc.Plan, len(doc.Boots), err)
	}

	// The budget bounds them; none when nothing is short.
	booted = nil
	o.Out, o.Makeup = t.TempDir(), 1
	if res, err = RunBench(t.Context(), nil, o, nil); err != nil || len(booted) != 3 || len(res.Plan) != 3 {
		t.Errorf("budget 1: %d boots, %v", len(booted), err)
	}
	booted = nil
	o.Out, o.Makeup, o.Backends = t.TempDir(), 3, []string{BackendDrvdom}
	fake2 := func(ctx context.Context, b BenchBoot, dir string) (BenchBootLog, []BenchSample, error) {
		booted = append(booted, b)
		return BenchBootLog{Boot: b.Index}, benchBootSamples(b), nil
	}
	o.bootFn = fake2
	if _, err = RunBench(t.Context(), nil, o, nil); err != nil || len(booted) != 1 {
		t.Errorf("complete run: %d boots, %v", len(booted), err)
	}
	o.Makeup = -1
	if _, err = RunBench(t.Context(), nil, o, nil); err == nil {
		t.Error("negative make-up budget accepted")
	}
}
