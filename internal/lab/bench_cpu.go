package lab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Per-row CPU: the driver domain's sampler (bench_ddstat) and dom0's
// (BenchDom0Phase) stamp every snapshot with the wallclock ("E" lines), and
// each guest row's fio or iperf3 JSON says when it ran, so each row gets the
// CPU the driver domain, drvdomd and dom0 spent while it ran: what stands
// between a backend and its target when a row misses it.

// iperf3Span is the part of iperf3's JSON that says when it ran.
type iperf3Span struct {
	Start struct {
		Timestamp struct {
			Timesecs int64 `json:"timesecs"`
		} `json:"timestamp"`
		TestStart struct {
			Duration int64 `json:"duration"`
		} `json:"test_start"`
	} `json:"start"`
}

// rowSpan returns the epoch seconds a row's JSON (fio or iperf3) ran over.
func rowSpan(b []byte) (from, to int64, ok bool) {
	if from, to, ok := fioSpan(b); ok {
		return from, to, true
	}
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return 0, 0, false
	}
	var s iperf3Span
	if err := json.NewDecoder(bytes.NewReader(b[i:])).Decode(&s); err != nil || s.Start.Timestamp.Timesecs <= 0 {
		return 0, 0, false
	}
	return s.Start.Timestamp.Timesecs, s.Start.Timestamp.Timesecs + s.Start.TestStart.Duration, true
}

// cpuOver returns, over the intervals between consecutive snapshots that
// overlap [from, to] (each weighted by the part of it inside: under TCG
// the sampler's intervals run longer than its nominal period and rarely
// line up with a row), the busy share of the domain's CPU time and the
// share spent by the sampled processes (drvdomd); ok is false when no
// interval overlaps.
func cpuOver(snaps []DDSnap, from, to int64) (busy, procs float64, ok bool) {
	var dBusy, dTotal, dProc float64
	for i := 1; i < len(snaps); i++ {
		a, b := snaps[i-1], snaps[i]
		if a.Epoch == 0 || b.Epoch <= a.Epoch || b.Total < a.Total || b.Busy < a.Busy {
			continue
		}
		lo, hi := max(a.Epoch, from), min(b.Epoch, to)
		if hi <= lo {
			continue
		}
		wt := float64(hi-lo) / float64(b.Epoch-a.Epoch)
		dBusy += wt * float64(b.Busy-a.Busy)
		dTotal += wt * float64(b.Total-a.Total)
		before := map[int]uint64{}
		for _, p := range a.Procs {
			before[p.PID] = p.UTime + p.STime
		}
		for _, p := range b.Procs {
			if t0, seen := before[p.PID]; seen && p.UTime+p.STime >= t0 {
				dProc += wt * float64(p.UTime+p.STime-t0)
			}
		}
	}
	if dTotal <= 0 {
		return 0, 0, false
	}
	return dBusy / dTotal, dProc / dTotal, true
}

// benchSnaps parses every file of a report whose name has prefix (the
// driver domain's bench-ddstat-N.txt, or dom0's file) in time order.
func benchSnaps(files map[string][]byte, prefix string) []DDSnap {
	var names []string
	for n := range files {
		if strings.HasPrefix(n, prefix) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var out []DDSnap
	for _, n := range names {
		out = append(out, ParseDDStat(files[n])...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Uptime < out[j].Uptime })
	return out
}

// applyRowCPU gives every guest, network and after-guest device sample of
// a boot the CPU the driver domain, drvdomd and dom0 spent while it ran
// (the boot-time device rows run before the samplers start).
func applyRowCPU(samples []BenchSample, files map[string][]byte) {
	dd := benchSnaps(files, benchStatPrefix)
	d0 := benchSnaps(files, BenchDom0StatFile)
	if len(dd) < 2 && len(d0) < 2 {
		return
	}
	for i := range samples {
		s := &samples[i]
		if s.Path != PathGuest && s.Path != PathNet && s.Path != PathDeviceAfter {
			continue
		}
		b, ok := benchFile(files, BenchFileName(s.Path, s.Backing, s.Workload))
		if !ok {
			continue
		}
		from, to, ok := rowSpan(b)
		if !ok {
			continue
		}
		if busy, procs, ok := cpuOver(dd, from, to); ok {
			s.DDBusy, s.DrvdomdCPU = busy, procs
		}
		if busy, _, ok := cpuOver(d0, from, to); ok {
			s.Dom0Busy = busy
		}
	}
}

// WriteBenchCPU appends, per guest and network row, the median CPU shares
// per backend mode to a bench.md (nothing when no row has any).
func WriteBenchCPU(w io.Writer, rows []BenchRow, samples []BenchSample, backends []string) {
	type key struct{ path, backing, wl, be string }
	dd, dm, d0 := map[key][]float64{}, map[key][]float64{}, map[key][]float64{}
	any := false
	for _, s := range samples {
		if s.DDBusy <= 0 && s.Dom0Busy <= 0 {
			continue
		}
		k := key{s.Path, s.Backing, s.Workload, s.Backend}
		if s.DDBusy > 0 {
			dd[k] = append(dd[k], s.DDBusy)
			dm[k] = append(dm[k], s.DrvdomdCPU)
		}
		if s.Dom0Busy > 0 {
			d0[k] = append(d0[k], s.Dom0Busy)
		}
		any = true
	}
	if !any {
		return
	}
	pct := func(xs []float64) string {
		if len(xs) == 0 {
			return "—"
		}
		return fmt.Sprintf("%.0f%%", 100*Median(xs))
	}
	fmt.Fprintf(w, "\nCPU while each guest row ran (medians over the boots; driver domain: busy share of its vCPU time, drvdomd: its processes' share of it; dom0: busy share of its 2 vCPUs; sampled every %d s, so a row of a few seconds gets one or two intervals):\n\n", BenchStatInterval)
	head := []string{"row"}
	for _, be := range backends {
		head = append(head, be+" driver domain", be+" dom0")
	}
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat("---|", len(head)))
	for _, r := range rows {
		path, backing := PathGuest, r.Backing
		if r.Kind == "net" {
			path, backing = PathNet, ""
		}
		cells := []string{r.Label()}
		for _, be := range backends {
			k := key{path, backing, r.Workload, be}
			c := pct(dd[k])
			if be == BackendDrvdom && len(dm[k]) > 0 {
				c += " (drvdomd " + pct(dm[k]) + ")"
			}
			cells = append(cells, c, pct(d0[k]))
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
}
