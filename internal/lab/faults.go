package lab

// The lab proof of issue 6 (`xenlab faults`): what the guest and dom0 do
// while the driver domain's backends are killed and the domain hangs, and
// the boot-time probe that compares our image with a kernel-stack driver
// domain. The scripts are generated here (and pinned by tests with bash -n);
// cmd/xenlab/faults.go boots them.
//
// Figures use dom0's clock only (its "T" markers: dom0 uptime), so that
// times across domains never mix clocks.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// HotplugDevd makes the shell driver domain run `xl devd` (libxl's daemon,
// with Xen's block and vif-bridge scripts) for the kernel backends: the
// stock kernel-stack driver domain.
const HotplugDevd = "devd"

// FaultKey is drvdomd's fault-injection key under the driver domain's home
// (cmd/drvdomd FaultKey; drvdom.faults=1 enables it).
const FaultKey = "control/drvdomd-fault"

// FaultPlan is what the crash boot does.
type FaultPlan struct {
	// Kill: the worker is SIGKILLed every KillEvery while the guest runs
	// fio (write + crc32c verify, QD16) for Runtime and iperf3 to dom0.
	Kill      bool
	KillEvery time.Duration
	Runtime   time.Duration
	// Hang: the worker is SIGSTOPped (drvdomd's health fails, the watchdog
	// is no longer fed, Xen restarts the domain), dom0's `drvdomctl
	// supervise` re-attaches the guest's devices, the guest re-verifies data
	// it wrote before the hang and pings dom0.
	Hang bool
	// Drvdomctl is drvdomctl's path as dom0 sees it (under /lab).
	Drvdomctl string
	// RestoreWait bounds dom0's and the guest's waits for the restart and
	// the re-attach.
	RestoreWait time.Duration
}

// DefaultFaultPlan is the plan: kills every 2 s for 60 s, then the hang.
func DefaultFaultPlan() FaultPlan {
	return FaultPlan{Kill: true, KillEvery: 2 * time.Second, Runtime: 60 * time.Second, Hang: true,
		Drvdomctl: "/lab/bin/drvdomctl", RestoreWait: 420 * time.Second}
}

func secs(d time.Duration) int {
	s := int(d / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// FioKillJob is the guest's fio under kills: 4k random writes at QD16 over
// a region away from verifyJob's first 32 MiB, sized so that it takes about
// runtime (KillMiBPerMinute), each block written once (fio's random map)
// and read back and checked (crc32c): verify_backlog while writing, the
// final verification phase for the rest. Not time_based, because a
// time_based job never reaches that phase ("verification read phase will
// never start because write phase uses all of runtime") and its backlog
// leaves an arbitrary tail unverified; every write is thus read back once
// (ParseFaultFigures' Reads == Writes). fio's own runtime is only a cap.
func FioKillJob(runtime time.Duration, out string) string {
	return fmt.Sprintf("fio --name=kill --filename=/dev/xvdb --offset=128M --size=%dM --rw=randwrite --bs=4k --iodepth=16 "+
		"--ioengine=libaio --direct=1 --verify=crc32c --verify_backlog=%d --verify_fatal=1 --runtime=%d "+
		"--output-format=json --eta=never --output=%s", KillMiB(runtime), VerifyBacklog, 5*secs(runtime)+60, out)
}

// KillMiBPerMinute is how much the kill job writes per minute of the
// plan's runtime: the lab's guest managed ~220 4k writes/s under kills
// (13360 in 60 s), so 64 MiB is about a minute.
const KillMiBPerMinute = 64

// KillMiB is the kill job's region for runtime: at least 4 MiB.
func KillMiB(runtime time.Duration) int {
	return max(4, int(runtime*KillMiBPerMinute/time.Minute))
}

// VerifyBacklog is fio's verify_backlog under kills: every this many
// writes, fio reads them back and checks them.
const VerifyBacklog = 16

// firstRead is the guest's probe of "serving": the first 4 KiB O_DIRECT
// read of its disk that succeeds (the disk may still be connecting when a
// slow hotplug holds it).
const firstRead = `t=0
until dd if=/dev/xvdb of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; do
	t=$((t + 1)); [ "$t" -ge 1500 ] && break
	sleep 0.2
done
dd if=/dev/xvdb of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null
lab_check guest-first-read $? "4 KiB O_DIRECT read of xvdb"
lab_mark "PHASE first-read"
`

// ioErrorRE is what the guest greps its kernel log for.
const ioErrorRE = `I/O error|blk_update_request|Buffer I/O|blkfront.*(error|fail)|critical medium|EXT4-fs error`

// FaultGuestScript is the guest's half of the crash boot.
func FaultGuestScript(p FaultPlan) string {
	var b strings.Builder
	b.WriteString(". /lab/lib.sh\nrc=0\n")
	b.WriteString(firstRead)
	if p.Kill {
		fmt.Fprintf(&b, `# The same fio for 10 s without faults: the baseline of the figures.
%[7]s
lab_put fio-nokill.json /tmp/fio-nokill.json
# Backend killed mid-I/O: iperf3 to dom0 across the whole fio run.
dmesg | grep -E '%[4]s' | wc -l > /tmp/ioerr-before
lab_mark "PHASE kill-start"
# Bounded: in run 5 the stream never came back after the kills and iperf3
# waited forever (SIGINT makes it print its JSON so far).
timeout -k 10 -s INT %[8]d iperf3 -c %[1]s -t %[2]d -i 1 -J > /tmp/iperf3-kill.json 2>/tmp/iperf3-kill.err &
ipid=$!
sleep 2
%[3]s
r=$?
lab_mark "PHASE kill-stop"
lab_put fio-kill.json /tmp/fio-kill.json
lab_check guest-fio-under-kills $r "crc32c randwrite+verify QD16 %[5]ds while the worker is SIGKILLed every %[6]ds"
wait $ipid
r2=$?
lab_put iperf3-kill.json /tmp/iperf3-kill.json
[ "$r2" = 124 ] && echo "iperf3 still running $((%[2]d + 60)) s after it started: interrupted" >> /tmp/iperf3-kill.err
lab_check guest-iperf3-under-kills $r2 "iperf3 to dom0 through the kills (rc $r2 $(head -c 200 /tmp/iperf3-kill.err))"
dmesg | grep -E '%[4]s' > /tmp/ioerr.txt
n=$(( $(wc -l < /tmp/ioerr.txt) - $(cat /tmp/ioerr-before) ))
[ "$n" -gt 0 ] && lab_put guest-io-errors.txt /tmp/ioerr.txt
[ "$n" -le 0 ]
lab_check guest-no-io-errors $? "$n new kernel log lines match I/O errors"
rc=$((rc | r | r2))
`, Dom0IP, secs(p.Runtime)+15, FioKillJob(p.Runtime, "/tmp/fio-kill.json"), ioErrorRE, secs(p.Runtime), secs(p.KillEvery),
			FioKillJob(10*time.Second, "/tmp/fio-nokill.json"), secs(p.Runtime)+75)
	}
	if p.Hang {
		fmt.Fprintf(&b, `# Hung driver domain: data written before, re-verified after the restart.
%[1]s --output=/tmp/fio-prehang.json
lab_check guest-fio-before-hang $? "crc32c randwrite+verify 32 MiB before the hang"
sync
nb=$(dmesg | grep -c 'blkfront: xvdb:')
up0=$(cut -d. -f1 /proc/uptime)
lab_mark "PHASE hang"
# blkfront prints "blkfront: xvdb: ..." on every connect: a new one is the
# disk re-attached to the restarted driver domain.
t=0
while [ "$(dmesg | grep -c 'blkfront: xvdb:')" -le "$nb" ] && [ "$t" -lt %[2]d ]; do sleep 0.5; t=$((t + 1)); done
[ "$(dmesg | grep -c 'blkfront: xvdb:')" -gt "$nb" ]
lab_check guest-disk-back $? "blkfront connected xvdb again $(( $(cut -d. -f1 /proc/uptime) - up0 )) s after the hang"
lab_wait 60 test -b /dev/xvdb
# The NIC comes back as a new netdev (eth0 again, or the next name).
t=0; ok=1
while [ "$t" -lt %[2]d ]; do
	for n in $(ls /sys/class/net | grep '^eth'); do
		ip addr add %[3]s/16 dev "$n" 2>/dev/null
		ip link set "$n" up
	done
	if ping -c1 -W1 %[4]s >/dev/null 2>&1; then ok=0; break; fi
	t=$((t + 1))
done
lab_check guest-ping-after-restart $ok "$(ls /sys/class/net | grep '^eth' | tr '\n' ' ')pings %[4]s"
%[1]s --verify_only --output=/tmp/fio-posthang.json
r=$?
lab_put fio-posthang.json /tmp/fio-posthang.json
lab_check guest-data-after-restart $r "crc32c verify_only of the 32 MiB written before the hang"
rc=$((rc | r | ok))
`, verifyJob, 2*secs(p.RestoreWait), GuestIP, Dom0IP)
	}
	b.WriteString("exit $rc\n")
	return b.String()
}

// FaultDom0Phase is dom0's half of the crash boot (Scenario.Dom0Phase).
func FaultDom0Phase(p FaultPlan) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# ---- xenlab faults (dom0) ----
lab_wait_log "$GLOG" "@@LAB PHASE first-read" 600 && lab_t first-read
grep -q "@@LAB CHECK guest-first-read PASS" "$GLOG"
ck dom0-serving $? "guest read its disk"
FK=/local/domain/$DD/%[1]s
xenstore-write "$FK" "" && xenstore-chmod "$FK" n0 b$DD
ck dom0-fault-key $? "$FK writable by the driver domain"
`, FaultKey)
	if p.Hang {
		fmt.Fprintf(&b, `cp %[1]s /tmp/drvdomctl
/tmp/drvdomctl supervise --name %[2]s --poll 1s > /lab/supervise.log 2>&1 &
SUPPID=$!
`, p.Drvdomctl, DrvdomName)
	}
	if p.Kill {
		fmt.Fprintf(&b, `lab_wait_log "$GLOG" "@@LAB PHASE kill-start" 600
lab_t kill-start
kills=0; i=0
while [ "$i" -lt %[1]d ] && ! grep -q "@@LAB PHASE kill-stop" "$GLOG"; do
	sleep %[2]d
	xenstore-write "$FK" kill-worker && kills=$((kills + 1))
	i=$((i + 1))
done
lab_t kill-end
[ "$kills" -gt 0 ]
ck dom0-kill-worker $? "$kills SIGKILLs requested, one every %[2]d s"
lab_mark "FIGURE kills $kills"
lab_wait_log "$GLOG" "@@LAB CHECK guest-no-io-errors" 300
restarts=$(grep -c 'msg="worker exited; restarting"' "$DDLOG")
[ "$restarts" -gt 0 ]
ck drvdom-worker-restarts $? "$restarts worker restarts logged for $kills kills"
lab_mark "FIGURE restarts $restarts"
`, 2*secs(p.Runtime)/secs(p.KillEvery)+30, secs(p.KillEvery))
	}
	if p.Hang {
		fmt.Fprintf(&b, `lab_wait_log "$GLOG" "@@LAB PHASE hang" 900
OLDDD=$DD
lab_t hang
xenstore-write "$FK" stop-worker
ck dom0-hang $? "worker SIGSTOPped in domain $OLDDD"
newdd() { n=$(xl domid %[1]s 2>/dev/null) && [ -n "$n" ] && [ "$n" != "$OLDDD" ]; }
# Running: xl list shows no s(hutdown) or d(ying) flag for it.
oldrunning() { xl list "$OLDDD" 2>/dev/null | awk 'NR == 2 && $5 !~ /[sd]/ { f = 1 } END { exit !f }'; }
t=0; while oldrunning && [ "$t" -lt %[2]d ]; do sleep 0.5; t=$((t + 1)); done
lab_t drvdom-shutdown
t=0; while ! newdd && [ "$t" -lt %[2]d ]; do sleep 0.5; t=$((t + 1)); done
newdd
ck dom0-drvdom-restarted $? "domain %[1]s back as $(xl domid %[1]s 2>/dev/null) (was $OLDDD)"
lab_t drvdom-restarted
DD=$(xl domid %[1]s 2>/dev/null || echo "$OLDDD")
grep -q 'msg="watchdog keepalive withheld' "$DDLOG"
ck drvdom-watchdog-withheld $? "drvdomd stopped feeding the watchdog"
vbd_back() { [ "$(xenstore-read /local/domain/$GID/device/vbd/51728/backend-id 2>/dev/null)" = "$DD" ] && [ "$(xenstore-read /local/domain/$DD/backend/vbd/$GID/51728/state 2>/dev/null)" = 4 ]; }
vif_back() { for v in $(xenstore-list /local/domain/$DD/backend/vif/$GID 2>/dev/null); do [ "$(xenstore-read /local/domain/$DD/backend/vif/$GID/$v/state 2>/dev/null)" = 4 ] && return 0; done; return 1; }
t=0; while ! vbd_back && [ "$t" -lt %[2]d ]; do sleep 0.5; t=$((t + 1)); done
vbd_back
ck dom0-vbd-reattached $? "vbd $GID/51728 Connected on domain $DD"
lab_t vbd-reattached
t=0; while ! vif_back && [ "$t" -lt %[2]d ]; do sleep 0.5; t=$((t + 1)); done
vif_back
ck dom0-vif-reattached $? "a vif of $GID Connected on domain $DD"
lab_t vif-reattached
lab_wait_log "$GLOG" "@@LAB CHECK guest-ping-after-restart" %[3]d
lab_t guest-restored
cp /var/log/xen/xl-%[1]s.log /lab/xl-%[1]s-daemon.log 2>/dev/null
# SHUTDOWN_watchdog is reason 4 (xen/include/public/sched.h).
xl dmesg | grep -q "Watchdog timer fired for domain $OLDDD" && grep -q "reason code 4" /var/log/xen/xl-%[1]s.log
ck dom0-restart-by-watchdog $? "Xen: watchdog fired for domain $OLDDD; xl: shutdown reason 4 (watchdog), restarted"
kill "$SUPPID" 2>/dev/null
`, DrvdomName, 2*secs(p.RestoreWait), secs(p.RestoreWait))
	}
	b.WriteString("# ---- end of xenlab faults ----\n")
	return b.String()
}

// BootGuestScript is the guest's half of the boot-time probe.
const BootGuestScript = ". /lab/lib.sh\n" + firstRead + "exit 0\n"

// BootDom0Phase is dom0's half of the boot-time probe.
const BootDom0Phase = `lab_wait_log "$GLOG" "@@LAB PHASE first-read" 600 && lab_t first-read
grep -q "@@LAB CHECK guest-first-read PASS" "$GLOG"
ck dom0-serving $? "guest read its disk"
cp /var/log/xen/xl-drvdom.log /lab/xl-drvdom-daemon.log 2>/dev/null
`

// FaultChecks are the checks a crash boot must report.
func FaultChecks(p FaultPlan) []string {
	out := []string{"guest-first-read", "dom0-serving", "dom0-fault-key"}
	if p.Kill {
		out = append(out, "dom0-kill-worker", "guest-fio-under-kills", "guest-iperf3-under-kills",
			"guest-no-io-errors", "drvdom-worker-restarts")
	}
	if p.Hang {
		out = append(out, "guest-fio-before-hang", "dom0-hang", "dom0-drvdom-restarted", "drvdom-watchdog-withheld",
			"dom0-vbd-reattached", "dom0-vif-reattached", "guest-disk-back", "guest-data-after-restart",
			"guest-ping-after-restart", "dom0-restart-by-watchdog")
	}
	return append(out, "guest-shutdown")
}

// BootChecks are the checks a boot-time probe must report.
var BootChecks = []string{"guest-first-read", "dom0-serving"}

// WithOnWatchdog returns an xl config with on_watchdog set (Render writes
// none: xl's default destroys a domain whose watchdog fired).
func WithOnWatchdog(cfg, action string) string {
	return strings.TrimRight(cfg, "\n") + fmt.Sprintf("\non_watchdog = %q\n", action)
}

// BootTimes are a boot's "serving" figures, from dom0's clock: the start of
// `xl create` of the driver domain (dom0's images-copied marker, printed
// just before it) to the driver domain's readiness line, and to dom0 seeing
// the guest's first successful read of its disk (which includes creating
// and booting the guest: the same guest for every driver domain).
type BootTimes struct {
	DDReady   float64 // xl create -> driver domain ready
	Serving   float64 // xl create -> the guest's first read
	GuestPart float64 // guest xl create -> its first read (part of Serving)
	OK        bool
}

// ParseBootTimes reads BootTimes from dom0's timeline (Report.Timeline).
func ParseBootTimes(tl map[string]float64) BootTimes {
	t0, ok0 := tl["dom0/images-copied"]
	rd, ok1 := tl["dom0/drvdom-ready"]
	fr, ok2 := tl["dom0/first-read"]
	if !ok0 || !ok1 || !ok2 {
		return BootTimes{}
	}
	// The guest's xl create starts right after drvdom-ready.
	return BootTimes{DDReady: rd - t0, Serving: fr - t0, GuestPart: fr - rd, OK: true}
}

// FaultFigures are what a crash boot measured.
type FaultFigures struct {
	Kills          int // kill-worker requests dom0 wrote
	Injected       int // "fault injected" fault=kill-worker lines in the driver domain's log
	NoWorker       int // of those, how many found no worker running (it was restarting)
	Restarts       int // "worker exited; restarting" lines
	Fio            *FioResult
	FioErr         string
	NoKill         *FioResult // the same job for 10 s before the kills
	Reads, Writes  int64      // fio's I/Os under kills: verify reads, writes
	Iperf          *IperfResult
	IperfErr       string
	LongestStall   int // consecutive 1 s iperf3 intervals below 10% of the 90th percentile
	StalledSeconds int // all such intervals
	// From dom0's clock: hang -> the domain shut down (Xen's watchdog
	// fired), -> restarted under a new id, -> disk and NIC Connected again
	// on the new domain, -> the guest pinging dom0 again.
	HangToShutdown, HangToRestart, HangToVBD, HangToVIF, HangToGuest float64
}

var figureRE = regexp.MustCompile(`@@LAB FIGURE (\S+) (\d+)@@`)

// ParseFaultFigures reads the figures from a crash boot's report and run directory.
func ParseFaultFigures(r *Report) FaultFigures {
	f := FaultFigures{HangToShutdown: -1, HangToRestart: -1, HangToVBD: -1, HangToVIF: -1, HangToGuest: -1}
	if b, err := os.ReadFile(filepath.Join(r.Out, "dom0.log")); err == nil {
		for _, m := range figureRE.FindAllSubmatch(b, -1) {
			if string(m[1]) == "kills" {
				fmt.Sscan(string(m[2]), &f.Kills)
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(r.Out, "console", "guest-"+DrvdomName+".log")); err == nil {
		f.Injected, f.NoWorker, f.Restarts = countWorkerEvents(b)
	}
	if b, ok := r.Files["fio-kill.json"]; ok {
		if fr, err := ParseFio(b); err != nil {
			f.FioErr = err.Error()
		} else {
			f.Fio = &fr
		}
		f.Reads, f.Writes = fioIOs(b)
	}
	if b, ok := r.Files["fio-nokill.json"]; ok {
		if fr, err := ParseFio(b); err == nil {
			f.NoKill = &fr
		}
	}
	if b, ok := r.Files["iperf3-kill.json"]; ok {
		if ir, err := ParseIperf3(b); err != nil {
			f.IperfErr = err.Error()
		} else {
			f.Iperf = &ir
		}
		f.LongestStall, f.StalledSeconds = iperfStalls(b)
	}
	tl := r.Timeline
	if h, ok := tl["dom0/hang"]; ok {
		at := func(k string) float64 {
			if v, ok := tl["dom0/"+k]; ok {
				return v - h
			}
			return -1
		}
		f.HangToShutdown, f.HangToRestart = at("drvdom-shutdown"), at("drvdom-restarted")
		f.HangToVBD, f.HangToVIF, f.HangToGuest = at("vbd-reattached"), at("vif-reattached"), at("guest-restored")
	}
	return f
}

// MaxIperfStall is the longest iperf3 stall (seconds at under a tenth of
// the median rate) the kill check allows: "a short stall".
const MaxIperfStall = 10

// Checks are the host's checks of the figures (Source "host"): fio read
// back and verified every block it wrote under the kills (FioKillJob
// writes each once), and iperf3's longest stall was short.
func (f FaultFigures) Checks() []Check {
	var out []Check
	if f.Fio != nil {
		ok := f.Writes > 0 && f.Reads == f.Writes && f.Fio.Errors == 0
		out = append(out, Check{Name: "kill-fio-verified", Pass: ok, Source: "host",
			Detail: fmt.Sprintf("%d writes, %d read back and verified, %d job errors", f.Writes, f.Reads, f.Fio.Errors)})
	}
	if f.Iperf != nil || f.IperfErr != "" {
		out = append(out, Check{Name: "kill-iperf3-stall", Pass: f.Iperf != nil && f.LongestStall <= MaxIperfStall, Source: "host",
			Detail: fmt.Sprintf("longest stall %d s (allowed %d), %d s stalled in all", f.LongestStall, MaxIperfStall, f.StalledSeconds)})
	}
	return out
}

// fioIOs returns the read and write I/O counts of fio's JSON output.
func fioIOs(b []byte) (reads, writes int64) {
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return 0, 0
	}
	var doc struct {
		Jobs []struct {
			Read struct {
				N int64 `json:"total_ios"`
			} `json:"read"`
			Write struct {
				N int64 `json:"total_ios"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if json.NewDecoder(bytes.NewReader(b[i:])).Decode(&doc) != nil {
		return 0, 0
	}
	for _, j := range doc.Jobs {
		reads += j.Read.N
		writes += j.Write.N
	}
	return reads, writes
}

// countWorkerEvents counts drvdomd's fault and restart lines in its console log.
func countWorkerEvents(log []byte) (injected, noWorker, restarts int) {
	for _, l := range bytes.Split(log, []byte("\n")) {
		switch {
		case bytes.Contains(l, []byte(`msg="fault injected" fault=kill-worker`)):
			injected++
			if bytes.Contains(l, []byte("no worker running")) {
				noWorker++
			}
		case bytes.Contains(l, []byte(`msg="worker exited; restarting"`)):
			restarts++
		}
	}
	return injected, noWorker, restarts
}

// iperfStalls returns the longest run of consecutive iperf3 intervals, and
// their total, whose throughput is under a tenth of the reference rate: the
// 90th percentile interval's (not the median: when the stream is stalled
// most of the time the median is 0 and nothing would count as a stall).
func iperfStalls(b []byte) (longest, total int) {
	bps := iperfIntervals(b)
	if len(bps) == 0 {
		return 0, 0
	}
	s := append([]float64(nil), bps...)
	sort.Float64s(s)
	ref := s[len(s)*9/10]
	run := 0
	for _, v := range bps {
		if v < ref/10 || v == 0 {
			run++
			total++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	return longest, total
}

// iperfIntervals returns the bits/s of each interval of iperf3 -J output.
func iperfIntervals(b []byte) []float64 {
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return nil
	}
	var doc struct {
		Intervals []struct {
			Sum struct {
				Bps float64 `json:"bits_per_second"`
			} `json:"sum"`
		} `json:"intervals"`
	}
	if err := json.NewDecoder(bytes.NewReader(b[i:])).Decode(&doc); err != nil {
		return nil
	}
	out := make([]float64, len(doc.Intervals))
	for j, iv := range doc.Intervals {
		out[j] = iv.Sum.Bps
	}
	return out
}

// Print writes the crash boot's figures.
func (f FaultFigures) Print(w io.Writer) {
	fmt.Fprintf(w, "backend killed mid-I/O:\n")
	fmt.Fprintf(w, "  kills requested by dom0       %d (drvdomd: %d injected, %d while no worker ran)\n", f.Kills, f.Injected, f.NoWorker)
	fmt.Fprintf(w, "  worker restarts (DD log)      %d\n", f.Restarts)
	switch {
	case f.Fio != nil:
		fmt.Fprintf(w, "  fio randwrite+verify          %.0f write IOPS, %d job errors (%d writes, %d read back and verified)\n", f.Fio.WriteIOPS, f.Fio.Errors, f.Writes, f.Reads)
		if f.NoKill != nil {
			fmt.Fprintf(w, "  same fio, 10 s, no kills      %.0f write IOPS\n", f.NoKill.WriteIOPS)
		}
	case f.FioErr != "":
		fmt.Fprintf(w, "  fio                           %s\n", f.FioErr)
	default:
		fmt.Fprintf(w, "  fio                           (no result)\n")
	}
	switch {
	case f.Iperf != nil:
		fmt.Fprintf(w, "  iperf3 guest -> dom0          %.3f Gbit/s received; longest stall %d s, %d s stalled in all\n", f.Iperf.ReceivedBps/1e9, f.LongestStall, f.StalledSeconds)
	case f.IperfErr != "":
		fmt.Fprintf(w, "  iperf3                        %s (longest stall %d s)\n", f.IperfErr, f.LongestStall)
	default:
		fmt.Fprintf(w, "  iperf3                        (no result)\n")
	}
	fmt.Fprintf(w, "hung driver domain (dom0 clock, from the SIGSTOP; -1: not reached):\n")
	fmt.Fprintf(w, "  hang -> watchdog shut it down %.1f s\n", f.HangToShutdown)
	fmt.Fprintf(w, "  hang -> Xen restarted it      %.1f s\n", f.HangToRestart)
	fmt.Fprintf(w, "  hang -> vbd Connected again   %.1f s\n", f.HangToVBD)
	fmt.Fprintf(w, "  hang -> vif Connected again   %.1f s\n", f.HangToVIF)
	fmt.Fprintf(w, "  hang -> guest pings dom0      %.1f s\n", f.HangToGuest)
}
