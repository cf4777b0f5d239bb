package moddep

import (
	"os"
	"slices"
	"strings"
	"testing"
)

const sample = `kernel/drivers/net/tun.ko:
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/drivers/xen/xen-blkback/xen-blkback.ko.xz:
kernel/drivers/net/xen-netback/xen-netback.ko:
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
`

func TestParseAndOrder(t *testing.T) {
	d, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if got := d["xen_blkback"].Path; got != "kernel/drivers/xen/xen-blkback/xen-blkback.ko.xz" {
		t.Errorf("xen_blkback path = %q", got)
	}
	order, missing := d.Order("bridge", "xen-netback", "nvme", "xenfs", "tun", "llc")
	want := []string{"llc", "stp", "bridge", "xen_netback", "nvme_core", "nvme", "tun"}
	if !slices.Equal(order, want) {
		t.Errorf("order = %v, want %v", order, want)
	}
	if !slices.Equal(missing, []string{"xenfs"}) {
		t.Errorf("missing = %v", missing)
	}
}

func TestSubset(t *testing.T) {
	d, _ := Parse(strings.NewReader(sample))
	order, _ := d.Order("bridge")
	s, err := d.Subset(order)
	if err != nil {
		t.Fatal(err)
	}
	want := "kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n" +
		"kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n" +
		"kernel/net/llc/llc.ko:\n"
	if s != want {
		t.Errorf("subset:\n%s\nwant:\n%s", s, want)
	}
	if _, err := d.Subset([]string{"bridge"}); err == nil {
		t.Error("an open set (bridge without stp) was accepted")
	}
}

func TestParseErrors(t *testing.T) {
	if _, err := Parse(strings.NewReader("no colon here\n")); err == nil {
		t.Error("accepted a line without ':'")
	}
	d, err := Parse(strings.NewReader("a.ko: b.ko\nb.ko: a.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	order, _ := d.Order("a") // a cycle must terminate
	if len(order) != 2 {
		t.Errorf("cycle order = %v", order)
	}
}

// TestHostKernel orders the driver domain's modules from the installed
// Debian kernel's real modules.dep.
func TestHostKernel(t *testing.T) {
	rel, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Skip("no /proc/sys/kernel/osrelease")
	}
	dir := "/lib/modules/" + strings.TrimSpace(string(rel))
	f, err := os.Open(dir + "/modules.dep")
	if err != nil {
		ents, _ := os.ReadDir("/lib/modules")
		if len(ents) == 0 {
			t.Skip("no kernel modules installed under /lib/modules")
		}
		f, err = os.Open("/lib/modules/" + ents[0].Name() + "/modules.dep")
		if err != nil {
			t.Skipf("no modules.dep: %v", err)
		}
	}
	defer f.Close()
	d, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	order, _ := d.Order("bridge", "xen-netback")
	i := slices.Index(order, "bridge")
	j := slices.Index(order, "stp")
	if i < 0 || j < 0 || j > i {
		t.Errorf("bridge/stp order wrong: %v", order)
	}
}
