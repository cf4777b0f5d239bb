package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type fakePlatform struct {
	info, dmesg       string
	infoErr, dmesgErr error
}

func (f fakePlatform) XLInfo(context.Context) (string, error)  { return f.info, f.infoErr }
func (f fakePlatform) XLDmesg(context.Context) (string, error) { return f.dmesg, f.dmesgErr }

// Shapes of real `xl info` output (Xen 4.17).
const (
	infoIOMMU = `host                   : lab
xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64
virt_caps              : pv hvm hvm_directio pv_directio hap shadow iommu_hap_pt_share gnttab-v1
xen_version            : 4.17.5
`
	infoNoIOMMU = `host                   : lab
xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64
virt_caps              : pv hvm hap shadow gnttab-v1
xen_version            : 4.17.5
`
)

func TestProbeIOMMU(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		p       fakePlatform
		present bool
		err     bool
	}{
		{"virt_caps directio", fakePlatform{info: infoIOMMU}, true, false},
		{"no directio", fakePlatform{info: infoNoIOMMU, dmesg: "(XEN) I/O virtualisation disabled\n"}, false, false},
		{"no directio, silent dmesg", fakePlatform{info: infoNoIOMMU}, false, false},
		{"info fails, dmesg enabled", fakePlatform{infoErr: errors.New("no xl"), dmesg: "(XEN) Intel VT-d iommu 0 supported page sizes: 4kB\n(XEN) I/O virtualisation enabled\n"}, true, false},
		{"both fail", fakePlatform{infoErr: errors.New("a"), dmesgErr: errors.New("b")}, false, true},
		{"iommu word elsewhere is not evidence", fakePlatform{info: "host : iommu_hap_pt_share-box\nvirt_caps : pv hvm\n"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := ProbeIOMMU(ctx, tc.p)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if st.Present != tc.present {
				t.Errorf("Present = %v (%s), want %v", st.Present, st.Why, tc.present)
			}
		})
	}
}

func runConfig(t *testing.T, p Platform, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = cmdConfig(context.Background(), args, &o, &e, slog.New(slog.NewTextHandler(io.Discard, nil)), p)
	return code, o.String(), e.String()
}

func TestConfigRendering(t *testing.T) {
	code, out, errs := runConfig(t, fakePlatform{info: infoIOMMU},
		"-name", "dd0", "-kernel", "/boot/vmlinuz-6.1.0-56-amd64", "-ramdisk", "/var/lib/drvdom/img.cpio.gz",
		"-memory", "320", "-vcpus", "2", "-pci", "0000:00:05.0,0000:00:06.0", "-backend", "kernel",
		"-nic", "eth0", "-bridge", "xenbr0", "-extra", "loglevel=4")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := `# drvdom driver domain, written by drvdomctl config
name = "dd0"
type = "pv"
kernel = "/boot/vmlinuz-6.1.0-56-amd64"
ramdisk = "/var/lib/drvdom/img.cpio.gz"
extra = "console=hvc0 drvdom.backend=kernel drvdom.nic=eth0 drvdom.bridge=xenbr0 loglevel=4"
memory = 320
maxmem = 320
vcpus = 2
driver_domain = 1
on_watchdog = "restart"
on_crash = "restart"
on_poweroff = "destroy"
on_reboot = "restart"
pci = [ "0000:00:05.0", "0000:00:06.0" ]
`
	if out != want {
		t.Errorf("config:\n%s\nwant:\n%s", out, want)
	}
}

func TestConfigWithoutPCINeedsNoIOMMU(t *testing.T) {
	p := fakePlatform{infoErr: errors.New("xl not found"), dmesgErr: errors.New("xl not found")}
	code, out, errs := runConfig(t, p, "-kernel", "/k", "-ramdisk", "/r")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if strings.Contains(out, "pci =") || !strings.Contains(out, `extra = "console=hvc0 drvdom.backend=drvdom drvdom.nic=eth0 drvdom.bridge=xenbr0"`) {
		t.Errorf("config:\n%s", out)
	}
}

func TestConfigRefusesPassthroughWithoutIOMMU(t *testing.T) {
	p := fakePlatform{info: infoNoIOMMU, dmesg: "(XEN) I/O virtualisation disabled\n"}
	code, out, errs := runConfig(t, p, "-kernel", "/k", "-ramdisk", "/r", "-pci", "00:05.0")
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if out != "" {
		t.Errorf("wrote a config anyway:\n%s", out)
	}
	if !strings.Contains(errs, "refusing PCI passthrough") || !strings.Contains(errs, "--insecure-no-iommu") {
		t.Errorf("stderr does not explain: %s", errs)
	}
	// Unknown platform refuses too.
	code, _, _ = runConfig(t, fakePlatform{infoErr: errors.New("a"), dmesgErr: errors.New("b")}, "-kernel", "/k", "-ramdisk", "/r", "-pci", "00:05.0")
	if code != 1 {
		t.Errorf("exit %d with unknown platform, want 1", code)
	}
}

func TestConfigInsecureOverride(t *testing.T) {
	p := fakePlatform{info: infoNoIOMMU}
	dir := t.TempDir()
	outPath := filepath.Join(dir, "dd.cfg")
	code, _, errs := runConfig(t, p, "-kernel", "/k", "-ramdisk", "/r", "-pci", "00:05.0", "--insecure-no-iommu", "-o", outPath)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(errs, "WARNING") || !strings.Contains(errs, "ANY domain's memory") {
		t.Errorf("no loud warning: %s", errs)
	}
	b, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "# INSECURE") || !strings.Contains(string(b), `pci = [ "00:05.0" ]`) {
		t.Errorf("config:\n%s", b)
	}
}

func TestConfigValidation(t *testing.T) {
	p := fakePlatform{info: infoIOMMU}
	for _, args := range [][]string{
		{"-name", "a b"},
		{"-kernel", `/k"; evil="1`},
		{"-pci", "00:05"},
		{"-pci", "zz:05.0"},
		{"-backend", "qemu"},
		{"-memory", "8"},
		{"-vcpus", "0"},
		{"-nic", "this-name-is-way-too-long"},
		{"-extra", "a b"},
	} {
		code, out, _ := runConfig(t, p, append([]string{"-kernel", "/k", "-ramdisk", "/r"}, args...)...)
		if code == 0 || out != "" {
			t.Errorf("%q accepted (exit %d):\n%s", args, code, out)
		}
	}
}

func TestRunUnknownCommand(t *testing.T) {
	var o, e bytes.Buffer
	if code := run(context.Background(), []string{"frobnicate"}, &o, &e); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
}
