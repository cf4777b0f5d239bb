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

// GuestE2EScript is the guest's half of `xenlab e2e`. It cues dom0 with
// PHASE markers and checks, from inside, what dom0's detach/attach did.
var GuestE2EScript = `. /lab/lib.sh
` + verifyJob + ` --output=/tmp/fio-verify.json
lab_check guest-fio-verify $? "crc32c randwrite+verify 32 MiB"
lab_put fio-verify.json /tmp/fio-verify.json
lab_wait 30 ping -c1 -W1 ` + Dom0IP + `
lab_check guest-ping-dom0 $? "` + Dom0IP + `"
iperf3 -c ` + Dom0IP + ` -t 5 -J > /tmp/iperf3.json
lab_check guest-iperf3 $? "5 s to dom0"
lab_put iperf3-guest.json /tmp/iperf3.json
lab_mark "PHASE block-detach"
lab_wait 60 sh -c '! test -b /dev/xvdb'
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
exit 0
`

// E2EChecks are the checks an e2e boot must report; one that no log
// mentions counts as failed.
var E2EChecks = []string{
	"dom0-assign-nvme", "dom0-assign-nic",
	"drvdom-nvme-passthrough", "drvdom-nic-passthrough",
	"guest-sees-disk", "guest-sees-nic",
	"guest-fio-verify", "guest-ping-dom0", "guest-iperf3",
	"dom0-block-detach", "drvdom-vbd-backend-removed", "guest-block-detached",
	"dom0-block-attach", "guest-block-reattached", "guest-data-survives-reattach",
	"dom0-network-detach", "drvdom-vif-backend-removed", "guest-nic-detached",
	"dom0-network-attach", "guest-nic-reattached",
	"guest-shutdown", "drvdom-no-stale-backends",
}
