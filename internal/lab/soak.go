package lab

import (
	"fmt"
	"strings"
	"time"
)

// Soak is the multi-guest soak of issue 8: Guests guests, each with a vbd
// (a scratch file in the driver domain) and a vif, run fio write+verify
// cycles and iperf3 to dom0 for Duration, while dom0, between cycles,
// randomly block-detaches and re-attaches a guest's disk (the guest
// re-verifies the last cycle's data) or destroys and re-creates the guest.
// Afterwards every guest is destroyed and dom0 checks that drvdomd's worker
// holds no grant mapping and is back to its baseline fds and goroutines
// (published by drvdomd under data/drvdomd-stats-worker), that no backend
// node is left and that no cycle had a verify or iperf3 error.
//
// Guests talk to dom0 through their own xenstore home: a guest that ended
// cycle N writes data/soak-idle=N and waits for dom0 to answer
// data/soak-go=N, with data/soak-act saying what comes (none|detach); a
// restart needs no word. So dom0 never pulls a disk from under a running fio.
type Soak struct {
	Guests   int
	Duration time.Duration
	// FileMB is each guest's scratch file size; the fio cycle writes
	// FioMB of it.
	FileMB, FioMB int
}

// soakStall (s): a guest without a finished cycle for this long at the
// end of the soak is stuck (a cycle takes 60-120 s under TCG).
const soakStall = 300

// DefaultSoak is issue 8's soak: 3 guests for 10 minutes.
var DefaultSoak = Soak{Guests: 3, Duration: 10 * time.Minute, FileMB: 32, FioMB: 8}

// SoakChecks are the checks a soak boot must report.
var SoakChecks = []string{
	"dom0-assign-nvme", "dom0-assign-nic", "drvdom-nvme-passthrough", "drvdom-nic-passthrough",
	"soak-guests-created", "soak-ran", "soak-guests-progressing", "soak-drvdom-not-restarted", "soak-fio-verify", "soak-reattach-reverify", "soak-iperf3",
	"soak-no-stale-backends", "soak-no-grants-mapped", "soak-fds-baseline", "soak-goroutines-baseline",
	"soak-worker-not-restarted",
}

func (k Soak) guestName(i int) string { return fmt.Sprintf("soak%d", i) }
func (k Soak) guestIP(i int) string   { return fmt.Sprintf("169.254.0.%d", 10+i) }
func (k Soak) guestMAC(i int) string  { return fmt.Sprintf("00:16:3e:4c:01:%02x", i) }
func (k Soak) iperfPort(i int) int    { return 5200 + i }
func (k Soak) file(i int) string      { return fmt.Sprintf("/run/soak/g%d.img", i) }

// DrvdomArgs are the driver domain's extra kernel arguments: the guests'
// scratch files.
func (k Soak) DrvdomArgs() string {
	var fs []string
	for i := 1; i <= k.Guests; i++ {
		fs = append(fs, fmt.Sprintf("%s:%dM", k.file(i), k.FileMB))
	}
	return "drvdom.scratch=" + strings.Join(fs, ",")
}

// GuestConfig is soak guest i's xl config (paths as dom0 sees them).
func (k Soak) GuestConfig(i int) DomainConfig {
	return DomainConfig{
		Name: k.guestName(i), Kernel: "/tmp/img/vmlinux", Ramdisk: "/tmp/img/guest.img",
		Extra:    fmt.Sprintf("console=hvc0 lab.role=guest lab.ip=%s lab.iperfport=%d", k.guestIP(i), k.iperfPort(i)),
		MemoryMB: GuestMemMB, VCPUs: 1,
		Disks: []string{DiskSpec(GuestVdev, DrvdomName, k.file(i))},
		VIFs:  []string{VIFSpec(DrvdomName, Bridge, k.guestMAC(i))},
	}
}

// Files are the extra run-directory files dom0 needs (the guests' configs).
func (k Soak) Files() map[string]string {
	m := map[string]string{}
	for i := 1; i <= k.Guests; i++ {
		m[k.guestName(i)+".cfg"] = k.GuestConfig(i).Render()
	}
	return m
}

// GuestScript is every soak guest's /lab/guest.sh: cycles until destroyed.
func (k Soak) GuestScript() string {
	job := fmt.Sprintf("fio --name=soak --filename=/dev/xvdb --rw=randwrite --bs=4k --size=%dM --ioengine=libaio --iodepth=16 --direct=1 --verify=crc32c --eta=never", k.FioMB)
	return `me=$(xenstore-read name 2>/dev/null || echo guest)
port=5201
for a in $(cat /proc/cmdline); do
	case "$a" in lab.iperfport=*) port="${a#lab.iperfport=}" ;; esac
done
n=0
while :; do
	n=$((n + 1))
	iperf3 -c ` + Dom0IP + ` -p "$port" -t 10 > /tmp/iperf3.txt 2>&1 &
	ipid=$!
	` + job + ` --randseed=$n > /tmp/fio.txt 2>&1
	r=$?
	wait $ipid
	ri=$?
	lab_mark "SOAK cycle $me $n fio=$r iperf=$ri"
	[ "$r" = 0 ] || tail -n 20 /tmp/fio.txt
	[ "$ri" = 0 ] || tail -n 5 /tmp/iperf3.txt
	xenstore-write data/soak-idle "$n"
	lab_wait 600 sh -c "test \"\$(xenstore-read data/soak-go 2>/dev/null)\" = $n" || lab_mark "SOAK nogo $me $n"
	if [ "$(xenstore-read data/soak-act 2>/dev/null)" = detach ]; then
		lab_wait 60 sh -c '! test -b /dev/xvdb'
		g=$?
		lab_wait 120 test -b /dev/xvdb
		b=$?
		` + job + ` --randseed=$n --verify_only > /tmp/fio.txt 2>&1
		rv=$?
		lab_mark "SOAK reattach $me $n gone=$g back=$b reverify=$rv"
		[ "$rv" = 0 ] || tail -n 20 /tmp/fio.txt
	fi
done
`
}

// Dom0Script turns the scenario's dom0.sh (made with NoGuest: it stops
// after the driver domain is ready) into the soak's: the soak goes in
// front of its final summary. It fails if that script changed shape.
func (k Soak) Dom0Script(base string) (string, error) {
	const tail = "xl list\n[ \"$fails\" = 0 ] || dump\n"
	i := strings.LastIndex(base, tail)
	if i < 0 {
		return "", fmt.Errorf("lab: soak: dom0 script has no %q to insert the soak before", tail)
	}
	return base[:i] + k.dom0Phase() + base[i:], nil
}

func (k Soak) dom0Phase() string {
	var b strings.Builder
	fmt.Fprintf(&b, "SOAK_GUESTS=%q\nSOAK_SECONDS=%d\nSOAK_STALL=%d\n", k.guestList(), int(k.Duration/time.Second), soakStall)
	for i := 1; i <= k.Guests; i++ {
		fmt.Fprintf(&b, "iperf3 -s -D -B %s -p %d --logfile /tmp/iperf3-%d.log\n", Dom0IP, k.iperfPort(i), i)
		fmt.Fprintf(&b, "SPEC_%s='%s'\n", k.guestName(i), DiskSpec(GuestVdev, DrvdomName, k.file(i)))
	}
	b.WriteString(`mkdir -p /tmp/soak
W=/local/domain/$DD/data/drvdomd-stats-worker
num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
lab_wait 60 xenstore-read $W
base=$(xenstore-read $W)
lab_mark "SOAK baseline $base"
b_fds=$(echo "$base" | num fds)
b_gor=$(echo "$base" | num goroutines)
created=0
for g in $SOAK_GUESTS; do
	timeout 300 xl create /lab/$g.cfg 2>/lab/xl-create-$g.log && created=$((created + 1))
	eval "prog_$g=$(date +%s)"
done
[ "$created" = $(echo $SOAK_GUESTS | wc -w) ]
ck soak-guests-created $? "$created guests"
lab_t soak-start
start=$(date +%s)
end=$((start + SOAK_SECONDS))
detaches=0; restarts=0; nones=0; maxrss=0
while [ "$(date +%s)" -lt "$end" ]; do
	for g in $SOAK_GUESTS; do
		id=$(xl domid $g 2>/dev/null) || { lab_mark "SOAK lost $g"; continue; }
		H=/local/domain/$id/data
		idle=$(xenstore-read $H/soak-idle 2>/dev/null) || continue
		[ "$idle" = "$(cat /tmp/soak/$g.$id 2>/dev/null)" ] && continue
		echo "$idle" > /tmp/soak/$g.$id
		eval "prog_$g=$(date +%s)"
		r=$(shuf -i 0-9 -n 1)
		if [ "$r" -lt 3 ]; then
			detaches=$((detaches + 1))
			lab_mark "SOAK act $g cycle $idle detach"
			xenstore-write $H/soak-act detach
			xenstore-write $H/soak-go "$idle"
			timeout 120 xl block-detach $g xvdb 2>>/lab/xl-soak-detach.log || lab_mark "SOAK xl block-detach $g failed"
			eval spec=\$SPEC_$g
			timeout 120 xl block-attach $g "$spec" 2>>/lab/xl-soak-attach.log || lab_mark "SOAK xl block-attach $g failed"
		elif [ "$r" -lt 5 ]; then
			restarts=$((restarts + 1))
			lab_mark "SOAK act $g cycle $idle restart"
			xl destroy $g
			timeout 300 xl create /lab/$g.cfg 2>>/lab/xl-create-$g.log || lab_mark "SOAK xl create $g failed"
			eval "prog_$g=$(date +%s)"
		else
			nones=$((nones + 1))
			xenstore-write $H/soak-act none
			xenstore-write $H/soak-go "$idle"
		fi
	done
	for role in worker supervisor; do
		rss=$(xenstore-read /local/domain/$DD/data/drvdomd-stats-$role 2>/dev/null | num rss_kb)
		eval "last_$role=\${rss:-0}"
	done
	tot=$((last_worker + last_supervisor))
	[ "$tot" -gt "$maxrss" ] && maxrss=$tot
	sleep 2
done
lab_t soak-end
elapsed=$(( $(date +%s) - start ))
# Every guest must still be cycling at the end: a guest whose disk or
# network stopped answering stops reporting cycles.
stuck=""
for g in $SOAK_GUESTS; do
	eval "p=\$prog_$g"
	age=$(( $(date +%s) - p ))
	lab_mark "SOAK progress $g last cycle ${age}s before the end"
	[ "$age" -le "$SOAK_STALL" ] || stuck="$stuck $g"
done
[ -z "$stuck" ]
ck soak-guests-progressing $? "guests without a cycle in the last ${SOAK_STALL}s:${stuck:- none}"
[ "$(xl domid ` + DrvdomName + ` 2>/dev/null)" = "$DD" ]
ck soak-drvdom-not-restarted $? "driver domain still domain $DD"
for g in $SOAK_GUESTS; do xl destroy $g 2>/dev/null; done
lab_mark "SOAK actions detach=$detaches restart=$restarts none=$nones drvdomd_max_rss_kb=$maxrss"
cycles=0; bad=0; ipbad=0; reatt=0; reatt_bad=0
for g in $SOAK_GUESTS; do
	L=/lab/console/guest-$g.log
	c=$(grep -c "@@LAB SOAK cycle " $L)
	f=$(grep "@@LAB SOAK cycle " $L | grep -vc " fio=0 ")
	i=$(grep "@@LAB SOAK cycle " $L | grep -vc " iperf=0@@")
	a=$(grep -c "@@LAB SOAK reattach " $L)
	ab=$(grep "@@LAB SOAK reattach " $L | grep -vc "gone=0 back=0 reverify=0@@")
	lab_mark "SOAK guest $g cycles=$c fio_fail=$f iperf_fail=$i reattach=$a reattach_fail=$ab"
	cycles=$((cycles + c)); bad=$((bad + f)); ipbad=$((ipbad + i)); reatt=$((reatt + a)); reatt_bad=$((reatt_bad + ab))
done
[ "$elapsed" -ge "$SOAK_SECONDS" ] && [ "$cycles" -gt 0 ]
ck soak-ran $? "${elapsed}s, $cycles cycles, $detaches detach/attach, $restarts restarts"
[ "$bad" = 0 ]
ck soak-fio-verify $? "$bad of $cycles fio write+verify cycles failed"
[ "$reatt_bad" = 0 ] && [ "$reatt" -gt 0 ]
ck soak-reattach-reverify $? "$reatt_bad of $reatt re-verifies after detach/attach failed"
[ "$ipbad" = 0 ]
ck soak-iperf3 $? "$ipbad of $cycles iperf3 runs failed"
lab_wait 60 sh -c "! xenstore-ls /local/domain/$DD/backend 2>/dev/null | grep -q state"
ck soak-no-stale-backends $? "no backend state node left in the driver domain"
# The stats are rewritten within 5 s of a change.
lab_wait 60 sh -c "xenstore-read $W | grep -q '\"gntdev_pages\":0,'"
ck soak-no-grants-mapped $? "$(xenstore-read $W)"
lab_wait 30 sh -c "[ \"\$(xenstore-read $W | sed -n 's/.*\"fds\":\([0-9]*\).*/\1/p')\" = $b_fds ]"
ck soak-fds-baseline $? "fds baseline $b_fds, now $(xenstore-read $W | num fds)"
lab_wait 30 sh -c "[ \"\$(xenstore-read $W | sed -n 's/.*\"goroutines\":\([0-9]*\).*/\1/p')\" = $b_gor ]"
ck soak-goroutines-baseline $? "goroutines baseline $b_gor, now $(xenstore-read $W | num goroutines)"
[ "$(grep -c 'msg="worker started"' "$DDLOG")" = 1 ]
ck soak-worker-not-restarted $? "$(grep -c 'msg="worker started"' "$DDLOG") worker start(s)"
`)
	return b.String()
}

func (k Soak) guestList() string {
	var gs []string
	for i := 1; i <= k.Guests; i++ {
		gs = append(gs, k.guestName(i))
	}
	return strings.Join(gs, " ")
}
