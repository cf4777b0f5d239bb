package lab

import (
	"fmt"
	"strings"
)

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
	// OnReboot is on_reboot ("destroy" if empty; "restart": xl builds the
	// domain again, under a new id, when the guest reboots).
	OnReboot string
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("'%s'", strings.ReplaceAll(x, "'", ""))
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Render returns the xl config file text. A domain that powers off is
// destroyed; one that crashes is kept for inspection (xl list, consoles).
func (c DomainConfig) Render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "name = %q\ntype = \"pv\"\n", c.Name)
	fmt.Fprintf(&b, "kernel = %q\nramdisk = %q\nextra = %q\n", c.Kernel, c.Ramdisk, c.Extra)
	fmt.Fprintf(&b, "memory = %d\nmaxmem = %d\n", c.MemoryMB, c.MemoryMB)
	vcpus := c.VCPUs
	if vcpus == 0 {
		vcpus = 1
	}
	onReboot := c.OnReboot
	if onReboot == "" {
		onReboot = "destroy"
	}
	fmt.Fprintf(&b, "vcpus = %d\non_poweroff = \"destroy\"\non_reboot = %q\non_crash = \"preserve\"\n", vcpus, onReboot)
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

// DiskSpec is an xl disk spec served by backend (a driver domain's name)
// from target, a path inside that domain.
func DiskSpec(vdev, backend, target string) string {
	return DiskSpecAccess(vdev, backend, target, "rw")
}

// DiskSpecAccess is DiskSpec with the access mode: "rw", or "ro" for a disk
// the backend serves read-only (backend key mode=r).
func DiskSpecAccess(vdev, backend, target, access string) string {
	return fmt.Sprintf("vdev=%s,format=raw,access=%s,backend=%s,target=%s", vdev, access, backend, target)
}

// VIFSpec is an xl vif spec served by backend on its bridge.
func VIFSpec(backend, bridge, mac string) string {
	return fmt.Sprintf("backend=%s,bridge=%s,mac=%s", backend, bridge, mac)
}
