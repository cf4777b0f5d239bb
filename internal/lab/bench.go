package lab

// `xenlab bench`: the performance matrix (issue 7) in as few boots as it
// can. A boot serves one backend mode (drvdom.backend=kernel|drvdom), so
// every boot measures everything that mode can: first the device limit
// inside the driver domain (drvdom.sh, before any backend runs), then the
// guest's block rows on both backings and its network rows (guest.sh).
// Repetitions alternate the order of the modes across boots (PlanBench),
// so that a drift of the host (another job, thermal) does not land on one
// mode only.
//
// Every measurement is a file the script sends with lab_put
// (BenchFileName) and a CHECK marker named after it; the host turns the
// files into samples (BenchSamples), a row that produced no parseable file
// into a failed sample with the reason it has.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Backings of the guest's two disks, as the driver domain serves them.
const (
	BackingNVMe  = "nvme"  // the passed-through NVMe, /dev/nvme0n1
	BackingTmpfs = "tmpfs" // a file in the driver domain's tmpfs
)

// Paths a figure is measured on.
const (
	PathDevice = "device" // fio inside the driver domain on the backing itself: the limit
	PathGuest  = "guest"  // fio/iperf3 in the guest through the backend
	PathNet    = "net"    // iperf3 between the guest and dom0
)

// Bench wiring inside the domains.
const (
	BenchTmpfsFile  = "/tmp/bench-tmpfs.img" // in the driver domain (its /tmp is a tmpfs)
	BenchTmpfsMB    = 256
	BenchTmpfsVdev  = "xvdc" // the guest's second disk, on BenchTmpfsFile
	BenchDrvdomMem  = 1024   // MB: the shell rootfs plus the 256 MB tmpfs file plus the backends
	benchMaxRuntime = 60 * time.Second
)

// Metrics a row is judged by.
const (
	MetricIOPS = "IOPS"
	MetricMBps = "MB/s"
	MetricGbps = "Gbit/s"
)

// BlockWorkload is one fio job: libaio, O_DIRECT, time based.
type BlockWorkload struct {
	Name   string // e.g. "4k-randread-qd1"
	RW     string // fio --rw
	BS     string // fio --bs
	QD     int    // fio --iodepth
	Metric string // MetricIOPS or MetricMBps
}

// BlockWorkloads are the matrix's block rows, per backing.
var BlockWorkloads = []BlockWorkload{
	{Name: "4k-randread-qd1", RW: "randread", BS: "4k", QD: 1, Metric: MetricIOPS},
	{Name: "4k-randread-qd32", RW: "randread", BS: "4k", QD: 32, Metric: MetricIOPS},
	{Name: "4k-randwrite-qd32", RW: "randwrite", BS: "4k", QD: 32, Metric: MetricIOPS},
	{Name: "1m-read-qd4", RW: "read", BS: "1m", QD: 4, Metric: MetricMBps},
	{Name: "1m-write-qd4", RW: "write", BS: "1m", QD: 4, Metric: MetricMBps},
}

// NetWorkload is one iperf3 TCP run between the guest (client) and dom0.
type NetWorkload struct {
	Name    string
	Reverse bool // -R: dom0 sends, the guest receives
	Streams int  // -P
}

// NetWorkloads are the matrix's network rows.
var NetWorkloads = []NetWorkload{
	{Name: "guest-to-dom0-P1", Streams: 1},
	{Name: "guest-to-dom0-P4", Streams: 4},
	{Name: "dom0-to-guest-P1", Reverse: true, Streams: 1},
	{Name: "dom0-to-guest-P4", Reverse: true, Streams: 4},
}

// Backings in table order.
var Backings = []string{BackingNVMe, BackingTmpfs}

// BenchBoot is one boot of the plan.
type BenchBoot struct {
	Index   int    `json:"boot"` // 1-based, in boot order
	Rep     int    `json:"rep"`  // 1-based repetition
	Backend string `json:"backend"`
	// Makeup: a boot added after the plan for rows it left short
	// (RunBench, BenchMakeup).
	Makeup bool `json:"makeup,omitempty"`
}

// PlanBench returns the boots of reps repetitions over backends: one boot
// per backend per repetition, the backends' order reversed every other
// repetition (kernel,drvdom / drvdom,kernel / kernel,drvdom ...).
func PlanBench(backends []string, reps int) ([]BenchBoot, error) {
	if reps < 1 {
		return nil, fmt.Errorf("bench: reps %d: want at least 1", reps)
	}
	if len(backends) == 0 {
		return nil, errors.New("bench: no backend")
	}
	seen := map[string]bool{}
	for _, be := range backends {
		if be != BackendKernel && be != BackendDrvdom {
			return nil, fmt.Errorf("bench: backend %q: want %s or %s", be, BackendKernel, BackendDrvdom)
		}
		if seen[be] {
			return nil, fmt.Errorf("bench: backend %q twice", be)
		}
		seen[be] = true
	}
	var out []BenchBoot
	for r := 1; r <= reps; r++ {
		for i := range backends {
			be := backends[i]
			if r%2 == 0 {
				be = backends[len(backends)-1-i]
			}
			out = append(out, BenchBoot{Index: len(out) + 1, Rep: r, Backend: be})
		}
	}
	return out, nil
}

// BenchMakeup picks the backend mode of a make-up boot: the one whose
// rows (device limit and guest block rows on both backings, network rows,
// in that mode's boots) lack the most figures against reps, a tie going to
// a mode other than last (the mode of the boot before, so make-up boots
// alternate too). short names that mode's rows and their figures ("nvme
// 1m-read-qd4 guest 1/3"). "" when no row of any mode is short.
func BenchMakeup(samples []BenchSample, backends []string, reps int, last string) (backend string, short []string) {
	type cell struct{ path, backing, workload string }
	var cells []cell
	for _, path := range []string{PathDevice, PathGuest} {
		for _, bk := range Backings {
			for _, w := range BlockWorkloads {
				cells = append(cells, cell{path, bk, w.Name})
			}
		}
	}
	for _, w := range NetWorkloads {
		cells = append(cells, cell{PathNet, "", w.Name})
	}
	best := 0
	for _, be := range backends {
		n := map[cell]int{}
		for _, s := range samples {
			if s.OK && s.Backend == be {
				n[cell{s.Path, s.Backing, s.Workload}]++
			}
		}
		lack := 0
		var rows []string
		for _, c := range cells {
			if k := n[c]; k < reps {
				lack += reps - k
				name := c.workload + " " + c.path
				if c.backing != "" {
					name = c.backing + " " + name
				}
				rows = append(rows, fmt.Sprintf("%s %d/%d", name, k, reps))
			}
		}
		if lack > best || (lack == best && lack > 0 && backend == last) {
			best, backend, short = lack, be, rows
		}
	}
	return backend, short
}

// BenchFileName is the lab_put name (and CHECK name, without ".json") of
// one measurement.
func BenchFileName(path, backing, workload string) string {
	if path == PathNet {
		return "bench-net-" + workload + ".json"
	}
	return "bench-" + path + "-" + backing + "-" + workload + ".json"
}

func benchCheckName(file string) string { return strings.TrimSuffix(file, ".json") }

func runtimeSeconds(rt time.Duration) int {
	s := int(rt / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// CheckBenchRuntime rejects runtimes outside 1 s..60 s (a boot runs 24
// jobs of that length; longer ones belong in a dedicated run).
func CheckBenchRuntime(rt time.Duration) error {
	if rt < time.Second || rt > benchMaxRuntime {
		return fmt.Errorf("bench: runtime %s: want 1s..%s", rt, benchMaxRuntime)
	}
	return nil
}

// benchFioSh defines bench_fio KEY DEV RW BS QD: one fio job, its JSON sent
// to the host as KEY.json, a CHECK named KEY whose detail carries fio's
// error output when it failed ('@' removed: it would end the marker).
func benchFioSh(runtime int) string {
	return benchPutSh + fmt.Sprintf(`bench_fio() {
	key=$1; dev=$2; rw=$3; bs=$4; qd=$5
	rm -f /tmp/bench.json /tmp/bench.err
	if [ ! -b "$dev" ]; then
		lab_check "$key" 1 "no block device $dev"
		return
	fi
	timeout %[2]d fio --name="$key" --filename="$dev" --rw="$rw" --bs="$bs" --iodepth="$qd" --ioengine=libaio --direct=1 \
		--runtime=%[1]d --time_based --output-format=json --eta=never --output=/tmp/bench.json 2>/tmp/bench.err
	r=$?
	[ -s /tmp/bench.json ] && bench_put "$key.json" /tmp/bench.json
	msg="fio $rw bs=$bs qd=$qd on $dev"
	[ "$r" = 0 ] || msg="$msg: $(tail -c 300 /tmp/bench.err 2>/dev/null | tr '\n@' '  ')"
	lab_check "$key" $r "$msg"
	echo "bench: $key rc=$r"
}
`, runtime, runtime+60)
}

func benchBlockRuns(b *strings.Builder, path, backing, dev string) {
	for _, w := range BlockWorkloads {
		fmt.Fprintf(b, "bench_fio %s %s %s %s %d\n", benchCheckName(BenchFileName(path, backing, w.Name)), dev, w.RW, w.BS, w.QD)
	}
}

// BenchDrvdomScript is the driver domain's part of a bench boot: it makes
// the tmpfs backing file (the guest's second disk) and measures the device
// limit on both backings before any backend runs. O_DIRECT does not work
// on a tmpfs file, so the tmpfs limit is measured on a loop device over
// it, as the kernel's blkback serves it.
func BenchDrvdomScript(runtime time.Duration) string {
	rt := runtimeSeconds(runtime)
	var b strings.Builder
	b.WriteString(". /lab/lib.sh\n")
	b.WriteString(benchFioSh(rt))
	b.WriteString(benchNVMeWatchSh)
	b.WriteString("bench_nvmewatch </dev/null 2>/dev/null &\n")
	fmt.Fprintf(&b, `dd if=/dev/zero of=%[1]s bs=1M count=%[2]d 2>/dev/null
lab_check bench-tmpfs-file $? "%[1]s %[2]d MB"
loop=$(losetup -f --show %[1]s 2>/tmp/losetup.err) || loop=/dev/no-loop-device
`, BenchTmpfsFile, BenchTmpfsMB)
	benchBlockRuns(&b, PathDevice, BackingNVMe, NVMeTarget)
	benchBlockRuns(&b, PathDevice, BackingTmpfs, "$loop")
	b.WriteString("[ -b \"$loop\" ] && losetup -d \"$loop\"\n")
	b.WriteString(benchDDStatSh)
	b.WriteString(benchDDStatStart(BenchStatInterval, BenchStatPutEvery))
	b.WriteString(benchAfterSh())
	b.WriteString("exit 0\n")
	return b.String()
}

// BenchGuestScript is the guest's part of a bench boot: the block rows on
// xvdb (NVMe) and xvdc (tmpfs file), then iperf3 to and from dom0.
func BenchGuestScript(runtime time.Duration) string {
	rt := runtimeSeconds(runtime)
	var b strings.Builder
	b.WriteString(". /lab/lib.sh\n")
	b.WriteString(benchFioSh(rt))
	fmt.Fprintf(&b, "lab_wait 60 test -b /dev/%[1]s\nlab_check guest-sees-tmpfs-disk $? /dev/%[1]s\n", BenchTmpfsVdev)
	b.WriteString(benchVbdStatSh)
	b.WriteString("bench_vbdstat start\n")
	for _, bk := range []struct{ backing, dev string }{{BackingNVMe, "/dev/" + GuestVdev}, {BackingTmpfs, "/dev/" + BenchTmpfsVdev}} {
		for _, w := range BlockWorkloads {
			key := benchCheckName(BenchFileName(PathGuest, bk.backing, w.Name))
			fmt.Fprintf(&b, "bench_fio %s %s %s %s %d\nbench_vbdstat %s\n", key, bk.dev, w.RW, w.BS, w.QD, key)
		}
	}
	fmt.Fprintf(&b, "lab_put %s /tmp/vbdstats.txt\n", BenchVbdStatFile)
	fmt.Fprintf(&b, "lab_wait 30 ping -c1 -W1 %s\nlab_check guest-ping-dom0 $? %s\n", Dom0IP, Dom0IP)
	b.WriteString(benchNetSnapSh)
	for _, w := range NetWorkloads {
		key := benchCheckName(BenchFileName(PathNet, "", w.Name))
		rev := ""
		if w.Reverse {
			rev = " -R"
		}
		fmt.Fprintf(&b, `bench_netsnap > /tmp/netstat.txt
rm -f /tmp/bench.json
timeout %[5]d iperf3 -c %[1]s -t %[2]d -P %[3]d%[4]s -J > /tmp/bench.json 2>/tmp/bench.err
r=$?
[ -s /tmp/bench.json ] && bench_put %[6]s.json /tmp/bench.json
msg="iperf3 -P %[3]d%[4]s"
[ "$r" = 0 ] || msg="$msg: $(tail -c 300 /tmp/bench.err 2>/dev/null | tr '\n@' '  ')"
lab_check %[6]s $r "$msg"
echo "bench: %[6]s rc=$r"
bench_netsnap >> /tmp/netstat.txt
lab_put %[7]s /tmp/netstat.txt
sleep 1
`, Dom0IP, rt, w.Streams, rev, rt+60, key, BenchNetStatName(w.Name))
	}
	b.WriteString("exit 0\n")
	return b.String()
}

// BenchScenario is the scenario of one bench boot (drvdomd: the binary for
// the drvdom mode, or "").
func BenchScenario(boot BenchBoot, runtime time.Duration, drvdomd string) Scenario {
	rt := runtimeSeconds(runtime)
	// 10 fio jobs and 4 iperf3 runs, each with its start-up under TCG.
	gwait := 5*time.Minute + time.Duration(len(Backings)*len(BlockWorkloads)+len(NetWorkloads))*time.Duration(rt+15)*time.Second
	return Scenario{
		Backend: boot.Backend, DiskTarget: NVMeTarget,
		DrvdomScript: BenchDrvdomScript(runtime), GuestScript: BenchGuestScript(runtime),
		GuestTimeout: gwait, Drvdomd: drvdomd, Dom0Phase: BenchDom0Phase,
		DrvdomArgs: BenchDrvdomKernelArgs,
	}
}

// BenchBootTimeout bounds one bench boot (QEMU is killed after it).
func BenchBootTimeout(runtime time.Duration) time.Duration {
	rt := time.Duration(runtimeSeconds(runtime)) * time.Second
	jobs := time.Duration(2*len(Backings)*len(BlockWorkloads) + len(NetWorkloads))
	return 6*time.Minute + jobs*(rt+30*time.Second)
}

// BenchDrvdomWait is how long dom0 waits for a bench boot's driver domain
// to be ready: its 10 baseline fio jobs run first, each with a start-up
// that reached 15 s on a loaded host.
func BenchDrvdomWait(runtime time.Duration) int {
	return defaultWait + len(Backings)*len(BlockWorkloads)*(runtimeSeconds(runtime)+30)
}

// BenchDom0Script is s.Dom0Script() with dom0's wait for the driver
// domain's ready marker raised to BenchDrvdomWait. It fails if the wait is
// no longer where it expects it (the scenario's script changed).
func BenchDom0Script(s Scenario, runtime time.Duration) (string, error) {
	script := s.Dom0Script()
	old := fmt.Sprintf("'%s' %d ||", s.readyPattern(), defaultWait)
	if strings.Count(script, old) != 1 {
		return "", fmt.Errorf("bench: dom0 script: the driver domain's ready wait (%q) not found once", old)
	}
	w := BenchDrvdomWait(runtime)
	script = strings.Replace(script, old, fmt.Sprintf("'%s' %d ||", s.readyPattern(), w), 1)
	script = strings.Replace(script, fmt.Sprintf("not ready after %ds", defaultWait), fmt.Sprintf("not ready after %ds", w), 1)
	end := "xl list\n[ \"$fails\" = 0 ] || dump\nlab_t dom0-done\n"
	if strings.Count(script, end) != 1 {
		return "", fmt.Errorf("bench: dom0 script: its end (%q) not found once", end)
	}
	return strings.Replace(script, end, benchDom0AfterWait(runtime)+end, 1), nil
}

// BenchGuestConfig is the guest's xl config for a bench boot: the NVMe as
// xvdb and the driver domain's tmpfs file as xvdc, both served by it.
func BenchGuestConfig(s Scenario) DomainConfig {
	c := s.GuestConfig()
	c.Disks = []string{DiskSpec(GuestVdev, DrvdomName, NVMeTarget), DiskSpec(BenchTmpfsVdev, DrvdomName, BenchTmpfsFile)}
	return c
}

// BenchDrvdomConfig is the driver domain's xl config for a bench boot:
// more memory, for the tmpfs backing file.
func BenchDrvdomConfig(s Scenario) DomainConfig {
	c := s.DrvdomConfig()
	if c.MemoryMB < BenchDrvdomMem {
		c.MemoryMB = BenchDrvdomMem
	}
	return c
}

// BenchSample is one measurement (or one failed attempt at it).
type BenchSample struct {
	Boot     int     `json:"boot"`
	Rep      int     `json:"rep"`
	Backend  string  `json:"backend"` // the boot's backend mode (for device rows: the boot it ran in)
	Path     string  `json:"path"`    // device | guest | net
	Backing  string  `json:"backing,omitempty"`
	Workload string  `json:"workload"`
	OK       bool    `json:"ok"`
	Error    string  `json:"error,omitempty"`
	IOPS     float64 `json:"iops,omitempty"`
	MBps     float64 `json:"mb_s,omitempty"`   // 1e6 bytes/s
	LatUs    float64 `json:"lat_us,omitempty"` // mean completion latency (fio lat_ns.mean)
	Gbps     float64 `json:"gbit_s,omitempty"`
	// NVMeIrqPerIO is the NVMe's interrupts per completed I/O in the
	// driver domain while the row ran (NVMe rows; 0: not known).
	NVMeIrqPerIO float64 `json:"nvme_irq_per_io,omitempty"`
	// CPU while a guest or network row ran (shares, 0..1; 0: not sampled):
	// the driver domain busy, drvdomd's processes, dom0 busy.
	DDBusy     float64 `json:"dd_cpu_busy,omitempty"`
	DrvdomdCPU float64 `json:"drvdomd_cpu,omitempty"`
	Dom0Busy   float64 `json:"dom0_cpu_busy,omitempty"`
	// Network rows: the data frames the guest's NIC sent (guest->dom0) or
	// received (dom0->guest) per second of the row and their mean size (a
	// GSO frame counts once; 0: not known). Gbit/s is their product.
	FramesPerS float64 `json:"frames_s,omitempty"`
	FrameBytes float64 `json:"frame_bytes,omitempty"`
}

// benchFio is the part of fio's JSON a bench sample needs.
type benchFio struct {
	Jobs []struct {
		Error int        `json:"error"`
		Read  benchFioIO `json:"read"`
		Write benchFioIO `json:"write"`
	} `json:"jobs"`
}

type benchFioIO struct {
	IOPS    float64 `json:"iops"`
	BwBytes float64 `json:"bw_bytes"`
	TotalIO float64 `json:"total_ios"`
	Lat     struct {
		Mean float64 `json:"mean"`
	} `json:"lat_ns"`
}

// parseBenchFio fills s from fio JSON: IOPS and MB/s summed over reads and
// writes, latency the I/O-weighted mean of both directions.
func parseBenchFio(b []byte, s *BenchSample) error {
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return errors.New("fio json: no object")
	}
	var doc benchFio
	if err := json.NewDecoder(bytes.NewReader(b[i:])).Decode(&doc); err != nil {
		return fmt.Errorf("fio json: %w", err)
	}
	if len(doc.Jobs) == 0 {
		return errors.New("fio json: no jobs")
	}
	var ios, latSum float64
	for _, j := range doc.Jobs {
		if j.Error != 0 {
			return fmt.Errorf("fio: job error %d", j.Error)
		}
		for _, d := range []benchFioIO{j.Read, j.Write} {
			s.IOPS += d.IOPS
			s.MBps += d.BwBytes / 1e6
			ios += d.TotalIO
			latSum += d.TotalIO * d.Lat.Mean
		}
	}
	if ios > 0 {
		s.LatUs = latSum / ios / 1e3
	}
	if s.IOPS <= 0 {
		return errors.New("fio: no I/O completed")
	}
	return nil
}

// BenchSamples turns one boot's report into its samples: one per expected
// measurement (device and guest block rows on both backings, network rows).
// A measurement without a parseable file is a failed sample whose Error
// says why: its CHECK detail, or why the boot did not get that far.
func BenchSamples(boot BenchBoot, rep *Report) []BenchSample {
	checks := map[string]Check{}
	for _, c := range rep.Checks {
		checks[c.Name] = c
	}
	why := func(file string, parseErr error) string {
		if parseErr != nil {
			msg := parseErr.Error()
			if c, ok := checks[benchCheckName(file)]; ok && !c.Pass {
				msg += "; " + c.Detail
			}
			return strings.TrimSpace(msg)
		}
		if c, ok := checks[benchCheckName(file)]; ok && !c.Pass {
			return strings.TrimSpace("failed: " + c.Detail)
		}
		if rep.FailedDomain != "" {
			return fmt.Sprintf("not run: domain %s failed (%s)", rep.FailedDomain, rep.FailedWhy)
		}
		if rep.Result == nil || rep.Result.ExitCode < 0 {
			return "not run: the boot did not finish"
		}
		return "not run: no result"
	}
	var out []BenchSample
	add := func(s BenchSample, file string, parse func([]byte, *BenchSample) error) {
		s.Boot, s.Rep, s.Backend = boot.Index, boot.Rep, boot.Backend
		b, ok := benchFile(rep.Files, file)
		if !ok {
			s.Error = why(file, nil)
			out = append(out, s)
			return
		}
		if err := parse(b, &s); err != nil {
			s = BenchSample{Boot: s.Boot, Rep: s.Rep, Backend: s.Backend, Path: s.Path, Backing: s.Backing, Workload: s.Workload}
			s.Error = why(file, err)
			out = append(out, s)
			return
		}
		s.OK = true
		out = append(out, s)
	}
	for _, path := range []string{PathDevice, PathGuest} {
		for _, bk := range Backings {
			for _, w := range BlockWorkloads {
				add(BenchSample{Path: path, Backing: bk, Workload: w.Name}, BenchFileName(path, bk, w.Name), parseBenchFio)
			}
		}
	}
	for _, w := range BenchAfterWorkloads {
		f := BenchFileName(PathDeviceAfter, BackingNVMe, w)
		if _, ok := benchFile(rep.Files, f); ok {
			add(BenchSample{Path: PathDeviceAfter, Backing: BackingNVMe, Workload: w}, f, parseBenchFio)
		}
	}
	if w, ok := BenchNVMeWatchOf(rep); ok {
		applyNVMeWatch(out, rep.Files, w)
	}
	for _, w := range NetWorkloads {
		add(BenchSample{Path: PathNet, Workload: w.Name}, BenchFileName(PathNet, "", w.Name), func(b []byte, s *BenchSample) error {
			r, err := ParseIperf3(b)
			if err != nil {
				return err
			}
			if r.ReceivedBps <= 0 {
				return errors.New("iperf3: nothing received")
			}
			s.Gbps = r.ReceivedBps / 1e9
			if st, ok := benchFile(rep.Files, BenchNetStatName(w.Name)); ok {
				s.FramesPerS, s.FrameBytes, _ = netFrames(st, w.Reverse, r.ReceivedS)
			}
			return nil
		})
	}
	applyRowCPU(out, rep.Files)
	return out
}

// sortedCopy returns xs sorted.
func sortedCopy(xs []float64) []float64 {
	c := append([]float64(nil), xs...)
	sort.Float64s(c)
	return c
}

// Median returns the median of xs (the mean of the middle two for an even
// count); 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	c := sortedCopy(xs)
	n := len(c)
	if n%2 == 1 {
		return c[n/2]
	}
	return (c[n/2-1] + c[n/2]) / 2
}
