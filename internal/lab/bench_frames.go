package lab

import (
	"fmt"
	"io"
	"strings"
)

// Frames of the network rows. Under the lab's emulation a backend's cost
// is mostly per frame, and the frames' size is not the backend's choice:
// the guest's TCP sizes its GSO frames (guest->dom0) and dom0's TSO bursts,
// merged again by GRO in the driver domain, size what the guest receives
// (dom0->guest), both from the rate TCP has measured. Splitting each row's
// throughput into frames per second and bytes per frame tells a backend
// that moves fewer frames from one that is handed smaller ones.

// netFrames returns, from a network row's netstat file (bench_netsnap
// before and after the row: the guest's /proc/net/dev line for eth0 first),
// the data frames per second over secs and their mean size in bytes: the
// guest's transmitted frames for guest->dom0, its received ones for
// dom0->guest (reverse). ok is false when the file lacks two snapshots.
func netFrames(netstat []byte, reverse bool, secs float64) (perS, bytes float64, ok bool) {
	var devs []DevCounters
	for _, line := range strings.Split(string(netstat), "\n") {
		if name, c, ok := parseNetDev(line); ok && name == "eth0" {
			devs = append(devs, c)
		}
	}
	if len(devs) < 2 || secs <= 0 {
		return 0, 0, false
	}
	a, b := devs[0], devs[len(devs)-1]
	pa, pb, ba, bb := a.TxPackets, b.TxPackets, a.TxBytes, b.TxBytes
	if reverse {
		pa, pb, ba, bb = a.RxPackets, b.RxPackets, a.RxBytes, b.RxBytes
	}
	if pb <= pa || bb < ba {
		return 0, 0, false
	}
	frames := float64(pb - pa)
	return frames / secs, float64(bb-ba) / frames, true
}

// WriteBenchFrames appends, per network row, each backend's median frames
// per second and bytes per frame, with the ratios of the second backend to
// the first, to a bench.md (nothing when no row has frame counts).
func WriteBenchFrames(w io.Writer, rows []BenchRow, samples []BenchSample, backends []string) {
	type key struct{ wl, be string }
	fps, size := map[key][]float64{}, map[key][]float64{}
	for _, s := range samples {
		if s.Path != PathNet || !s.OK || s.FramesPerS <= 0 {
			continue
		}
		k := key{s.Workload, s.Backend}
		fps[k] = append(fps[k], s.FramesPerS)
		size[k] = append(size[k], s.FrameBytes)
	}
	if len(fps) == 0 {
		return
	}
	fmt.Fprintf(w, "\nNetwork rows in frames (medians over the boots; the guest's data frames: sent for guest->dom0, received for dom0->guest; a GSO frame counts once; Gbit/s = frames/s x size):\n\n")
	head := []string{"row"}
	for _, be := range backends {
		head = append(head, be+" frames/s", be+" KB/frame")
	}
	if len(backends) == 2 {
		head = append(head, backends[1]+"/"+backends[0]+" frames/s", backends[1]+"/"+backends[0]+" KB/frame")
	}
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat("---|", len(head)))
	for _, r := range rows {
		if r.Kind != "net" {
			continue
		}
		cells := []string{r.Label()}
		med := map[string][2]float64{}
		for _, be := range backends {
			k := key{r.Workload, be}
			if len(fps[k]) == 0 {
				cells = append(cells, "—", "—")
				continue
			}
			m := [2]float64{Median(fps[k]), Median(size[k])}
			med[be] = m
			cells = append(cells, fmt.Sprintf("%.0f", m[0]), fmt.Sprintf("%.1f", m[1]/1024))
		}
		if len(backends) == 2 {
			a, okA := med[backends[0]]
			b, okB := med[backends[1]]
			if okA && okB && a[0] > 0 && a[1] > 0 {
				cells = append(cells, fmt.Sprintf("%.2fx", b[0]/a[0]), fmt.Sprintf("%.2fx", b[1]/a[1]))
			} else {
				cells = append(cells, "—", "—")
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
}
