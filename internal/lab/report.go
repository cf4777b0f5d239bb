package lab

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Report is what the host collects from a run directory after a boot.
type Report struct {
	Out          string
	Backend      string // the driver domain's drvdom.backend, for labels
	Result       *Result
	Checks       []Check           // in log order: dom0's, the driver domain's, the guest's
	Files        map[string][]byte // lab_put files (also written to Out)
	FailedDomain string
	FailedWhy    string
	DrvdomScript *ScriptResult
	GuestScript  *ScriptResult
	Timeline     map[string]float64 // domain T markers: name -> uptime in that domain
}

// Domain logs in a run directory.
func domainLogs(out string) map[string]string {
	return map[string]string{
		"dom0":     filepath.Join(out, "dom0.log"),
		DrvdomName: filepath.Join(out, "console", "guest-"+DrvdomName+".log"),
		GuestName:  filepath.Join(out, "console", "guest-"+GuestName+".log"),
		Guest2Name: filepath.Join(out, "console", "guest-"+Guest2Name+".log"),
	}
}

// Collect parses the run directory's logs.
func Collect(out string, res *Result) *Report {
	r := &Report{Out: out, Result: res, Files: map[string][]byte{}, Timeline: map[string]float64{}}
	logs := domainLogs(out)
	for _, dom := range []string{"dom0", DrvdomName, GuestName, Guest2Name} {
		b, err := os.ReadFile(logs[dom])
		if err != nil {
			continue
		}
		ms := ParseMarkers(b)
		r.Checks = append(r.Checks, Checks(ms, dom)...)
		for k, v := range Timeline(ms) {
			r.Timeline[dom+"/"+k] = v
		}
		if dom == "dom0" {
			r.FailedDomain, r.FailedWhy, _ = FailedDomain(ms)
		}
		for name, data := range ExtractFiles(b) {
			r.Files[name] = data
			_ = os.WriteFile(filepath.Join(out, filepath.Base(name)), data, 0o644)
		}
		label := map[string]string{DrvdomName: "drvdom.sh", GuestName: "guest.sh"}[dom]
		if label != "" {
			if sr, ok := FindScript(b, label); ok {
				if dom == DrvdomName {
					r.DrvdomScript = &sr
				} else {
					r.GuestScript = &sr
				}
			}
		}
	}
	return r
}

// OK reports whether dom0 finished with exit code 0 and no check failed.
func (r *Report) OK() bool {
	if r.Result == nil || r.Result.ExitCode != 0 || r.FailedDomain != "" {
		return false
	}
	for _, c := range r.Checks {
		if !c.Pass {
			return false
		}
	}
	return true
}

// AllChecks returns the report's checks, plus a failed one for every name
// in expected that no log reported.
func (r *Report) AllChecks(expected []string) []Check {
	out := append([]Check(nil), r.Checks...)
	seen := map[string]bool{}
	for _, c := range r.Checks {
		seen[c.Name] = true
	}
	for _, n := range expected {
		if !seen[n] {
			out = append(out, Check{Name: n, Detail: "not reached"})
		}
	}
	return out
}

// Print writes the run's outcome: where its files are, the timeline, and,
// when something failed, which domain and the tail of its console.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "run directory: %s\n", r.Out)
	if r.Result != nil {
		fmt.Fprintf(w, "boot: %.1fs in all, dom0 exit code %d\n", r.Result.Elapsed.Seconds(), r.Result.ExitCode)
		for _, s := range r.Result.Stamps {
			fmt.Fprintf(w, "  %-18s %6.1fs after QEMU start\n", s.Name, s.At.Seconds())
		}
	}
	logs := domainLogs(r.Out)
	failed := r.FailedDomain
	if failed == "" && (r.Result == nil || r.Result.ExitCode < 0) {
		failed = "dom0"
	}
	if failed == "" {
		for _, c := range r.Checks {
			if !c.Pass {
				failed = c.Source
				break
			}
		}
	}
	if failed == "" {
		return
	}
	fmt.Fprintf(w, "FAILED: domain %s", failed)
	if r.FailedWhy != "" {
		fmt.Fprintf(w, " (%s)", r.FailedWhy)
	}
	fmt.Fprintln(w)
	for _, c := range r.Checks {
		if !c.Pass {
			fmt.Fprintf(w, "  FAIL %s [%s] %s\n", c.Name, c.Source, c.Detail)
		}
	}
	log := logs[failed]
	if failed == "dom0" {
		log = filepath.Join(r.Out, "serial.log")
	}
	fmt.Fprintf(w, "--- last 40 lines of %s ---\n%s\n---\n", log, Tail(log, 40))
	if _, err := os.Stat(filepath.Join(r.Out, "xenstore.txt")); err == nil {
		fmt.Fprintf(w, "xenstore dump: %s\n", filepath.Join(r.Out, "xenstore.txt"))
	}
}

// PrintBench writes the summary table of `xenlab run`.
func (r *Report) PrintBench(w io.Writer) {
	fmt.Fprintf(w, "%-52s %10s %10s %10s\n", "measurement", "IOPS", "MB/s", "Gbit/s")
	fmt.Fprintln(w, strings.Repeat("-", 85))
	row := func(name, file string) (float64, bool) {
		b, ok := r.Files[file]
		if !ok {
			fmt.Fprintf(w, "%-52s %10s\n", name, "(no result)")
			return 0, false
		}
		f, err := ParseFio(b)
		if err != nil {
			fmt.Fprintf(w, "%-52s %v\n", name, err)
			return 0, false
		}
		fmt.Fprintf(w, "%-52s %10.0f %10.1f %10s\n", name, f.ReadIOPS+f.WriteIOPS, (f.ReadBps+f.WriteBps)/1e6, "")
		return f.ReadIOPS + f.WriteIOPS, true
	}
	base, okb := 0.0, false
	if _, ok := r.Files["fio-drvdom.json"]; ok {
		base, okb = row("fio 4k randread QD16, driver domain, nvme0n1", "fio-drvdom.json")
	}
	via := "blkback"
	switch r.Backend {
	case BackendKernel:
		via = "kernel blkback"
	case BackendDrvdom:
		via = "drvdomd blkback"
	}
	g, okg := row("fio 4k randread QD16, guest via "+via, "fio-guest.json")
	if okb && okg && base > 0 {
		fmt.Fprintf(w, "%-52s %10.2f\n", "  guest / device limit", g/base)
	}
	if b, ok := r.Files["iperf3-guest.json"]; ok {
		if ip, err := ParseIperf3(b); err != nil {
			fmt.Fprintf(w, "%-52s %v\n", "iperf3 guest -> dom0", err)
		} else {
			fmt.Fprintf(w, "%-52s %10s %10.1f %10.3f\n", "iperf3 guest -> dom0 (received, "+map[string]string{BackendKernel: "kernel netback", BackendDrvdom: "drvdomd netback"}[r.Backend]+")", "", ip.ReceivedBps/8e6, ip.ReceivedBps/1e9)
		}
	} else {
		fmt.Fprintf(w, "%-52s %10s\n", "iperf3 guest -> dom0", "(no result)")
	}
}

// Figures are the performance numbers an e2e boot reports (0: not measured).
type Figures struct {
	RandReadIOPS float64 // fio 4k randread QD16 10 s on the passed-through NVMe, in the guest
	ToDom0Gbps   float64 // iperf3 TCP guest -> dom0, received
	FromDom0Gbps float64 // iperf3 -R: dom0 -> guest, received
}

// Figures reads the e2e guest's fio-guest.json, iperf3-guest.json and
// iperf3-reverse.json.
func (r *Report) Figures() Figures {
	var f Figures
	if b, ok := r.Files["fio-guest.json"]; ok {
		if fr, err := ParseFio(b); err == nil {
			f.RandReadIOPS = fr.ReadIOPS
		}
	}
	for name, dst := range map[string]*float64{"iperf3-guest.json": &f.ToDom0Gbps, "iperf3-reverse.json": &f.FromDom0Gbps} {
		if b, ok := r.Files[name]; ok {
			if ip, err := ParseIperf3(b); err == nil {
				*dst = ip.ReceivedBps / 1e9
			}
		}
	}
	return f
}

// PrintFigures writes one column per backend (in order) and, with both
// kernel and drvdom, the ratio drvdom/kernel: figures from boots of the
// same `xenlab e2e` run.
func PrintFigures(w io.Writer, backends []string, figs map[string]Figures) {
	fmt.Fprintf(w, "%-46s", "figure (same lab run, TCG: compare ratios)")
	for _, be := range backends {
		fmt.Fprintf(w, " %12s", be)
	}
	_, hasK := figs[BackendKernel]
	_, hasD := figs[BackendDrvdom]
	ratio := hasK && hasD
	if ratio {
		fmt.Fprintf(w, " %14s", "drvdom/kernel")
	}
	fmt.Fprintln(w)
	rows := []struct {
		name, format string
		get          func(Figures) float64
	}{
		{"fio 4k randread QD16 IOPS (NVMe, guest xvdb)", "%12.0f", func(f Figures) float64 { return f.RandReadIOPS }},
		{"iperf3 TCP guest -> dom0 Gbit/s", "%12.3f", func(f Figures) float64 { return f.ToDom0Gbps }},
		{"iperf3 TCP dom0 -> guest Gbit/s", "%12.3f", func(f Figures) float64 { return f.FromDom0Gbps }},
	}
	for _, row := range rows {
		fmt.Fprintf(w, "%-46s", row.name)
		for _, be := range backends {
			v := row.get(figs[be])
			if v == 0 {
				fmt.Fprintf(w, " %12s", "-")
			} else {
				fmt.Fprintf(w, " "+row.format, v)
			}
		}
		if ratio {
			k, d := row.get(figs[BackendKernel]), row.get(figs[BackendDrvdom])
			if k > 0 && d > 0 {
				fmt.Fprintf(w, " %14.2f", d/k)
			} else {
				fmt.Fprintf(w, " %14s", "-")
			}
		}
		fmt.Fprintln(w)
	}
}
