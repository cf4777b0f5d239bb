package lab

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The driver domain's side of a bench boot, watched while the guest runs
// its rows: after its baseline the driver domain leaves a sampler running
// (bench_ddstat) that every BenchStatInterval appends one snapshot to a
// file in its tmpfs (CPU time from /proc/stat, the counters of its
// network devices from /proc/net/dev, every drvdomd process's VmRSS,
// VmHWM and CPU time) and sends the file to the host every
// BenchStatPutEvery snapshots as bench-ddstat-N.txt, then starts a new
// one. The sampler uses shell builtins only (a fork under TCG in a PV
// domain costs tens of milliseconds of the CPU being measured), except
// for one tc per file, for the qdisc drops. BenchDDStats parses the
// files back: drvdomd's resident memory while serving and the driver
// domain's CPU use and packet drops during the network rows.

const (
	BenchStatInterval = 5  // seconds between snapshots
	BenchStatPutEvery = 12 // snapshots per file sent to the host
	benchStatPrefix   = "bench-ddstat-"
)

// benchLockedPutSh defines bench_lput NAME FILE: lab_put under a lock
// (flock, when the domain has it), for the driver domain, whose sampler and
// after-guest rows both send files from the background: in /tmp/hb/full's
// first boot a sampler file landed inside the after-guest QD32 row's fio
// JSON and that row was lost ("fio json: no object").
const benchLockedPutSh = `bench_lput() {
	if command -v flock >/dev/null; then
		( flock 9; lab_put "$1" "$2" ) 9>>/tmp/bench-put.lock
	else
		lab_put "$1" "$2"
	fi
}
`

// benchDDStatSh defines bench_ddstat INTERVAL PUTEVERY.
const benchDDStatSh = benchLockedPutSh + `bench_ddstat() {
	iv=$1; every=$2; n=0; k=0
	sd=${DDSTAT_DIR:-/tmp}
	rm -f "$sd/ddstat.fifo"; mkfifo "$sd/ddstat.fifo" || return
	exec 9<>"$sd/ddstat.fifo"
	: > "$sd/ddstat.txt"
	while :; do
		read -r -t "$iv" -u 9 _
		{
		read -r up _ < /proc/uptime
		read -r cpu < /proc/stat
		printf 'T %s %s\n' "$up" "$cpu"
		printf 'E %(%s)T\n' -1
		while read -r l; do
			case "$l" in eth*|xenbr*|vif*) printf 'D %s\n' "$l" ;; esac
		done < /proc/net/dev
		for d in /proc/[0-9]*; do
			read -r c < "$d/comm" 2>/dev/null || continue
			[ "$c" = drvdomd ] || continue
			rss=0; hwm=0
			while read -r key v _; do
				case "$key" in VmRSS:) rss=$v ;; VmHWM:) hwm=$v ;; esac
			done < "$d/status"
			read -r st < "$d/stat" || continue
			set -- ${st##*) }
			printf 'P %s %s %s %s %s\n' "${d#/proc/}" "$rss" "$hwm" "${12}" "${13}"
		done
		} >> "$sd/ddstat.txt" 2>/dev/null
		n=$((n+1))
		if [ $((n % every)) = 0 ]; then
			k=$((k+1))
			tc -s qdisc 2>/dev/null | while read -r l; do printf 'Q %s\n' "$l"; done >> "$sd/ddstat.txt"
			bench_lput "` + benchStatPrefix + `$k.txt" "$sd/ddstat.txt"
			: > "$sd/ddstat.txt"
		fi
	done
}
`

// benchDDStatStart starts the sampler in the background: it outlives the
// script (the domain keeps running until dom0 powers the machine off).
func benchDDStatStart(interval, every int) string {
	return fmt.Sprintf("bench_ddstat %d %d </dev/null 2>/dev/null &\n", interval, every)
}

// DDSnap is one snapshot of the driver domain.
type DDSnap struct {
	Uptime float64
	Epoch  int64 // the domain's wallclock, seconds (an "E" line; 0: none)
	// CPU jiffies (USER_HZ) from /proc/stat's cpu line: busy (all but idle
	// and iowait) and total.
	Busy, Total uint64
	Devs        map[string]DevCounters
	Procs       []DDProc
}

// DevCounters are a /proc/net/dev line's counters.
type DevCounters struct {
	RxBytes, RxPackets, RxDrop, TxBytes, TxPackets, TxDrop uint64
}

// DDProc is one drvdomd process in a snapshot.
type DDProc struct {
	PID          int
	RSSKB, HWMKB uint64
	UTime, STime uint64 // clock ticks
}

// RSSKB sums the snapshot's drvdomd processes' resident memory.
func (s DDSnap) RSSKB() uint64 {
	var n uint64
	for _, p := range s.Procs {
		n += p.RSSKB
	}
	return n
}

func parseUints(fs []string) []uint64 {
	out := make([]uint64, len(fs))
	for i, f := range fs {
		out[i], _ = strconv.ParseUint(f, 10, 64)
	}
	return out
}

// parseNetDev parses one line of /proc/net/dev ("name: rxbytes rxpackets
// errs drop fifo frame compressed multicast txbytes txpackets errs drop
// ..."); ok is false for a line without a name or with a counter that is
// not a number.
func parseNetDev(line string) (name string, c DevCounters, ok bool) {
	name, nums, found := strings.Cut(line, ":")
	f := strings.Fields(nums)
	if !found || len(f) < 12 {
		return "", c, false
	}
	var v [12]uint64
	for i := range v {
		n, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return "", c, false
		}
		v[i] = n
	}
	c = DevCounters{RxBytes: v[0], RxPackets: v[1], RxDrop: v[3], TxBytes: v[8], TxPackets: v[9], TxDrop: v[11]}
	return strings.TrimSpace(name), c, true
}

// ParseDDStat parses one bench-ddstat file into its snapshots (lines it
// cannot read are skipped: the file is a diagnostic, not a measurement).
func ParseDDStat(b []byte) []DDSnap {
	var out []DDSnap
	var cur *DDSnap
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "T":
			// T uptime cpu user nice system idle iowait irq softirq steal ...
			if len(f) < 7 || f[2] != "cpu" {
				cur = nil
				continue
			}
			up, _ := strconv.ParseFloat(f[1], 64)
			j := parseUints(f[3:])
			var total uint64
			for _, v := range j {
				total += v
			}
			idle := j[3]
			if len(j) > 4 {
				idle += j[4]
			}
			out = append(out, DDSnap{Uptime: up, Busy: total - idle, Total: total, Devs: map[string]DevCounters{}})
			cur = &out[len(out)-1]
		case "E":
			if cur != nil {
				cur.Epoch, _ = strconv.ParseInt(f[1], 10, 64)
			}
		case "D":
			// D followed by a /proc/net/dev line.
			if cur == nil {
				continue
			}
			if name, c, ok := parseNetDev(strings.Join(f[1:], " ")); ok {
				cur.Devs[name] = c
			}
		case "P":
			if cur == nil || len(f) < 6 {
				continue
			}
			pid, _ := strconv.Atoi(f[1])
			v := parseUints(f[2:6])
			cur.Procs = append(cur.Procs, DDProc{PID: pid, RSSKB: v[0], HWMKB: v[1], UTime: v[2], STime: v[3]})
		}
	}
	return out
}

// benchNetSnapSh defines bench_netsnap for the guest: its NIC's counters,
// TCP's retransmissions and, with drvdom's netback, the vif's own
// counters from its backend directory (drvdom-stats, rewritten every 5 s).
// The guest script takes one before and one after each network row and
// sends both as BenchNetStatName(row).
const benchNetSnapSh = `bench_netsnap() {
	grep 'eth0:' /proc/net/dev
	grep '^Tcp:' /proc/net/snmp
	be=$(xenstore-read device/vif/0/backend 2>/dev/null) && echo "drvdom-stats $(xenstore-read "$be/drvdom-stats" 2>/dev/null)"
	return 0
}
`

// BenchNetStatName is the file a network row's counters are sent as.
func BenchNetStatName(workload string) string { return "bench-netstat-" + workload + ".txt" }

// DrvdomdMemory returns, over a boot's bench-ddstat files, the largest sum
// of the drvdomd processes' VmRSS (KB), the largest sum of their VmHWM and
// how many drvdomd processes that snapshot had.
func DrvdomdMemory(files map[string][]byte) (rssKB, hwmKB uint64, procs int) {
	for name, b := range files {
		if !strings.HasPrefix(name, benchStatPrefix) {
			continue
		}
		for _, s := range ParseDDStat(b) {
			var hwm uint64
			for _, p := range s.Procs {
				hwm += p.HWMKB
			}
			if r := s.RSSKB(); r > rssKB {
				rssKB, procs = r, len(s.Procs)
			}
			hwmKB = max(hwmKB, hwm)
		}
	}
	return rssKB, hwmKB, procs
}

// WriteBenchMemory appends drvdomd's resident memory per boot to a
// bench.md (nothing when no boot sampled a drvdomd).
func WriteBenchMemory(w io.Writer, boots []BenchBootLog) {
	first := true
	for _, b := range boots {
		if b.DrvdomdRSSMaxKB == 0 {
			continue
		}
		if first {
			fmt.Fprintf(w, "\ndrvdomd resident memory in the driver domain (all its processes, VmRSS summed, largest of the %d s samples; VmHWM: peak):\n\n", BenchStatInterval)
			first = false
		}
		fmt.Fprintf(w, "- boot %d (%s): %.1f MB in %d processes, peak %.1f MB\n", b.Boot, b.Backend,
			float64(b.DrvdomdRSSMaxKB)/1024, b.DrvdomdProcs, float64(b.DrvdomdHWMKB)/1024)
	}
}

// BenchDom0Phase is dom0's part of a bench boot while the guest runs its
// rows (Scenario.Dom0Phase): a background sampler of dom0's NIC counters
// and TCP statistics every BenchStatInterval seconds into
// BenchDom0StatFile in the run directory (dom0 writes /lab directly), the
// other end of the lab's wire for the network rows (drops at dom0's e1000,
// retransmissions of the iperf3 server), in ParseDDStat's format plus
// the Tcp: lines of /proc/net/snmp.
var BenchDom0Phase = fmt.Sprintf(`( while :; do
	{ read -r up _ < /proc/uptime; read -r cpu < /proc/stat; echo "T $up $cpu"; echo "E $(date +%%s)"; grep -E '^ *(eth|xenbr)' /proc/net/dev | sed 's/^ */D /'; grep '^Tcp:' /proc/net/snmp | tail -1; } >> /lab/%[1]s
	sleep %[2]d
done ) </dev/null >/dev/null 2>&1 &
`, BenchDom0StatFile, BenchStatInterval)

// BenchDom0StatFile is the file BenchDom0Phase writes in the run directory.
const BenchDom0StatFile = "bench-dom0-netstat.txt"

// The device limit again, after the guest: at boot the driver domain's
// own fio measured the NVMe slower than the guest did through either
// backend later (e.g. 4k randread QD32: 45-183 IOPS in the driver domain,
// 662-716 in the guest), which makes backend/limit ratios above 1
// meaningless. So the driver domain also measures the NVMe rows of
// BenchAfterWorkloads once the guest is gone (its vif vanished) and the
// backends have let the disk go, and dom0 waits for them (BenchAfterMark)
// before it ends the boot. They are kept as PathDeviceAfter samples and
// reported beside the table.
const (
	PathDeviceAfter = "device-after"
	BenchAfterMark  = "BENCH-AFTER done"
)

// BenchAfterWorkloads are the block workloads measured again after the guest.
var BenchAfterWorkloads = []string{"4k-randread-qd1", "4k-randread-qd32"}

func benchAfterSh() string {
	var b strings.Builder
	b.WriteString(`bench_after() {
	sd=${DDSTAT_DIR:-/tmp}
	rm -f "$sd/after.fifo"; mkfifo "$sd/after.fifo" || return
	exec 8<>"$sd/after.fifo"
	seen=0
	while :; do
		read -r -t 5 -u 8 _
		set -- /sys/class/net/vif*
		if [ -e "$1" ]; then seen=1; continue; fi
		[ "$seen" = 1 ] && break
	done
	read -r -t 5 -u 8 _
`)
	for _, name := range BenchAfterWorkloads {
		for _, w := range BlockWorkloads {
			if w.Name == name {
				fmt.Fprintf(&b, "\tbench_fio %s %s %s %s %d\n", benchCheckName(BenchFileName(PathDeviceAfter, BackingNVMe, w.Name)), NVMeTarget, w.RW, w.BS, w.QD)
			}
		}
	}
	fmt.Fprintf(&b, "\tbench_put %s \"${DDSTAT_DIR:-/tmp}/nvmewatch.txt\"\n", BenchNVMeWatchFile)
	b.WriteString("\tlab_mark \"" + BenchAfterMark + "\"\n}\nbench_after </dev/null 2>/dev/null &\n")
	return b.String()
}

// benchDom0AfterWait is inserted into dom0's script before it ends a
// bench boot: wait for the driver domain's after-guest rows.
func benchDom0AfterWait(runtime time.Duration) string {
	w := len(BenchAfterWorkloads)*(runtimeSeconds(runtime)+30) + 30
	return fmt.Sprintf("lab_wait_log \"$DDLOG\" '@@LAB %s' %d || lab_mark \"bench: no after-guest rows from the driver domain in %ds\"\n", BenchAfterMark, w, w)
}

// WriteBenchAfter appends the after-guest device limit to a bench.md: per
// workload, the median over every boot beside the boot-time limit's.
func WriteBenchAfter(w io.Writer, samples []BenchSample) {
	first := true
	for _, name := range BenchAfterWorkloads {
		var after, before []BenchSample
		for _, s := range samples {
			if s.Backing != BackingNVMe || s.Workload != name {
				continue
			}
			switch s.Path {
			case PathDeviceAfter:
				after = append(after, s)
			case PathDevice:
				before = append(before, s)
			}
		}
		a, b := benchStat(after, MetricIOPS), benchStat(before, MetricIOPS)
		if !a.OK() {
			continue
		}
		if first {
			fmt.Fprintf(w, "\nDevice limit measured again in the driver domain after the guest left (the boot-time limit runs first, on a fresh boot):\n\n")
			first = false
		}
		fmt.Fprintf(w, "- nvme %s: %.0f IOPS after (n=%d, %.0f µs) vs %.0f at boot (n=%d)\n", name, a.Median, a.N, a.LatUs, b.Median, b.N)
	}
}

// benchVbdStatSh defines bench_vbdstat LABEL for the guest: one line per
// disk with its backend's drvdom-stats (drvdom's blkback: requests,
// persistent grant hits, misses and purges; nothing with the kernel's),
// taken after each block row and sent at the end as BenchVbdStatFile.
// The backend rewrites the key every 5 s, so a row's counts are
// approximate at its edges.
var benchVbdStatSh = fmt.Sprintf(`bench_vbdstat() {
	for d in %[1]d %[2]d; do
		be=$(xenstore-read device/vbd/$d/backend 2>/dev/null) || continue
		echo "$1 $d $(xenstore-read "$be/drvdom-stats" 2>/dev/null)"
	done >> /tmp/vbdstats.txt
	return 0
}
`, VdevNumber(GuestVdev), VdevNumber(BenchTmpfsVdev))

// BenchVbdStatFile is the file the guest's vbd statistics are sent as.
const BenchVbdStatFile = "bench-vbd-stats.txt"

// VdevNumber is the xenstore device number of a xvd<letter> disk (Linux's
// xvd major 202: 51712 + 16 * index).
func VdevNumber(vdev string) int {
	if len(vdev) != 4 || !strings.HasPrefix(vdev, "xvd") || vdev[3] < 'a' || vdev[3] > 'z' {
		return -1
	}
	return 51712 + 16*int(vdev[3]-'a')
}

// benchPutSh defines bench_put NAME FILE: lab_put of FILE compressed, as
// NAME+BenchPackedSuffix (gzip, then base64 on one line), or plain when
// the domain lacks gzip or base64. A console write bursts through
// xenconsoled, which stops reading a domain that notifies more than 30
// times in 200 ms; in /tmp/h4/real-aborted the driver domain's console
// then moved 2 KB a minute (soft lockups of 22-65 s in cat), a 6 KB fio
// JSON took a minute and the boot's baseline most of its time. Packed,
// a fio JSON is about a fifth as long, on one line.
const benchPutSh = benchLockedPutSh + `bench_put() {
	if command -v gzip >/dev/null && command -v base64 >/dev/null && gzip -9c "$2" | base64 -w0 > /tmp/bench.put && echo >> /tmp/bench.put; then
		bench_lput "$1` + BenchPackedSuffix + `" /tmp/bench.put
	else
		bench_lput "$1" "$2"
	fi
}
`

// BenchPackedSuffix marks a file bench_put sent packed.
const BenchPackedSuffix = ".gz.b64"

// benchFile returns the file name of a report, unpacking NAME+
// BenchPackedSuffix when the plain one is absent.
func benchFile(files map[string][]byte, name string) ([]byte, bool) {
	if b, ok := files[name]; ok {
		return b, true
	}
	p, ok := files[name+BenchPackedSuffix]
	if !ok {
		return nil, false
	}
	b, err := unpackBench(p)
	if err != nil {
		return []byte("unpack " + name + BenchPackedSuffix + ": " + err.Error()), true // fails to parse, with the reason
	}
	return b, true
}

func unpackBench(p []byte) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(p)))
	if err != nil {
		return nil, fmt.Errorf("base64: %w", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(zr, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	return b, nil
}
