package lab

import "fmt"

// FioRandRead is the lab's standard disk figure: 4k random read, QD16,
// libaio, O_DIRECT, 10 s, JSON output to OUT.
func FioRandRead(name, dev, out string) string {
	return fmt.Sprintf("fio --name=%s --filename=%s --rw=randread --bs=4k --iodepth=16 --ioengine=libaio --direct=1 --runtime=10 --time_based --output-format=json --eta=never --output=%s", name, dev, out)
}

// GuestBenchScript is the guest's job in `xenlab run`: fio through the
// driver domain's blkback, then iperf3 to dom0 through its netback, the
// bridge and the passed-through NIC.
var GuestBenchScript = `. /lab/lib.sh
` + FioRandRead("guest-randread", "/dev/xvdb", "/tmp/fio.json") + `
r=$?
lab_put fio-guest.json /tmp/fio.json
lab_check guest-fio $r "4k randread QD16 10s on xvdb"
lab_wait 30 ping -c1 -W1 ` + Dom0IP + `
lab_check guest-ping-dom0 $? ` + Dom0IP + `
iperf3 -c ` + Dom0IP + ` -t 5 -J > /tmp/iperf3.json
r2=$?
lab_put iperf3-guest.json /tmp/iperf3.json
lab_check guest-iperf3 $r2 "5 s to dom0"
exit $((r | r2))
`

// DrvdomBaselineScript measures the device limit: the same fio inside the
// driver domain on the passed-through disk (target), so that the guest's
// figure can be read as a ratio measured in the same boot.
func DrvdomBaselineScript(target string) string {
	if target == "" {
		target = NVMeTarget
	}
	return `. /lab/lib.sh
if [ -b ` + target + ` ]; then
` + FioRandRead("drvdom-randread", target, "/tmp/fio.json") + `
r=$?
lab_put fio-drvdom.json /tmp/fio.json
lab_check drvdom-fio-baseline $r "4k randread QD16 10s on ` + target + `"
fi
`
}

// verifyJob is the fio job of the data-integrity check; the same job with
// --verify_only re-reads and checks what it wrote.
const verifyJob = "fio --name=verify --filename=/dev/xvdb --rw=randwrite --bs=4k --size=32M --ioengine=libaio --iodepth=16 --direct=1 --verify=crc32c --randseed=42 --output-format=json --eta=never"

// fioVerifyFn is the guest's fv function: one fio write+verify job,
// fv NAME DEV RW BS QD SIZE, reported as check guest-fio-NAME.
const fioVerifyFn = `fv() {
	fio --name=$1 --filename=$2 --rw=$3 --bs=$4 --iodepth=$5 --size=$6 --ioengine=libaio --direct=1 \
		--verify=crc32c --verify_fatal=1 --randseed=7 --output-format=json --eta=never --output=/tmp/fv-$1.json
	r=$?
	[ $r = 0 ] || tail -c 2000 /tmp/fv-$1.json
	lab_check guest-fio-$1 $r "crc32c $3 bs=$4 QD$5 $6 on $2"
}
`

// GuestE2EScript is the guest's half of `xenlab e2e`. It cues dom0 with
// PHASE markers (dom0 follows them in this order: discarded, block-detach,
// network-detach, reboot) and checks from inside what the backends and
// dom0's detach/attach did. It runs on two boots: the first ends with a
// reboot (xl builds the guest again, on_reboot="restart"); the second finds
// the marker the first left on the 4 KiB-sector disk's ext4 and checks that
// everything came back.
var GuestE2EScript = `. /lab/lib.sh
` + fioVerifyFn + `all_disks='for d in xvdb xvdc xvdd xvde; do test -b /dev/$d || exit 1; done'
mkdir -p /mnt/d
modprobe ext4
boot=1
if mount -o ro /dev/xvdd /mnt/d 2>/dev/null; then
	[ -f /mnt/d/lab-marker ] && boot=2
	umount /mnt/d
fi
echo "guest.sh: boot $boot"
if [ $boot = 2 ]; then
	lab_wait 60 sh -c "$all_disks"
	lab_check guest-reboot-sees-all-disks $? "xvdb xvdc xvdd xvde after the reboot"
	mount /dev/xvdd /mnt/d && (cd /mnt/d && md5sum -c --quiet MD5SUMS)
	lab_check guest-reboot-ext4-intact $? "ext4 files written before the reboot"
	umount /mnt/d
	` + verifyJob + ` --verify_only --output=/tmp/fio-reboot.json
	lab_check guest-reboot-nvme-data $? "crc32c re-verify of xvdb after the reboot"
	lab_wait 60 ping -c1 -W1 ` + Dom0IP + `
	lab_check guest-reboot-ping-dom0 $? "link back after the reboot"
	exit 0
fi
lab_wait 60 sh -c "$all_disks"
lab_check guest-sees-all-disks $? "$(cd /sys/block && for d in xvd*; do echo -n "$d:$(cat $d/size)x512:lbs$(cat $d/queue/logical_block_size):ro$(cat $d/ro) "; done)"

# Network: dom0 and the second guest across the bridge.
lab_wait 30 ping -c1 -W1 ` + Dom0IP + `
lab_check guest-ping-dom0 $? "` + Dom0IP + `"
lab_wait 240 ping -c1 -W1 ` + Guest2IP + `
lab_check guest-ping-guest2 $? "` + Guest2IP + ` on the same bridge"
mtu=$(cat /sys/class/net/eth0/mtu)
[ "$mtu" = 1500 ]
lab_check guest-mtu-1500 $? "eth0 mtu $mtu"
nq=$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)
[ "$nq" = 2 ]
lab_check guest-nic-2-queues $? "eth0: $nq tx queues on $(nproc) vCPUs"
dq=$(ls /sys/block/xvdb/mq | wc -l)
[ "$dq" = 2 ]
lab_check guest-disk-2-queues $? "xvdb: $dq hardware queues"
p0=$(cat /sys/class/net/eth0/statistics/tx_packets); b0=$(cat /sys/class/net/eth0/statistics/tx_bytes)
iperf3 -c ` + Dom0IP + ` -t 5 -J > /tmp/iperf3.json
lab_check guest-iperf3 $? "TCP guest -> dom0, 5 s"
lab_put iperf3-guest.json /tmp/iperf3.json
p1=$(cat /sys/class/net/eth0/statistics/tx_packets); b1=$(cat /sys/class/net/eth0/statistics/tx_bytes)
avg=$(( (b1 - b0) / (p1 - p0 + 1) ))
[ "$avg" -gt 1514 ]
lab_check guest-gso-on $? "netfront handed the backend $avg-byte packets on average at mtu $mtu: GSO"
iperf3 -c ` + Dom0IP + ` -t 5 -R -J > /tmp/iperf3r.json
lab_check guest-iperf3-reverse $? "TCP dom0 -> guest (-R), 5 s"
lab_put iperf3-reverse.json /tmp/iperf3r.json

# Block, on the passed-through NVMe (xvdb) and on a file in the driver
# domain's tmpfs (xvdc).
` + FioRandRead("guest-randread", "/dev/xvdb", "/tmp/fio.json") + `
lab_check guest-fio-randread-qd16 $? "4k randread QD16 10 s on xvdb (the figure)"
lab_put fio-guest.json /tmp/fio.json
fv nvme-4k-rand-qd1 /dev/xvdb randwrite 4k 1 4M
fv nvme-4k-rand-qd32 /dev/xvdb randwrite 4k 32 8M
fv nvme-1m-seq-qd1 /dev/xvdb write 1M 1 16M
fv nvme-1m-seq-qd32 /dev/xvdb write 1M 32 32M
fv file-4k-rand-qd1 /dev/xvdc randwrite 4k 1 4M
fv file-4k-rand-qd32 /dev/xvdc randwrite 4k 32 8M
fv file-1m-seq-qd1 /dev/xvdc write 1M 1 16M
fv file-1m-seq-qd32 /dev/xvdc write 1M 32 32M
` + verifyJob + ` --output=/tmp/fio-verify.json
lab_check guest-fio-verify $? "crc32c randwrite+verify 32 MiB QD16 on xvdb (re-verified after detach and reboot)"
lab_put fio-verify.json /tmp/fio-verify.json
blkdiscard /dev/xvdc
lab_check guest-blkdiscard $? "blkdiscard xvdc ($(cat /sys/block/xvdc/queue/discard_max_bytes) B max per discard)"
lab_mark "PHASE discarded"

# The NVMe namespace with 4096-byte sectors (xvdd): verify, then ext4.
lbs=$(cat /sys/block/xvdd/queue/logical_block_size)
[ "$lbs" = 4096 ]
lab_check guest-4k-sector-size $? "xvdd logical_block_size $lbs"
fv 4k-disk-verify /dev/xvdd randwrite 4k 16 8M
mkfs.ext4 -q -F /dev/xvdd && mount /dev/xvdd /mnt/d && (
	cd /mnt/d && head -c 4194304 /dev/urandom > big && seq 1 100000 > seq.txt &&
	mkdir dir && echo hello > dir/small && md5sum big seq.txt dir/small > MD5SUMS && touch lab-marker
) && sync && umount /mnt/d
lab_check guest-ext4-write $? "mkfs.ext4, mount, write, sync, umount on xvdd"
mount /dev/xvdd /mnt/d && (cd /mnt/d && md5sum -c --quiet MD5SUMS)
lab_check guest-ext4-remount-intact $? "remount: files intact"
umount /mnt/d

# The read-only disk (xvde, mode r).
ro=$(blockdev --getro /dev/xvde)
[ "$ro" = 1 ]
lab_check guest-ro-getro $? "blockdev --getro xvde: $ro"
if dd if=/dev/zero of=/dev/xvde bs=4096 count=1 oflag=direct 2>/tmp/dd.err; then r=1; else r=0; fi
lab_check guest-ro-refuses-write $r "direct write: $(head -1 /tmp/dd.err)"

lab_mark "PHASE block-detach"
lab_wait 120 sh -c '! test -b /dev/xvdb'
lab_check guest-block-detached $? "xvdb gone"
lab_wait 90 test -b /dev/xvdb
lab_check guest-block-reattached $? "xvdb back"
` + verifyJob + ` --verify_only --output=/tmp/fio-reverify.json
lab_check guest-data-survives-reattach $? "crc32c re-verify after detach/attach"
lab_mark "PHASE network-detach"
lab_wait 60 sh -c '! ls /sys/class/net | grep -q ^eth'
lab_check guest-nic-detached $? "eth gone"
lab_wait 90 sh -c 'ls /sys/class/net | grep -q ^eth'
r=$?
nic=$(ls /sys/class/net | grep ^eth | head -1)
if [ -n "$nic" ]; then
	ip addr add ` + GuestIP + `/16 dev "$nic"
	ip link set "$nic" up
fi
lab_wait 30 ping -c1 -W1 ` + Dom0IP + `
lab_check guest-nic-reattached $((r | $?)) "$nic pings dom0 again"
if ! mount -o ro /dev/xvdd /mnt/d || ! test -f /mnt/d/lab-marker; then
	lab_check guest-reboot 1 "no marker on xvdd: not rebooting (the second boot could not tell itself apart)"
	exit 1
fi
umount /mnt/d
lab_mark "PHASE reboot"
sync
echo b > /proc/sysrq-trigger
sleep 60
`

// Guest2E2EScript is the second guest's job: reach the first guest across
// the bridge (and dom0), then stay up a little for the first guest's ping.
var Guest2E2EScript = `. /lab/lib.sh
lab_wait 300 ping -c1 -W1 ` + GuestIP + `
lab_check guest2-ping-guest $? "` + GuestIP + ` on the same bridge"
lab_wait 30 ping -c1 -W1 ` + Dom0IP + `
lab_check guest2-ping-dom0 $? "` + Dom0IP + `"
sleep 30
exit 0
`

// E2EChecks are the checks an e2e boot must report whatever the backend;
// one that no log mentions counts as failed.
var E2EChecks = []string{
	"dom0-assign-nvme", "dom0-assign-nic",
	"drvdom-nvme-passthrough", "drvdom-nic-passthrough", "drvdom-nvme-4k-namespace",
	"guest-sees-disk", "guest-sees-nic", "guest-sees-all-disks",
	// issue 5: link, both guests, queues, TCP both ways with GSO at mtu 1500
	"guest-ping-dom0", "dom0-create-guest2", "guest-ping-guest2", "guest2-ping-guest", "guest2-ping-dom0",
	"guest-mtu-1500", "guest-nic-2-queues", "guest-disk-2-queues",
	"guest-iperf3", "guest-gso-on", "guest-iperf3-reverse",
	// issue 4: fio crc32c on the NVMe and the file, QD1 and QD32, 4k random and 1M sequential
	"guest-fio-randread-qd16",
	"guest-fio-nvme-4k-rand-qd1", "guest-fio-nvme-4k-rand-qd32", "guest-fio-nvme-1m-seq-qd1", "guest-fio-nvme-1m-seq-qd32",
	"guest-fio-file-4k-rand-qd1", "guest-fio-file-4k-rand-qd32", "guest-fio-file-1m-seq-qd1", "guest-fio-file-1m-seq-qd32",
	"guest-fio-verify",
	"guest-blkdiscard", "dom0-file-discard-holes",
	"guest-4k-sector-size", "guest-fio-4k-disk-verify", "guest-ext4-write", "guest-ext4-remount-intact",
	"guest-ro-getro", "guest-ro-refuses-write",
	// detach and re-attach
	"dom0-block-detach", "drvdom-vbd-backend-removed", "guest-block-detached",
	"dom0-block-attach", "guest-block-reattached", "guest-data-survives-reattach",
	"dom0-network-detach", "drvdom-vif-backend-removed", "guest-nic-detached",
	"dom0-network-attach", "guest-nic-reattached",
	// guest reboot
	"dom0-guest-rebooted", "drvdom-reboot-old-backends-removed", "guest-reboot-sees-all-disks",
	"guest-reboot-ext4-intact", "guest-reboot-nvme-data", "guest-reboot-ping-dom0",
	// teardown
	"guest-shutdown", "drvdom-no-stale-backends", "guest2-shutdown", "drvdom-no-stale-backends-all",
}

// E2EDrvdomOnlyChecks are reported only with drvdom's backends: they read
// drvdomd's log and the statistics its backends publish, which the
// kernel's backends do not have (the guest-side checks above show the same
// things for both).
var E2EDrvdomOnlyChecks = []string{"drvdom-vif-gso-stats", "drvdom-vif-2-queues", "drvdom-vbd-2-queues"}

// E2EChecksFor returns the checks an e2e boot with backend must report,
// and those it cannot (listed in the summary, never silently dropped).
func E2EChecksFor(backend string) (expected, notApplicable []string) {
	expected = append([]string(nil), E2EChecks...)
	if backend == BackendDrvdom {
		return append(expected, E2EDrvdomOnlyChecks...), nil
	}
	return expected, append([]string(nil), E2EDrvdomOnlyChecks...)
}
