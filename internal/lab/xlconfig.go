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
	fmt.Fprintf(&b, "vcpus = %d\non_poweroff = \"destroy\"\non_reboot = \"destroy\"\non_crash = \"preserve\"\n", vcpus)
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
	return fmt.Sprintf("vdev=%s,format=raw,access=rw,backend=%s,target=%s", vdev, backend, target)
}

// VIFSpec is an xl vif spec served by backend on its bridge.
func VIFSpec(backend, bridge, mac string) string {
	return fmt.Sprintf("backend=%s,bridge=%s,mac=%s", backend, bridge, mac)
}
