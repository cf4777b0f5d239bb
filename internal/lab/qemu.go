package lab

import (
	"fmt"
	"strings"
)

// Passed-through and dom0 devices' PCI addresses (slot on bus 0).
const (
	NVMeBDF   = "0000:00:05.0"
	DDNicBDF  = "0000:00:06.0"
	Dom0NicBD = "0000:00:07.0"
)

// QEMUConfig describes one boot of Xen and dom0.
type QEMUConfig struct {
	Xen        string // multiboot hypervisor
	XenCmdline string // extra Xen options
	Vmlinuz    string
	Dom0Args   string // extra dom0 kernel options
	Initrd     string
	NVMeImage  string // raw disk image passed to the driver domain: namespace 1, 512-byte blocks
	// NVMe4KImage, if set, is the same controller's namespace 2, with
	// 4096-byte logical and physical blocks (the driver domain's nvme0n2).
	NVMe4KImage string
	ShareDir    string // 9p share, mount_tag lab
	MemoryMB    int
	Dom0MemMB   int
	SMP         int
}

// Args returns qemu-system-x86_64's arguments. The intel-iommu device comes
// before every other device; network devices use hub ports only, never a
// host backend, and the default NIC is disabled.
func (c QEMUConfig) Args() ([]string, error) {
	mem, smp, d0 := c.MemoryMB, c.SMP, c.Dom0MemMB
	if mem == 0 {
		mem = 6144
	}
	if smp == 0 {
		smp = 2
	}
	if d0 == 0 {
		d0 = 1536
	}
	xen := strings.TrimSpace(fmt.Sprintf("console=com1 com1=115200,8n1 dom0_mem=%dM,max:%dM iommu=1 %s", d0, d0, c.XenCmdline))
	dom0 := strings.TrimSpace("console=hvc0 earlyprintk=xen rdinit=/init lab.role=dom0 " + c.Dom0Args)
	for _, p := range []string{c.Vmlinuz, c.Initrd, c.NVMeImage, c.NVMe4KImage, c.ShareDir} {
		if strings.ContainsAny(p, ", ") {
			return nil, fmt.Errorf("lab: path with a comma or space cannot go on the QEMU command line: %q", p)
		}
	}
	// One controller, its namespaces as nvme-ns devices on its bus.
	nvme := []string{
		"-drive", "if=none,id=nv,file=" + c.NVMeImage + ",format=raw",
		"-device", "nvme,id=nvme0,serial=lab0,addr=0x5",
		"-device", "nvme-ns,drive=nv,bus=nvme0,nsid=1",
	}
	if c.NVMe4KImage != "" {
		nvme = append(nvme,
			"-drive", "if=none,id=nv4k,file="+c.NVMe4KImage+",format=raw",
			"-device", "nvme-ns,drive=nv4k,bus=nvme0,nsid=2,logical_block_size=4096,physical_block_size=4096")
	}
	args := []string{
		"-machine", "q35", "-cpu", "qemu64", "-smp", fmt.Sprint(smp), "-m", fmt.Sprint(mem),
		"-nographic", "-no-reboot", "-nic", "none",
		"-device", "intel-iommu,intremap=on",
		"-kernel", c.Xen,
		"-append", xen,
		"-initrd", c.Vmlinuz + " " + dom0 + "," + c.Initrd,
	}
	args = append(args, nvme...)
	return append(args,
		"-netdev", "hubport,id=p1,hubid=0",
		"-device", "e1000,netdev=p1,addr=0x6",
		"-netdev", "hubport,id=p2,hubid=0",
		"-device", "e1000,netdev=p2,addr=0x7",
		"-virtfs", "local,path="+c.ShareDir+",mount_tag=lab,security_model=none",
	), nil
}
