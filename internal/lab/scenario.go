package lab

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Backends a driver domain can be told to use (drvdom.backend= on its
// kernel command line).
const (
	BackendKernel = "kernel" // Linux xen-blkback/xen-netback; hotplug by a script or drvdomd
	BackendDrvdom = "drvdom" // drvdomd serves the devices itself
)

// Lab wiring: names, addresses and devices every scenario uses.
const (
	DrvdomName  = "drvdom"
	GuestName   = "guest"
	Dom0IP      = "169.254.0.1"
	GuestIP     = "169.254.0.2"
	DrvdomIP    = "169.254.0.3"
	GuestMAC    = "00:16:3e:4c:00:02"
	Bridge      = "xenbr0"
	GuestVdev   = "xvdb"
	NVMeTarget  = "/dev/nvme0n1"
	ShellDDMem  = 768 // MB: the 153 MB uncompressed ramdisk and its unpacked copy fit (LAB-NOTES: 245 MB gzip rootfs needed 1200)
	ImageDDMem  = 512 // MB: a u-root image is ~5 MB
	GuestMemMB  = 768
	defaultWait = 300 // s, dom0's wait for a domain's marker
)

// The e2e scenario's extra wiring (Scenario.E2E): a second guest with only
// a vif on the same bridge, and three more disks for the first guest.
const (
	Guest2Name = "guest2"
	Guest2IP   = "169.254.0.4"
	Guest2MAC  = "00:16:3e:4c:00:04"
	// E2EVCPUs is the driver domain's and the first guest's vCPU count:
	// 2, so that blkfront and netfront ask for 2 queues and the backends
	// (which offer as many as the driver domain has CPUs) grant them.
	E2EVCPUs = 2
	// NVMe4KTarget is the NVMe's namespace 2 (4096-byte sectors).
	NVMe4KTarget = "/dev/nvme0n2"
	// ScratchDir holds the file backings, in the driver domain's tmpfs;
	// drvdomd (scratch=) or the shell init creates them sparse at boot.
	ScratchDir = "/run/drvdom/scratch"
	FileTarget = ScratchDir + "/file.img" // rw file backing: fio, discard
	ROTarget   = ScratchDir + "/ro.img"   // served read-only
	// FileScratchKey is where dom0 reads file.img's allocated bytes:
	// /local/domain/<dd>/data/scratch/<key> (drvdomd's scratchKeyName).
	FileScratchKey = "file_img"
	FileVdev       = "xvdc"
	NVMe4KVdev     = "xvdd"
	ROVdev         = "xvde"
)

// E2EScratch is the driver domain's scratch= value in the e2e scenario.
var E2EScratch = FileTarget + ":128M," + ROTarget + ":16M"

// Scenario is what one boot does. The zero value (plus Backend) boots the
// shell driver domain and a guest that runs nothing.
type Scenario struct {
	Backend string // BackendKernel or BackendDrvdom
	// DrvdomImage, if set, is the driver domain's ramdisk (a cpio, optionally
	// gzipped, e.g. from `make initramfs`) instead of the shell rootfs.
	DrvdomImage  string
	DrvdomScript string // run in the driver domain before it reports ready
	GuestScript  string // run with bash in the guest once its devices are up
	NoGuest      bool
	E2E          bool   // dom0 detaches/re-attaches the guest's devices on the guest's cue
	DiskTarget   string // the guest disk's path inside the driver domain (default /dev/nvme0n1)
	// GuestTimeout bounds the guest script (dom0 gives up after it).
	GuestTimeout time.Duration
	// Drvdomd, if set, is a drvdomd binary put in the shell driver domain
	// as /lab/drvdomd: it serves drvdom.backend=drvdom, and with
	// KernelHotplug=HotplugDrvdomd also does the kernel backends' hotplug.
	Drvdomd       string
	KernelHotplug string // HotplugScript (default) or HotplugDrvdomd
	// DrvdomReady is the console text dom0 waits for before it creates the
	// guest; default ReadyShell for the shell driver domain, ReadyImage
	// for an image.
	DrvdomReady string
	// DrvdomArgs is appended to the driver domain's kernel command line
	// (e.g. "drvdom.loglevel=debug").
	DrvdomArgs string
	// GuestArgs is appended to the guest's kernel command line (e.g.
	// "xen_blkfront.max_indirect_segments=256").
	GuestArgs string
	// Dom0Phase, if set, is dom0's shell code run once the guest is ready
	// (after E2E's detach/attach, if any) and before dom0 waits for the
	// guest script's end: fault injection and the like. It runs in dom0.sh
	// with $DD (driver domain id), $GID (guest id), $DDLOG, $GLOG and ck.
	Dom0Phase string
}

// Who does the kernel backends' hotplug in the shell driver domain.
const (
	HotplugScript  = "script"  // /lab/hotplug.sh
	HotplugDrvdomd = "drvdomd" // drvdomd's kernel mode
)

// Readiness lines dom0 waits for in the driver domain's console. An image
// may print ReadyShell itself (exactly "@@LAB READY drvdom@@" on a line of
// its own) once its backends watch xenstore; otherwise dom0 waits for
// drvdomd's log line naming the domain, printed just before it serves.
const (
	ReadyShell = "@@LAB READY drvdom"
	ReadyImage = `msg="driver domain"`
)

func (s Scenario) readyPattern() string {
	switch {
	case s.DrvdomReady != "":
		return s.DrvdomReady
	case s.DrvdomImage != "":
		return ReadyImage
	}
	return ReadyShell
}

// DrvdomKind names the driver domain's image kind.
func (s Scenario) DrvdomKind() string {
	if s.DrvdomImage != "" {
		return "image"
	}
	return "shell"
}

func (s Scenario) target() string {
	if s.DiskTarget != "" {
		return s.DiskTarget
	}
	return NVMeTarget
}

// DrvdomConfig is the driver domain's xl config (paths as dom0 sees them).
func (s Scenario) DrvdomConfig() DomainConfig {
	mem := ShellDDMem
	if s.DrvdomImage != "" {
		mem = ImageDDMem
	}
	vcpus, scratch := 1, ""
	if s.E2E {
		vcpus, scratch = E2EVCPUs, "drvdom.scratch="+E2EScratch
	}
	return DomainConfig{
		Name: DrvdomName, Kernel: "/tmp/img/vmlinux", Ramdisk: "/tmp/img/drvdom.img",
		Extra:    strings.Join(strings.Fields("console=hvc0 lab.role=drvdom drvdom.backend="+s.Backend+" "+s.hotplugArg()+" "+scratch+" "+s.DrvdomArgs), " "),
		MemoryMB: mem, VCPUs: vcpus, DriverDomain: true, PCI: []string{NVMeBDF, DDNicBDF},
	}
}

func (s Scenario) hotplugArg() string {
	if s.KernelHotplug != "" && s.KernelHotplug != HotplugScript {
		return "lab.hotplug=" + s.KernelHotplug
	}
	return ""
}

// GuestConfig is the guest's xl config: disk and NIC served by the driver domain.
// In the e2e scenario it has 2 vCPUs, three more disks (the driver domain's
// tmpfs file, the NVMe's 4 KiB-sector namespace, a read-only file) and is
// rebuilt by xl when it reboots.
func (s Scenario) GuestConfig() DomainConfig {
	c := DomainConfig{
		Name: GuestName, Kernel: "/tmp/img/vmlinux", Ramdisk: "/tmp/img/guest.img",
		Extra:    strings.Join(strings.Fields("console=hvc0 lab.role=guest lab.ip="+GuestIP+" "+s.GuestArgs), " "),
		MemoryMB: GuestMemMB, VCPUs: 1,
		Disks: []string{DiskSpec(GuestVdev, DrvdomName, s.target())},
		VIFs:  []string{VIFSpec(DrvdomName, Bridge, GuestMAC)},
	}
	if s.E2E {
		c.VCPUs, c.OnReboot = E2EVCPUs, "restart"
		c.Disks = append(c.Disks, DiskSpec(FileVdev, DrvdomName, FileTarget), DiskSpec(NVMe4KVdev, DrvdomName, NVMe4KTarget),
			DiskSpecAccess(ROVdev, DrvdomName, ROTarget, "ro"))
	}
	return c
}

// Guest2Config is the e2e scenario's second guest: a vif on the same
// bridge and no disk; it runs /lab/guest2.sh.
func (s Scenario) Guest2Config() DomainConfig {
	return DomainConfig{
		Name: Guest2Name, Kernel: "/tmp/img/vmlinux", Ramdisk: "/tmp/img/guest.img",
		Extra:    "console=hvc0 lab.role=guest lab.ip=" + Guest2IP + " lab.disk=none lab.script=guest2.sh",
		MemoryMB: GuestMemMB, VCPUs: 1,
		VIFs: []string{VIFSpec(DrvdomName, Bridge, Guest2MAC)},
	}
}

// Dom0Script returns /lab/dom0.sh: assign the devices, bring up dom0's NIC
// and iperf3 server, start the driver domain, then the guest, follow the
// guest's cues (E2E), and check that nothing stale is left behind.
func (s Scenario) Dom0Script() string {
	gwait := int(s.GuestTimeout / time.Second)
	if gwait <= 0 {
		gwait = 600
	}
	var b strings.Builder
	fmt.Fprintf(&b, `set -u
. /lab/lib.sh
fails=0
ck() { lab_check "$@" || fails=$((fails + 1)); }
dump() { xenstore-ls -fp > /lab/xenstore.txt 2>&1; xl list > /lab/xl-list.txt 2>&1; }
# fail_domain NAME WHY: the run cannot go on because domain NAME failed.
fail_domain() { lab_mark "FAILED-DOMAIN $1 $2"; dump; xl list; exit 1; }
DDLOG=/lab/console/guest-%[1]s.log
GLOG=/lab/console/guest-%[2]s.log
lab_t dom0-script
modprobe xen-pciback
xl pci-assignable-add %[3]s
ck dom0-assign-nvme $? %[3]s
xl pci-assignable-add %[4]s
ck dom0-assign-nic $? %[4]s
modprobe e1000
lab_wait 20 ls /sys/bus/pci/devices/%[5]s/net
nic=$(ls /sys/bus/pci/devices/%[5]s/net | head -1)
ip link set lo up
ip addr add %[6]s/16 dev "$nic"
ip link set "$nic" up
iperf3 -s -D -B %[6]s --logfile /tmp/iperf3-server.log
# libxenguest mmaps the kernel and ramdisk: over 9p that crawls, so copy them.
mkdir -p /tmp/img
cp /lab/vmlinux /lab/drvdom.img /lab/guest.img /tmp/img/ || fail_domain dom0 "cannot copy images from /lab"
lab_t images-copied
timeout 300 xl -vvv create /lab/drvdom.cfg 2>/lab/xl-create-drvdom.log || fail_domain %[1]s "xl create failed"
lab_t drvdom-created
DD=$(xl domid %[1]s)
lab_wait_log "$DDLOG" '%[8]s' %[7]d || fail_domain %[1]s "not ready after %[7]ds (waited for: %[8]s)"
lab_t drvdom-ready
%[9]s`, DrvdomName, GuestName, NVMeBDF, DDNicBDF, Dom0NicBD, Dom0IP, defaultWait, s.readyPattern(), s.imagePassthroughChecks())
	if !s.NoGuest {
		fmt.Fprintf(&b, `timeout 300 xl -vvv create /lab/guest.cfg 2>/lab/xl-create-guest.log || fail_domain %[1]s "xl create failed"
lab_t guest-created
GID=$(xl domid %[1]s)
lab_wait_log "$GLOG" "@@LAB READY guest" %[2]d || fail_domain %[1]s "no READY marker after %[2]ds"
lab_t guest-ready
`, GuestName, defaultWait)
		if s.E2E {
			b.WriteString(s.e2eDom0Before(gwait))
			fmt.Fprintf(&b, `cue block-detach %[2]d || fail_domain %[1]s "no block-detach cue"
timeout 120 xl -vvv block-detach %[1]s %[3]s 2>/lab/xl-block-detach.log
ck dom0-block-detach $? "xl block-detach %[1]s %[3]s"
pidof xenstored >/dev/null || lab_mark "xenstored died during block-detach"
tail -c 4000000 /tmp/xenstored-trace.log > /lab/xenstored-trace-detach.log 2>/dev/null
lab_wait 30 sh -c "! xenstore-read /local/domain/$DD/backend/vbd/$GID/51728/state"
ck drvdom-vbd-backend-removed $? "/local/domain/$DD/backend/vbd/$GID/51728"
# Attach only once the guest saw the disk go, so the check cannot race.
lab_wait_log "$GLOG" "@@LAB CHECK guest-block-detached" 90
timeout 120 xl -vvv block-attach %[1]s '%[4]s' 2>/lab/xl-block-attach.log
ck dom0-block-attach $? "xl block-attach"
cue network-detach %[2]d || fail_domain %[1]s "no network-detach cue"
timeout 120 xl -vvv network-detach %[1]s 0 2>/lab/xl-network-detach.log
ck dom0-network-detach $? "xl network-detach %[1]s 0"
lab_wait 30 sh -c "! xenstore-read /local/domain/$DD/backend/vif/$GID/0/state"
ck drvdom-vif-backend-removed $? "/local/domain/$DD/backend/vif/$GID/0"
lab_wait_log "$GLOG" "@@LAB CHECK guest-nic-detached" 90
timeout 120 xl -vvv network-attach %[1]s %[5]s 2>/lab/xl-network-attach.log
ck dom0-network-attach $? "xl network-attach %[1]s %[5]s"
`, GuestName, defaultWait, GuestVdev, DiskSpec(GuestVdev, DrvdomName, s.target()),
				// xl network-attach takes one key=value per argument, unlike
				// block-attach's single disk spec.
				strings.ReplaceAll(VIFSpec(DrvdomName, Bridge, GuestMAC), ",", " "))
			b.WriteString(e2eDom0Reboot)
		}
		b.WriteString(s.Dom0Phase)
		fmt.Fprintf(&b, `lab_wait_log "$GLOG" "@@LAB END guest.sh" %[2]d || fail_domain %[1]s "guest script did not finish in %[2]ds"
lab_wait 60 sh -c "! xl domid %[1]s"
ck guest-shutdown $? "domain %[1]s gone after poweroff"
lab_wait 30 sh -c "! { xenstore-list /local/domain/$DD/backend/vbd 2>/dev/null; xenstore-list /local/domain/$DD/backend/vif 2>/dev/null; } | grep -qx $GID"
ck drvdom-no-stale-backends $? "no backend/*/$GID left in the driver domain"
`, GuestName, gwait)
		if s.E2E {
			b.WriteString(e2eDom0After)
		}
	}
	b.WriteString(`xl list
[ "$fails" = 0 ] || dump
lab_t dom0-done
exit "$fails"
`)
	return b.String()
}

// e2eDom0Before is dom0's part of the e2e scenario between the guest's
// READY and its block-detach cue: the second guest, the sampler of the file
// backing's allocation, the discard check, and the checks only drvdom's
// backends can pass (they read drvdomd's log and statistics).
func (s Scenario) e2eDom0Before(gwait int) string {
	r := strings.NewReplacer("@G2@", Guest2Name, "@KEY@", FileScratchKey, "@GWAIT@", fmt.Sprint(gwait), "@GUEST@", GuestName)
	out := r.Replace(`GID0=$GID
G2LOG=/lab/console/guest-@G2@.log
timeout 300 xl -vvv create /lab/@G2@.cfg 2>/lab/xl-create-@G2@.log
ck dom0-create-guest2 $? "xl create @G2@ (a vif on the same bridge, no disk)"
G2ID=$(xl domid @G2@ 2>/dev/null)
# run_until SECONDS CMD...: like lab_wait, for shell functions.
run_until() {
	t=$(( $1 * 2 )); shift
	while [ "$t" -gt 0 ]; do "$@" && return 0; sleep 0.5; t=$((t - 1)); done
	return 1
}
# cue NAME SECONDS: wait for the guest's PHASE NAME; fails at once if the
# guest's script ended instead (it failed before giving the cue).
cue() {
	t=$(( $2 * 2 ))
	while [ "$t" -gt 0 ]; do
		grep -q "@@LAB PHASE $1@@" "$GLOG" && return 0
		grep -q "@@LAB END guest.sh" "$GLOG" && return 1
		sleep 0.5; t=$((t - 1))
	done
	return 1
}
# The file backing's allocated bytes, as the driver domain publishes them
# (drvdomd scratch=), sampled every second while the guest writes.
SCR=/local/domain/$DD/data/scratch/@KEY@
( while :; do timeout 10 xenstore-read "$SCR" 2>/dev/null; sleep 1; done > /tmp/alloc.log ) &
SAMPLER=$!
cue discarded @GWAIT@ || fail_domain @GUEST@ "no discarded cue"
max=$(sort -n /tmp/alloc.log | tail -1)
holes() { v=$(timeout 10 xenstore-read "$SCR") && [ "$v" -lt 4194304 ]; }
run_until 30 holes
r=$?
[ "${max:-0}" -ge 16777216 ] || r=1
ck dom0-file-discard-holes $r "file.img allocated ${max:-?} B at most while the guest wrote, $(timeout 10 xenstore-read "$SCR") B after its blkdiscard"
`)
	if s.Backend == BackendDrvdom {
		out += `# drvdom only: netback's own statistics (tx_gso: TSO frames the guest sent)
# and drvdomd's log.
vifstat() { timeout 10 xenstore-read /local/domain/$DD/backend/vif/$GID/0/drvdom-stats 2>/dev/null; }
gso_seen() {
	st=$(vifstat) || return 1
	g=$(echo "$st" | sed -n 's/.*"tx_gso":\([0-9]*\).*/\1/p')
	[ -n "$g" ] && [ "$g" -gt 0 ]
}
run_until 20 gso_seen
ck drvdom-vif-gso-stats $? "netback stats: $(vifstat)"
grep -q 'msg="vif connected".* dev="vif '"$GID"'/0" queues=2 ' "$DDLOG"
ck drvdom-vif-2-queues $? "drvdomd: vif $GID/0 connected with 2 queues"
grep -q 'msg="blkback: connected".* dev="vbd '"$GID"'/51728" queues=2 ' "$DDLOG"
ck drvdom-vbd-2-queues $? "drvdomd: vbd $GID/51728 connected with 2 queues"
`
	}
	return out
}

// e2eDom0Reboot follows the guest's reboot: xl builds it again under a new
// id (on_reboot="restart"); the old id's backends must go.
const e2eDom0Reboot = `cue reboot 300 || fail_domain guest "no reboot cue"
lab_t guest-reboot
# The second boot's READY follows the last reboot cue (or the first boot
# ended its script instead of rebooting).
rebooted() { awk '/@@LAB PHASE reboot@@/{f=0} /@@LAB READY guest@@/{f=1} END{exit !f}' "$GLOG"; }
rebooted_or_ended() { rebooted || grep -q "@@LAB END guest.sh" "$GLOG"; }
run_until 300 rebooted_or_ended
GID=$(xl domid guest 2>/dev/null)
rebooted && [ -n "$GID" ] && [ "$GID" != "$GID0" ]
ck dom0-guest-rebooted $? "guest READY again as domain ${GID:-none} (was $GID0)"
lab_t guest-ready-again
lab_wait 60 sh -c "! { xenstore-list /local/domain/$DD/backend/vbd 2>/dev/null; xenstore-list /local/domain/$DD/backend/vif 2>/dev/null; } | grep -qx $GID0"
ck drvdom-reboot-old-backends-removed $? "no backend/*/$GID0 left after the reboot"
`

// e2eDom0After: the second guest's end, and nothing left of any guest.
const e2eDom0After = `lab_wait_log "$G2LOG" "@@LAB END guest2.sh" 300
lab_wait 60 sh -c "! xl domid guest2"
ck guest2-shutdown $? "domain guest2 gone after poweroff"
lab_wait 30 sh -c "! { xenstore-list /local/domain/$DD/backend/vbd 2>/dev/null; xenstore-list /local/domain/$DD/backend/vif 2>/dev/null; } | grep -qxE '$GID0|${G2ID:-none}'"
ck drvdom-no-stale-backends-all $? "no backend of guest ($GID0 before its reboot) or guest2 (${G2ID:-none}) left"
kill $SAMPLER 2>/dev/null
cp /var/log/xen/xl-guest*.log /lab/ 2>/dev/null
`

// imagePassthroughChecks: the shell driver domain checks its passed-through
// devices itself; an image has no lab scripts, so dom0 reads drvdomd's boot
// inventory on its console (printed before the ready line).
func (s Scenario) imagePassthroughChecks() string {
	if s.DrvdomImage == "" {
		return ""
	}
	return `grep -q 'msg="block device" name=nvme0n1 ' "$DDLOG"
ck drvdom-nvme-passthrough $? "drvdomd lists nvme0n1"
grep -q 'msg="NIC in bridge" nic=eth0 ' "$DDLOG"
ck drvdom-nic-passthrough $? "drvdomd put eth0 in the bridge"
grep -q 'msg="block device" name=nvme0n2 .*logical_block=4096 ' "$DDLOG"
ck drvdom-nvme-4k-namespace $? "drvdomd lists nvme0n2 with 4096-byte blocks"
`
}

// Prepare writes everything the boot needs into the run directory out:
// dom0's scripts, the xl configs, the kernel and the two domU ramdisks
// (shared rootfs or the given image, each followed by a per-run cpio that
// carries /lab).
func (s Scenario) Prepare(a *Artifacts, out string) error {
	if s.Backend == "" {
		s.Backend = BackendKernel
	}
	files := map[string]string{
		"lib.sh":       LibSh,
		"init-dom0.sh": InitDom0,
		"dom0.sh":      s.Dom0Script(),
		"drvdom.cfg":   s.DrvdomConfig().Render(),
		"guest.cfg":    s.GuestConfig().Render(),
	}
	if s.E2E {
		files[Guest2Name+".cfg"] = s.Guest2Config().Render()
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(out, name), []byte(text), 0o755); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	if err := linkOrCopy(a.Vmlinux, filepath.Join(out, "vmlinux")); err != nil {
		return err
	}
	ddFiles := map[string]string{"lib.sh": LibSh, "init-drvdom.sh": InitDrvdom, "hotplug.sh": HotplugSh}
	if s.DrvdomScript != "" {
		ddFiles["drvdom.sh"] = s.DrvdomScript
	}
	if s.Drvdomd != "" && s.DrvdomImage == "" {
		b, err := os.ReadFile(s.Drvdomd)
		if err != nil {
			return fmt.Errorf("lab: drvdomd: %w", err)
		}
		ddFiles["drvdomd"] = string(b)
	}
	ddBase, ddMods := a.Initrd, ""
	if s.DrvdomImage != "" {
		ddBase, ddMods = s.DrvdomImage, a.Modules[RoleDrvdom]
	}
	if err := writeRamdisk(filepath.Join(out, "drvdom.img"), ddBase, ddFiles, ddMods); err != nil {
		return err
	}
	gFiles := map[string]string{"lib.sh": LibSh, "init-guest.sh": InitGuest}
	if s.GuestScript != "" {
		gFiles["guest.sh"] = s.GuestScript
	}
	if s.E2E {
		gFiles["guest2.sh"] = Guest2E2EScript
	}
	return writeRamdisk(filepath.Join(out, "guest.img"), a.Initrd, gFiles, "")
}

// RunDirFiles are the large per-run files Cleanup removes unless kept.
var RunDirFiles = []string{"vmlinux", "drvdom.img", "guest.img", "nvme.img", NVMe4KImageName}

// Cleanup removes the run directory's large files.
func Cleanup(out string) {
	for _, f := range RunDirFiles {
		os.Remove(filepath.Join(out, f))
	}
}

// LabCpio returns an uncompressed cpio holding files under lab/ (mode
// 0755) and, if modules is set, its lib/modules tree (for images that bring
// no modules of their own).
func LabCpio(files map[string]string, modules string) ([]byte, error) {
	var buf bytes.Buffer
	w := NewCpioWriter(&buf, false)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := w.AddFile("lab/"+n, 0o755, []byte(files[n])); err != nil {
			return nil, err
		}
	}
	if modules != "" {
		if err := w.AddTree(filepath.Join(modules, "lib", "modules"), "lib/modules"); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeRamdisk writes LabCpio(files, modules) followed by base to dst.
// The small archive goes first and uncompressed: libxenguest gunzips a
// ramdisk that starts with gzip magic, trusting the size in its last four
// bytes, which fails for concatenated gzip members; one that starts with a
// plain cpio is loaded as is, and the kernel unpacks both archives.
func writeRamdisk(dst, base string, files map[string]string, modules string) error {
	extra, err := LabCpio(files, modules)
	if err != nil {
		return err
	}
	os.Remove(dst)
	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("lab: ramdisk: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(extra); err != nil {
		return fmt.Errorf("lab: ramdisk: %w", err)
	}
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("lab: ramdisk %s: %w", filepath.Base(dst), err)
	}
	defer in.Close()
	if _, err := io.Copy(f, in); err != nil {
		return fmt.Errorf("lab: ramdisk %s: %w", filepath.Base(dst), err)
	}
	return f.Close()
}

func linkOrCopy(src, dst string) error {
	os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return copyFile(src, dst)
}
