package lab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// The passed-through NVMe's interrupt storms.
//
// In the lab the driver domain's NVMe runs on its legacy INTx line: MSI-X
// fails in the PV driver domain (pcifront: "enable msix get err ffffff8e",
// -114 EALREADY from dom0's pciback), so the admin and I/O queues share
// one level-triggered pirq. What the logs show (/tmp/h4/real boot 2 and
// /tmp/h4/real-aborted2 boot 1, both during the NVMe's 1m-write row, in
// either backend mode, before any backend served): "irq 8: nobody cared",
// handlers nvme_irq twice, "Disabling IRQ #8". Our reading of why the line
// storms: QEMU 7.2's NVMe lowers that line only when the
// host writes a completion-queue head doorbell by MMIO, but with the shadow
// doorbell buffer (which Linux uses whenever the controller offers it) the
// host skips that MMIO write whenever QEMU's event index says it may. Once
// QEMU's event index lags the host's head by one (a completion posted while
// the host was between its shadow write and its MMIO write), every later
// check says "skip": the line stays up with no completion pending, nvme_irq
// answers IRQ_NONE thousands of times a second, and after 100,000 such
// interrupts the kernel prints "irq N: nobody cared" and disables the line
// for good; from then on completions are reaped by the spurious-IRQ poller
// every 100 ms, the 9-10 IOPS at QD1 and ~100 ms per I/O of /tmp/h4/real's
// drvdom boot and its device-after rows.
//
// The bench cannot fix QEMU or the kernel, so the driver domain runs with
// noirqdebug (the line is never disabled) and a watchdog (bench_nvmewatch)
// counts the NVMe's interrupts against its completed I/Os every second;
// when the interrupts outrun the I/Os (a storm) it resets the controller
// (sysfs reset_controller: queues and shadow doorbells start afresh, the
// line drops) and records the reset. Every second's counts and every reset
// go to the host as BenchNVMeWatchFile; a fio row during which a reset
// happened is not counted (its sample fails with the reason), and every
// NVMe row carries its interrupts per completed I/O.

// BenchDrvdomKernelArgs are the bench driver domain's extra kernel
// arguments: none. With noirqdebug a storm that does not stop keeps the
// driver domain's only vCPU in interrupts and distorts every row (tmpfs and
// network too); without it the kernel disables the line and only the NVMe
// rows suffer, which the watchdog then sees and reports.
const BenchDrvdomKernelArgs = ""

// Storm thresholds of the watchdog: more than benchStormMin NVMe interrupts
// in a second and more than benchStormRatio per completed I/O. A healthy
// second has at most about one interrupt per completion.
const (
	benchStormMin   = 1500
	benchStormRatio = 8
	benchStormHold  = 5 // seconds without checks after a reset
)

// BenchNVMeWatchFile is the file the watchdog's log is sent as.
const BenchNVMeWatchFile = "bench-nvmewatch.txt"

// benchNVMeWatchSh defines bench_nvmewatch: every second one line
// "W EPOCH INTERRUPTS IOS" (deltas of the NVMe's interrupt count in
// /proc/interrupts and of nvme0n1's completed reads+writes) and, for a
// storm, "R EPOCH UPTIME INTERRUPTS IOS" after resetting the controller.
// A line that stopped interrupting while I/O completes (disabled by the
// kernel despite noirqdebug) for 2 s is reset too. Shell builtins only.
// NVW_INTERRUPTS, NVW_STAT and NVW_RESET override the paths (tests).
var benchNVMeWatchSh = fmt.Sprintf(`bench_nvmewatch() {
	sd=${DDSTAT_DIR:-/tmp}
	pint=${NVW_INTERRUPTS:-/proc/interrupts}
	pstat=${NVW_STAT:-/sys/block/nvme0n1/stat}
	preset=${NVW_RESET:-/sys/class/nvme/nvme0/reset_controller}
	log="$sd/nvmewatch.txt"
	rm -f "$sd/nvw.fifo"; mkfifo "$sd/nvw.fifo" || return
	exec 7<>"$sd/nvw.fifo"
	: > "$log"
	pi=-1; pio=-1; hold=0; quiet=0
	while :; do
		read -r -t 1 -u 7 _
		irqs=0
		while read -r l; do
			case "$l" in
			*nvme*)
				set -- $l; shift
				for f; do case "$f" in ''|*[!0-9]*) break ;; esac; irqs=$((irqs + f)); done ;;
			esac
		done < "$pint"
		ios=0
		if read -r r _ _ _ w _ < "$pstat"; then ios=$((r + w)); fi
		printf -v now '%%(%%s)T' -1
		if [ "$pi" -ge 0 ]; then
			di=$((irqs - pi)); dio=$((ios - pio))
			printf 'W %%s %%s %%s\n' "$now" "$di" "$dio" >> "$log"
			reset=""
			if [ "$hold" -gt 0 ]; then
				hold=$((hold - 1))
			elif [ "$di" -gt %[1]d ] && [ "$di" -gt $((%[2]d * (dio + 1))) ]; then
				reset=storm
			elif [ "$di" = 0 ] && [ "$dio" -gt 0 ]; then
				quiet=$((quiet + 1))
				[ "$quiet" -ge 2 ] && reset=silent
			else
				quiet=0
			fi
			if [ -n "$reset" ]; then
				read -r up _ < /proc/uptime
				[ "${NVW_DO_RESET:-0}" = 1 ] && echo 1 > "$preset"
				printf 'R %%s %%s %%s %%s %%s\n' "$now" "$up" "$di" "$dio" "$reset" >> "$log"
				lab_mark "NVME-IRQ $reset at ${up}s: $di interrupts for $dio I/Os in 1 s"
				hold=%[3]d; quiet=0
			fi
		fi
		pi=$irqs; pio=$ios
	done
}
`, benchStormMin, benchStormRatio, benchStormHold)

// NVMeWatch is the watchdog's log: per-second counts and resets.
type NVMeWatch struct {
	Seconds []NVMeSecond
	Resets  []NVMeReset
	// Console: the log never arrived and the events come from the driver
	// domain's console (BenchNVMeConsoleFile); rows are then judged by
	// where the events fall among the rows' CHECK lines, not by the clock
	// (in /tmp/hb/full boot 5 the wallclock and the uptime drifted 4 s
	// apart in 4 minutes).
	Console []byte
}

// NVMeSecond is one second of the NVMe's interrupts and completed I/Os,
// ending at Epoch (seconds since 1970, the driver domain's clock).
type NVMeSecond struct {
	Epoch      int64
	Interrupts int64
	IOs        int64
}

// NVMeReset is one controller reset by the watchdog.
type NVMeReset struct {
	Epoch      int64   `json:"epoch"`
	UptimeS    float64 `json:"uptime_s"`
	Interrupts int64   `json:"interrupts"` // in the second before it
	IOs        int64   `json:"ios"`
	Why        string  `json:"why"` // storm | silent
}

// ParseNVMeWatch parses BenchNVMeWatchFile (lines it cannot read are skipped).
func ParseNVMeWatch(b []byte) NVMeWatch {
	var w NVMeWatch
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 4 && f[0] == "W":
			e, err1 := strconv.ParseInt(f[1], 10, 64)
			i, err2 := strconv.ParseInt(f[2], 10, 64)
			n, err3 := strconv.ParseInt(f[3], 10, 64)
			if err1 == nil && err2 == nil && err3 == nil {
				w.Seconds = append(w.Seconds, NVMeSecond{Epoch: e, Interrupts: i, IOs: n})
			}
		case len(f) == 6 && f[0] == "R":
			e, err1 := strconv.ParseInt(f[1], 10, 64)
			up, err2 := strconv.ParseFloat(f[2], 64)
			i, err3 := strconv.ParseInt(f[3], 10, 64)
			n, err4 := strconv.ParseInt(f[4], 10, 64)
			if err1 == nil && err2 == nil && err3 == nil && err4 == nil {
				w.Resets = append(w.Resets, NVMeReset{Epoch: e, UptimeS: up, Interrupts: i, IOs: n, Why: f[5]})
			}
		}
	}
	return w
}

// BenchNVMeWatchOf returns the watchdog log a boot sent, if any; for a
// boot that never sent it (it failed before its after-guest rows), what the
// driver domain's console says instead (BenchNVMeConsoleFile): the
// watchdog's marks and the kernel disabling the line, dated with the
// sampler's uptime-to-wallclock offset. A console-only watch has no
// per-second counts.
func BenchNVMeWatchOf(rep *Report) (NVMeWatch, bool) {
	if b, ok := benchFile(rep.Files, BenchNVMeWatchFile); ok {
		return ParseNVMeWatch(b), true
	}
	c, ok := rep.Files[BenchNVMeConsoleFile]
	if !ok {
		return NVMeWatch{}, false
	}
	off, ok := uptimeOffset(benchSnaps(rep.Files, benchStatPrefix))
	if !ok {
		return NVMeWatch{}, false
	}
	var w NVMeWatch
	for _, line := range strings.Split(string(c), "\n") {
		var up float64
		var why string
		var irq, ios int64
		switch {
		case strings.HasPrefix(line, "@@LAB NVME-IRQ "):
			// @@LAB NVME-IRQ storm at 46.92s: 29840 interrupts for 0 I/Os in 1 s@@
			if n, _ := fmt.Sscanf(strings.TrimPrefix(line, "@@LAB NVME-IRQ "), "%s at %fs: %d interrupts for %d", &why, &up, &irq, &ios); n != 4 {
				continue
			}
		case strings.Contains(line, "] Disabling IRQ #"):
			// [   57.275704] Disabling IRQ #8
			if n, _ := fmt.Sscanf(strings.TrimLeft(line, "[ "), "%f]", &up); n != 1 {
				continue
			}
			why = "disabled"
		default:
			continue
		}
		w.Resets = append(w.Resets, NVMeReset{Epoch: int64(up + off), UptimeS: up, Interrupts: irq, IOs: ios, Why: why})
	}
	w.Console = c
	return w, len(w.Resets) > 0
}

// consoleDisturbed reads the driver domain console's NVMe lines in order:
// an event fails the next NVMe row whose CHECK follows it (the row it
// happened in); once the kernel disabled the line, every later NVMe row
// fails, and so do the NVMe rows the console never reached (the guest's,
// the after-guest ones): all keyed by check name; later is the reason for
// those not reached ("" when the line was never disabled).
func consoleDisturbed(c []byte) (rows map[string]string, later string) {
	rows = map[string]string{}
	pending := ""
	for _, line := range strings.Split(string(c), "\n") {
		line = strings.TrimSpace(line) // consoles end lines with \r\n
		switch {
		case strings.HasPrefix(line, "@@LAB NVME-IRQ "):
			if pending == "" {
				pending = "NVMe interrupt " + strings.TrimSuffix(strings.TrimPrefix(line, "@@LAB NVME-IRQ "), "@@") + " (driver domain console)"
			}
		case strings.Contains(line, "] Disabling IRQ #"):
			later = "the kernel disabled the NVMe's interrupt line (irq nobody cared) before the row: completions polled every 100 ms"
			if pending == "" {
				pending = later
			}
		case strings.HasPrefix(line, "@@LAB CHECK bench-"):
			f := strings.Fields(strings.TrimPrefix(line, "@@LAB CHECK "))
			if len(f) == 0 || !strings.Contains(f[0], "-"+BackingNVMe+"-") {
				continue
			}
			if pending != "" {
				rows[f[0]] = pending
			}
			pending = later
		}
	}
	return rows, later
}

func consoleHasCheck(c []byte, name string) bool {
	return bytes.Contains(c, []byte("@@LAB CHECK "+name+" "))
}

// BenchNVMeConsoleFile is the synthetic file benchBootFiles makes of the
// driver domain console's NVMe interrupt lines.
const BenchNVMeConsoleFile = "bench-nvme-console.txt"

// nvmeConsoleLines keeps a console's NVMe interrupt lines and, when it
// has any, the bench rows' CHECK lines between them (their order matters).
func nvmeConsoleLines(b []byte) []byte {
	var out []byte
	events := false
	for _, line := range bytes.Split(b, []byte("\n")) {
		ev := bytes.HasPrefix(line, []byte("@@LAB NVME-IRQ ")) || bytes.Contains(line, []byte("] Disabling IRQ #"))
		if ev || bytes.HasPrefix(line, []byte("@@LAB CHECK bench-")) {
			out = append(append(out, line...), '\n')
		}
		events = events || ev
	}
	if !events {
		return nil
	}
	return out
}

// uptimeOffset is a domain's wallclock minus its uptime, from a snapshot
// with both.
func uptimeOffset(snaps []DDSnap) (float64, bool) {
	for _, s := range snaps {
		if s.Epoch > 0 && s.Uptime > 0 {
			return float64(s.Epoch) - s.Uptime, true
		}
	}
	return 0, false
}

// window sums the seconds that end within [from, to] (epoch seconds).
func (w NVMeWatch) window(from, to int64) (interrupts, ios int64, n int) {
	for _, s := range w.Seconds {
		if s.Epoch > from && s.Epoch <= to {
			interrupts += s.Interrupts
			ios += s.IOs
			n++
		}
	}
	return interrupts, ios, n
}

// disturbed says why the NVMe's interrupts were not healthy during
// [from, to], or "": a storm second (more than benchStormMin interrupts and
// more than benchStormRatio per completed I/O), a line that delivered no
// interrupt while I/O completed (disabled by the kernel: completions polled
// every 100 ms), or a watchdog event within a second of the row.
func (w NVMeWatch) disturbed(from, to int64) string {
	var irq, ios int64
	for _, s := range w.Seconds {
		if s.Epoch <= from || s.Epoch > to {
			continue
		}
		if s.Interrupts > benchStormMin && s.Interrupts > benchStormRatio*(s.IOs+1) {
			return fmt.Sprintf("NVMe interrupt storm during the row (%d interrupts for %d I/Os in 1 s)", s.Interrupts, s.IOs)
		}
		irq += s.Interrupts
		ios += s.IOs
	}
	if irq == 0 && ios > 0 {
		return fmt.Sprintf("the NVMe's interrupt line was silent during the row (%d I/Os completed without an interrupt: disabled by the kernel, polled every 100 ms)", ios)
	}
	for _, r := range w.Resets {
		if r.Why == "disabled" && to > r.Epoch {
			return fmt.Sprintf("the kernel disabled the NVMe's interrupt line at %.0f s of the driver domain's uptime (irq nobody cared), before the row ended: completions polled every 100 ms", r.UptimeS)
		}
		if r.Epoch >= from-1 && r.Epoch <= to+1 {
			return fmt.Sprintf("NVMe interrupts unhealthy at the row's edge (%s: %d interrupts for %d I/Os in 1 s)", r.Why, r.Interrupts, r.IOs)
		}
	}
	return ""
}

// fioWindow is when a fio run ran: fio's JSON has its end (timestamp_ms)
// and each job's runtime.
type fioWindow struct {
	TimestampMs int64 `json:"timestamp_ms"`
	Jobs        []struct {
		RuntimeMs int64 `json:"job_runtime"`
	} `json:"jobs"`
}

// fioSpan returns the epoch seconds a fio JSON ran over, or false.
func fioSpan(b []byte) (from, to int64, ok bool) {
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return 0, 0, false
	}
	var w fioWindow
	if err := json.NewDecoder(bytes.NewReader(b[i:])).Decode(&w); err != nil || w.TimestampMs <= 0 {
		return 0, 0, false
	}
	var rt int64
	for _, j := range w.Jobs {
		rt = max(rt, j.RuntimeMs)
	}
	return (w.TimestampMs - rt) / 1000, (w.TimestampMs + 999) / 1000, true
}

// applyNVMeWatch gives every NVMe sample of a boot its interrupts per
// completed I/O and fails the ones a controller reset happened during (1 s
// of slack each side: the domains' clocks are Xen's wallclock, to the
// second), keeping their figures in the sample.
func applyNVMeWatch(samples []BenchSample, files map[string][]byte, w NVMeWatch) {
	for i := range samples {
		s := &samples[i]
		if s.Backing != BackingNVMe || s.Path == PathNet {
			continue
		}
		b, ok := benchFile(files, BenchFileName(s.Path, s.Backing, s.Workload))
		if !ok {
			continue
		}
		from, to, ok := fioSpan(b)
		if !ok {
			continue
		}
		if irq, ios, n := w.window(from, to); n > 0 && ios > 0 {
			s.NVMeIrqPerIO = float64(irq) / float64(ios)
		}
		if !s.OK {
			continue
		}
		why := ""
		if w.Console != nil {
			rows, later := consoleDisturbed(w.Console)
			var seen bool
			if why, seen = rows[benchCheckName(BenchFileName(s.Path, s.Backing, s.Workload))]; !seen && later != "" && !consoleHasCheck(w.Console, benchCheckName(BenchFileName(s.Path, s.Backing, s.Workload))) {
				why = later
			}
		} else {
			why = w.disturbed(from, to)
		}
		if why != "" {
			s.OK = false
			s.Error = "disturbed: " + why
		}
	}
}

// WriteBenchNVMeWatch appends the watchdog's resets and the NVMe rows'
// interrupts per I/O to a bench.md (nothing when no boot sent a log).
func WriteBenchNVMeWatch(w io.Writer, boots []BenchBootLog, samples []BenchSample) {
	seen := false
	for _, b := range boots {
		if b.NVMeWatched {
			seen = true
		}
	}
	if !seen {
		return
	}
	fmt.Fprintf(w, "\nNVMe interrupt watchdog in the driver domain (INTx line; a storm is > %d interrupts/s and > %d per completed I/O, silent is I/O completing without interrupts; an NVMe row with either is not counted):\n\n", benchStormMin, benchStormRatio)
	for _, b := range boots {
		if !b.NVMeWatched {
			continue
		}
		if len(b.NVMeResets) == 0 {
			fmt.Fprintf(w, "- boot %d (%s): healthy\n", b.Boot, b.Backend)
			continue
		}
		var parts []string
		for _, r := range b.NVMeResets {
			parts = append(parts, fmt.Sprintf("%s at %.0f s (%d interrupts, %d I/Os)", r.Why, r.UptimeS, r.Interrupts, r.IOs))
		}
		fmt.Fprintf(w, "- boot %d (%s): %d event(s): %s\n", b.Boot, b.Backend, len(b.NVMeResets), strings.Join(parts, "; "))
	}
	type key struct{ path, wl string }
	per := map[key][]float64{}
	var keys []key
	for _, s := range samples {
		if s.NVMeIrqPerIO <= 0 {
			continue
		}
		k := key{s.Path, s.Workload}
		if per[k] == nil {
			keys = append(keys, k)
		}
		per[k] = append(per[k], s.NVMeIrqPerIO)
	}
	if len(keys) == 0 {
		return
	}
	sort.SliceStable(keys, func(i, j int) bool { return keys[i].path < keys[j].path })
	fmt.Fprintf(w, "\nNVMe interrupts per completed I/O during each row (every boot, in boot order; about 1 or less is healthy):\n\n")
	for _, k := range keys {
		var vs []string
		for _, v := range per[k] {
			vs = append(vs, strconv.FormatFloat(v, 'f', 2, 64))
		}
		fmt.Fprintf(w, "- %s nvme %s: %s\n", k.path, k.wl, strings.Join(vs, ", "))
	}
}
