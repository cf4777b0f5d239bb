package lab

// The lab's shell, in three layers:
//   - BaseInit is /init in the shared rootfs ramdisk. It only picks the
//     domain's role and runs /lab/init-<role>.sh, so that nothing that
//     changes between runs is baked into the cached ramdisk.
//   - dom0 gets /lab over 9p (the host's run directory); driver domains and
//     guests get /lab from a small per-run cpio concatenated to the ramdisk.
//   - LibSh (/lab/lib.sh) gives every script the same markers, which the
//     host and dom0 parse from the consoles (see ParseMarkers).

// BaseInit is the rootfs ramdisk's /init.
func BaseInit() string {
	return `#!/bin/sh
# drvdom lab base init: lab.role= on the kernel command line (default dom0)
# selects /lab/init-<role>.sh, which comes with the run.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
role=dom0
for a in $(cat /proc/cmdline); do
	case "$a" in lab.role=*) role="${a#lab.role=}" ;; esac
done
if [ "$role" = dom0 ]; then
	for m in virtio_pci 9pnet_virtio 9p; do modprobe $m || echo "lab: modprobe $m failed"; done
	mkdir -p /lab
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 lab /lab || echo "lab: mount 9p failed"
fi
if [ -f "/lab/init-$role.sh" ]; then
	exec /bin/sh "/lab/init-$role.sh"
fi
echo "lab: no /lab/init-$role.sh, powering off"
echo o > /proc/sysrq-trigger
exec /bin/sh
`
}

// LibSh is /lab/lib.sh, sourced by every lab script (also by the scripts
// users pass with --guest-script/--drvdom-script, which may call its
// functions: lab_check NAME RC [DETAIL], lab_put NAME FILE).
const LibSh = `# drvdom lab helpers
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
lab_mark() { echo "@@LAB $*@@"; }
lab_t() { lab_mark "T $1 $(cut -d' ' -f1 /proc/uptime)"; }
# lab_check NAME RC [DETAIL...]: one pass/fail line the host collects.
lab_check() {
	n=$1; r=$2; shift 2
	if [ "$r" = 0 ]; then lab_mark "CHECK $n PASS $*"; else lab_mark "CHECK $n FAIL $*"; fi
	return "$r"
}
# lab_put NAME FILE: copy FILE to the host (as NAME in the run directory).
# With LAB_PUT_PACE set (the domUs: see domUCommon) and bash, FILE goes
# LAB_PUT_CHUNK bytes at a time with LAB_PUT_PACE seconds between them,
# by builtins only (a fork costs a PV domain tens of ms under TCG).
lab_put() {
	lab_mark "FILE $1"
	if [ -n "${LAB_PUT_PACE:-}" ] && [ -n "${BASH_VERSION:-}" ]; then
		_lab_f=${TMPDIR:-/tmp}/lab-pace.fifo
		[ -p "$_lab_f" ] || mkfifo "$_lab_f"
		while IFS= read -r -N "${LAB_PUT_CHUNK:-1024}" _lab_c || [ -n "$_lab_c" ]; do
			printf '%s' "$_lab_c"
			_lab_c=
			read -r -t "$LAB_PUT_PACE" _ <> "$_lab_f"
		done < "$2"
	else
		cat "$2"
	fi
	echo
	lab_mark "EOF $1"
}
# lab_wait SECONDS CMD...: run CMD (an external command, each try bounded
# to 10 s: a wedged xenstored must not hang the run) every 0.5 s until it
# succeeds.
lab_wait() {
	t=$(( $1 * 2 )); shift
	while [ "$t" -gt 0 ]; do
		timeout 10 "$@" >/dev/null 2>&1 && return 0
		sleep 0.5; t=$((t - 1))
	done
	return 1
}
# lab_run FILE LABEL: run FILE with bash between BEGIN/END markers; FILE
# can use these functions (bash sources BASH_ENV first).
lab_run() {
	lab_mark "BEGIN $2"
	BASH_ENV=/lab/lib.sh bash "$1" 2>&1
	r=$?
	lab_mark "END $2 rc=$r"
	return $r
}
lab_wait_log() { lab_wait "$3" grep -q -- "$2" "$1"; }
`

// domUCommon mounts what every domU script needs.
//
// A domU's console write holds its vCPU in the kernel (polling, nothing
// else scheduled) until dom0's xenconsoled has drained the 2 KiB ring, and now
// and then xenconsoled stops draining one for a minute. A driver domain
// sending a 60 KB file every 4-15 s with cat while its guest ran fio
// stalled on 2 of 19 sends (the 12th of one boot, the 7th of another),
// each time until Xen's watchdog destroyed it (no on_watchdog outside the
// fault scenarios), leaving its NVMe's interrupt line to nobody; paced as
// below, 59 sends in two boots, none stalled (about 4.5 s per 60 KB). This
// was the "NVMe INTx failure" of a third of stop 16's measuring boots,
// whose driver domains sent samples with cat. So a domU's lab_put is paced.
const domUCommon = `set -u
. /lab/lib.sh
export LAB_PUT_PACE=0.05 LAB_PUT_CHUNK=1024
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/sysrq
ip link set lo up
`

// InitDom0 is /lab/init-dom0.sh: the Xen toolstack, then /lab/dom0.sh
// (output on the console and in /lab/dom0.log, exit code in
// /lab/exit-code), then power off.
const InitDom0 = `set -u
. /lab/lib.sh
lab_t dom0-init
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/sysrq
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs; do
	modprobe $m || echo "lab: modprobe $m failed"
done
mount -t xenfs xenfs /proc/xen
mkdir -p /run/xen /run/xenstored /var/run/xen /var/lib/xen /var/lib/xenstored /var/log/xen /lab/console
# Traced to dom0's tmpfs (9p would slow every request): dom0.sh copies the
# trace into /lab after the device detaches and at the end.
xenstored --pid-file=/run/xenstored.pid -T /tmp/xenstored-trace.log
xen-init-dom0
xenconsoled --log=guest --log-dir=/lab/console
lab_t dom0-ready
( sh /lab/dom0.sh; echo $? > /lab/exit-code ) 2>&1 | tee /lab/dom0.log
echo "lab: dom0 script exit $(cat /lab/exit-code)"
tail -c 4000000 /tmp/xenstored-trace.log > /lab/xenstored-trace.log 2>/dev/null
sync
echo o > /proc/sysrq-trigger
sleep 60
`

// InitDrvdom is /lab/init-drvdom.sh for the shell-rootfs driver domain:
// passed-through NVMe and NIC, bridge xenbr0, optional /lab/drvdom.sh, then
// the backend named by drvdom.backend= (kernel: the kernel's blkback and
// netback plus /lab/hotplug.sh; drvdom: drvdomd if the image has it).
const InitDrvdom = domUCommon + `lab_t drvdom-init
backend=kernel
hotplug=script
scratch=""
for a in $(cat /proc/cmdline); do
	case "$a" in
	drvdom.backend=*) backend="${a#drvdom.backend=}" ;;
	lab.hotplug=*) hotplug="${a#lab.hotplug=}" ;;
	drvdom.scratch=*) scratch="${a#drvdom.scratch=}" ;;
	esac
done
[ -f /lab/drvdomd ] && ln -sf /lab/drvdomd /usr/local/bin/drvdomd
for m in xen-evtchn xen-gntdev xen-gntalloc xenfs xen-pcifront nvme e1000 loop bridge tun; do
	modprobe $m || echo "lab: modprobe $m failed"
done
# The kernel's backends only for drvdom.backend=kernel: loaded, they would
# claim every vbd/vif too and race drvdomd's userspace backends.
if [ "$backend" = kernel ]; then
	for m in xen-blkback xen-netback; do modprobe $m || echo "lab: modprobe $m failed"; done
fi
mount -t xenfs xenfs /proc/xen
lab_wait 60 test -b /dev/nvme0n1
lab_check drvdom-nvme-passthrough $? "/dev/nvme0n1"
if [ -n "$scratch" ]; then
	# drvdomd's scratch=PATH:SIZE,...: sparse files (never truncated), and
	# their allocated bytes under data/scratch for dom0.
	for item in $(echo "$scratch" | tr , ' '); do
		p=${item%%:*}
		mkdir -p "$(dirname "$p")"
		[ -e "$p" ] || truncate -s "${item#*:}" "$p"
	done
	(
		me=$(xenstore-read domid)
		while :; do
			for item in $(echo "$scratch" | tr , ' '); do
				p=${item%%:*}
				k=$(basename "$p" | tr -c 'A-Za-z0-9_\n-' _)
				xenstore-write "/local/domain/$me/data/scratch/$k" $(( $(stat -c %b "$p") * 512 ))
			done
			sleep 1
		done
	) &
fi
if [ -b /dev/nvme0n2 ]; then
	[ "$(cat /sys/block/nvme0n2/queue/logical_block_size)" = 4096 ]
	lab_check drvdom-nvme-4k-namespace $? "/dev/nvme0n2 $(cat /sys/block/nvme0n2/queue/logical_block_size) B blocks"
fi
lab_wait 60 test -e /sys/class/net/eth0
lab_check drvdom-nic-passthrough $? "eth0"
ip link add xenbr0 type bridge forward_delay 0 stp_state 0
ip link set eth0 master xenbr0
ip link set eth0 up
ip link set xenbr0 up
ip addr add 169.254.0.3/16 dev xenbr0
echo 4 > /proc/sys/kernel/printk
if [ -f /lab/drvdom.sh ]; then lab_run /lab/drvdom.sh drvdom.sh; fi
case "$backend" in
kernel)
	if [ "$hotplug" = drvdomd ] && command -v drvdomd >/dev/null; then
		drvdomd &
	elif [ "$hotplug" = devd ]; then
		mkdir -p /var/run/xen /var/log/xen /var/lib/xen
		# Xen's locking.sh stats /dev/stdin: without udev's links it
		# loops forever and libxl kills "block add" after 10 s.
		[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
		[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
		xl devd -F &
	else
		sh /lab/hotplug.sh &
	fi
	;;
drvdom)
	if command -v drvdomd >/dev/null; then
		drvdomd &
	else
		lab_check drvdom-backend 1 "drvdom.backend=drvdom but this driver domain has no drvdomd"
	fi
	;;
*)
	lab_check drvdom-backend 1 "unknown drvdom.backend=$backend"
	;;
esac
lab_t drvdom-ready
lab_mark "READY drvdom backend=$backend"
while :; do sleep 3600; done
`

// HotplugSh is /lab/hotplug.sh: in a driver domain with the kernel's
// backends, it does what xl devd and the block/vif-bridge scripts would:
// for a new vbd it resolves params (losetup when it is a file) and writes
// physical-device (hex major:minor) and hotplug-status=connected; for a new
// vif it enslaves vifF.N to the bridge and writes hotplug-status=connected;
// when a device is gone (online=0 and Closed, or its frontend vanished) it
// detaches the loop device and removes the backend directory, which is the
// driver domain's job (dom0's libxl removes only the frontend side).
const HotplugSh = `. /lab/lib.sh
me=$(xenstore-read domid)
base=/local/domain/$me/backend
mkdir -p /run/lab-hotplug
log() { echo "lab-hotplug: $*"; }
add_vbd() {
	d=$1; key=$2
	params=$(xenstore-read "$d/params" 2>/dev/null)
	dev=$params
	if [ -f "$params" ]; then
		dev=$(losetup -f --show "$params") || dev=""
		[ -n "$dev" ] && echo "$dev" > "/run/lab-hotplug/$key"
	fi
	if [ -z "$dev" ] || [ ! -b "$dev" ]; then
		xenstore-write "$d/hotplug-error" "lab-hotplug: $params: not a block device or file" "$d/hotplug-status" error
		log "$key: $params: not a block device or file"
		return
	fi
	mm=$(stat -L -c '%t:%T' "$dev")
	xenstore-write "$d/physical-device" "$mm" "$d/physical-device-path" "$dev" "$d/hotplug-status" connected
	log "$key: $params -> $dev ($mm) connected"
}
add_vif() {
	d=$1; key=$2; fe=$3; id=$4
	vif=vif$fe.$id
	lab_wait 10 test -e "/sys/class/net/$vif"
	br=$(xenstore-read "$d/bridge" 2>/dev/null) || br=xenbr0
	if ip link set "$vif" master "$br" && ip link set "$vif" up; then
		xenstore-write "$d/hotplug-status" connected
		log "$key: $vif on $br connected"
	else
		xenstore-write "$d/hotplug-error" "lab-hotplug: cannot bridge $vif" "$d/hotplug-status" error
	fi
}
remove() {
	d=$1; key=$2; type=$3; fe=$4; id=$5
	# netback frees vifF.N asynchronously: a device re-attached with the
	# same id before it is gone fails to create its interface.
	if [ "$type" = vif ]; then
		lab_wait 20 sh -c "! test -e /sys/class/net/vif$fe.$id"
	fi
	if [ -f "/run/lab-hotplug/$key" ]; then
		losetup -d "$(cat "/run/lab-hotplug/$key")"
		rm -f "/run/lab-hotplug/$key"
	fi
	xenstore-rm "$d"
	log "$key: removed"
}
scan() {
	for type in vbd vif; do
		for fe in $(xenstore-list "$base/$type" 2>/dev/null); do
			for id in $(xenstore-list "$base/$type/$fe" 2>/dev/null); do
				d=$base/$type/$fe/$id; key=$type-$fe-$id
				online=$(xenstore-read "$d/online" 2>/dev/null) || online=""
				state=$(xenstore-read "$d/state" 2>/dev/null) || state=""
				hs=$(xenstore-read "$d/hotplug-status" 2>/dev/null) || hs=""
				fpath=$(xenstore-read "$d/frontend" 2>/dev/null) || fpath=""
				gone=0
				if [ -n "$fpath" ] && ! xenstore-read "$fpath/state" >/dev/null 2>&1; then gone=1; fi
				if [ "$online" = 1 ] && [ -z "$hs" ] && [ "$gone" = 0 ]; then
					add_$type "$d" "$key" "$fe" "$id"
				elif [ "$online" = 0 ] && [ "$state" = 6 ]; then
					remove "$d" "$key" "$type" "$fe" "$id"
				elif [ "$gone" = 1 ] && [ -n "$state" ] && [ "$state" != 1 ]; then
					remove "$d" "$key" "$type" "$fe" "$id"
				fi
			done
			if [ -z "$(xenstore-list "$base/$type/$fe" 2>/dev/null)" ]; then
				xenstore-rm "$base/$type/$fe" 2>/dev/null
			fi
		done
	done
}
log "watching $base"
while :; do
	scan
	timeout 3 xenstore-watch -n 2 "$base" >/dev/null 2>&1
done
`

// InitGuest is /lab/init-guest.sh: frontends, wait for the disk and NIC,
// address 169.254.0.2 (lab.ip= overrides), then /lab/guest.sh, then power
// off (the domain is destroyed: on_poweroff=destroy).
//
// lab.disk=none: the guest has no disk (no xvdb check); lab.script=NAME
// runs /lab/NAME instead of /lab/guest.sh.
const InitGuest = domUCommon + `lab_t guest-init
ip=169.254.0.2
disk=xvdb
script=guest.sh
for a in $(cat /proc/cmdline); do
	case "$a" in
	lab.ip=*) ip="${a#lab.ip=}" ;;
	lab.disk=*) disk="${a#lab.disk=}" ;;
	lab.script=*) script="${a#lab.script=}" ;;
	esac
done
modprobe xen-blkfront
modprobe xen-netfront
if [ "$disk" != none ]; then
	lab_wait 90 test -b /dev/$disk
	lab_check guest-sees-disk $? "/dev/$disk $(cat /sys/block/$disk/size 2>/dev/null) sectors"
fi
lab_wait 30 test -e /sys/class/net/eth0
lab_check guest-sees-nic $? "eth0 $(cat /sys/class/net/eth0/address 2>/dev/null)"
ip addr add "$ip/16" dev eth0
ip link set eth0 up
echo 1 > /proc/sys/kernel/printk
lab_t guest-ready
lab_mark "READY guest"
if [ -f "/lab/$script" ]; then lab_run "/lab/$script" "$script"; fi
sync
lab_t guest-done
echo o > /proc/sysrq-trigger
sleep 60
`
