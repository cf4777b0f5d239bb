package lab

import (
	"fmt"
	"strings"
)

// Dom0Init is dom0's /init: it brings up the Xen toolstack, mounts the run
// directory shared by the host on /lab, runs /lab/dom0.sh (output to the
// console and /lab/dom0.log), writes its exit code to /lab/exit-code and
// powers off.
func Dom0Init() string {
	return `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/sysrq
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs virtio_pci 9pnet_virtio 9p; do
	modprobe $m || echo "lab: modprobe $m failed"
done
mount -t xenfs xenfs /proc/xen
mkdir -p /run/xen /run/xenstored /var/run/xen /var/lib/xen /var/lib/xenstored /var/log/xen /lab
mount -t 9p -o trans=virtio,version=9p2000.L lab /lab || echo "lab: mount 9p failed"
mkdir -p /lab/console
xenstored --pid-file=/run/xenstored.pid
xen-init-dom0
xenconsoled --log=guest --log-dir=/lab/console
echo "lab: dom0 ready"
( sh /lab/dom0.sh; echo $? > /lab/exit-code ) 2>&1 | tee /lab/dom0.log
echo "lab: dom0 script exit $(cat /lab/exit-code)"
sync
echo o > /proc/sysrq-trigger
sleep 60
`
}

// GuestInit is a guest's /init: it mounts the basics and runs /bin/sh on
// the console (the guest's job is given on its kernel command line later).
func GuestInit() string {
	return `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in xen-blkfront xen-netfront; do modprobe $m; done
echo "lab: guest ready"
exec /bin/sh
`
}

// DomainConfig is an xl domain configuration for a PV domain.
type DomainConfig struct {
	Name         string
	Kernel       string
	Ramdisk      string
	Extra        string // kernel command line
	MemoryMB     int
	VCPUs        int
	DriverDomain bool
	PCI          []string // BDFs, e.g. 0000:00:05.0
	Disks        []string // xl disk specs
	VIFs         []string
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Render returns the xl config file text.
func (c DomainConfig) Render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "name = %q\ntype = \"pv\"\n", c.Name)
	fmt.Fprintf(&b, "kernel = %q\nramdisk = %q\nextra = %q\n", c.Kernel, c.Ramdisk, c.Extra)
	fmt.Fprintf(&b, "memory = %d\nmaxmem = %d\n", c.MemoryMB, c.MemoryMB)
	vcpus := c.VCPUs
	if vcpus == 0 {
		vcpus = 1
	}
	fmt.Fprintf(&b, "vcpus = %d\non_crash = \"preserve\"\n", vcpus)
	if c.DriverDomain {
		b.WriteString("driver_domain = 1\n")
	}
	if len(c.PCI) > 0 {
		fmt.Fprintf(&b, "pci = %s\n", quoteList(c.PCI))
	}
	if len(c.Disks) > 0 {
		fmt.Fprintf(&b, "disk = %s\n", quoteList(c.Disks))
	}
	if len(c.VIFs) > 0 {
		fmt.Fprintf(&b, "vif = %s\n", quoteList(c.VIFs))
	}
	return b.String()
}
