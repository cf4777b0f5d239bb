package lab

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestKeyChangesWithEveryInput(t *testing.T) {
	base := map[string]string{"xen": "4.17.7", "kernel": "6.1.192-2"}
	k := Key("initrd", base)
	if k != Key("initrd", map[string]string{"kernel": "6.1.192-2", "xen": "4.17.7"}) {
		t.Fatal("key depends on map order")
	}
	if len(k) != 16 {
		t.Fatalf("key %q: want 16 hex digits", k)
	}
	for name, in := range map[string]map[string]string{
		"version":  {"xen": "4.17.8", "kernel": "6.1.192-2"},
		"new":      {"xen": "4.17.7", "kernel": "6.1.192-2", "fio": "3.33"},
		"fewer":    {"xen": "4.17.7"},
		"swapped":  {"xen": "6.1.192-2", "kernel": "4.17.7"},
		"boundary": {"xen": "4.17.7\nkernel=6.1.192-2"},
	} {
		if Key("initrd", in) == k {
			t.Errorf("%s: key did not change", name)
		}
	}
	if Key("rootfs", base) == k {
		t.Error("artifact name not in key")
	}
}

func TestCacheBuildStampsAndReuses(t *testing.T) {
	c := Cache{Dir: t.TempDir()}
	in := map[string]string{"v": "1"}
	key := Key("a", in)
	calls := 0
	build := func(dir string) error {
		calls++
		return os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	}
	if c.Ready("a", key) {
		t.Fatal("ready before build")
	}
	dir, err := c.Build("a", key, in, build)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Build("a", key, in, build); err != nil {
		t.Fatal(err)
	}
	if calls != 1 || !c.Ready("a", key) {
		t.Fatalf("calls=%d ready=%v", calls, c.Ready("a", key))
	}
	stamp, err := os.ReadFile(filepath.Join(dir, stampName))
	if err != nil || !strings.Contains(string(stamp), "v=1") || !strings.Contains(string(stamp), Recipe) {
		t.Fatalf("stamp %q, %v", stamp, err)
	}
	// A failed build leaves nothing ready.
	k2 := Key("a", map[string]string{"v": "2"})
	if _, err := c.Build("a", k2, nil, func(string) error { return io.ErrUnexpectedEOF }); err == nil || c.Ready("a", k2) {
		t.Fatalf("failed build: err=%v ready=%v", err, c.Ready("a", k2))
	}
}

func TestParsePolicy(t *testing.T) {
	out := []byte(`linux-image-amd64:
  Installed: 6.1.192-2
  Candidate: 6.1.192-2
  Version table:
 *** 6.1.192-2 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
fio:
  Installed: (none)
  Candidate: 3.33-3
  Version table:
     3.33-3 500
gone:
  Installed: (none)
  Candidate: (none)
`)
	got := ParsePolicy(out)
	if got["linux-image-amd64"] != "6.1.192-2" || got["fio"] != "3.33-3" || len(got) != 2 {
		t.Fatalf("ParsePolicy = %v", got)
	}
	if v, err := ParsePolicyCandidate("fio", out[bytes.Index(out, []byte("fio:")):]); err != nil || v != "3.33-3" {
		t.Fatalf("ParsePolicyCandidate = %q, %v", v, err)
	}
}

func TestParseKernelDepends(t *testing.T) {
	out := []byte("Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n\nPackage: linux-image-amd64\nDepends: linux-image-6.1.0-40-amd64\n")
	pkg, krel, err := ParseKernelDepends(out)
	if err != nil || pkg != "linux-image-6.1.0-56-amd64" || krel != "6.1.0-56-amd64" {
		t.Fatalf("got %q %q %v", pkg, krel, err)
	}
	if _, _, err := ParseKernelDepends([]byte("Package: x\nDepends: libc6\n")); err == nil {
		t.Fatal("no error without a kernel dependency")
	}
}

func TestParseShowDepends(t *testing.T) {
	out := []byte("builtin xen_blkback\ninsmod /lib/modules/6.1.0-56-amd64/kernel/net/llc/llc.ko \ninsmod /lib/modules/6.1.0-56-amd64/kernel/net/bridge/bridge.ko\n")
	got := ParseShowDepends(out)
	if len(got) != 2 || !strings.HasSuffix(got[1], "bridge.ko") {
		t.Fatalf("got %v", got)
	}
}

func TestQEMUArgs(t *testing.T) {
	args, err := QEMUConfig{Xen: "/c/xen", Vmlinuz: "/c/vmlinuz", Initrd: "/c/initrd.gz", NVMeImage: "/r/nvme.img", ShareDir: "/r"}.Args()
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	idx := func(s string) int {
		i := strings.Index(line, s)
		if i < 0 {
			t.Fatalf("%q missing from %s", s, line)
		}
		return i
	}
	for _, s := range []string{"-machine q35", "-cpu qemu64", "-smp 2", "-no-reboot", "iommu=1", "console=com1",
		"-initrd /c/vmlinuz console=hvc0", "lab.role=dom0", ",/c/initrd.gz", "nvme,id=nvme0,serial=lab0,addr=0x5",
		"nvme-ns,drive=nv,bus=nvme0,nsid=1",
		"e1000,netdev=p1,addr=0x6", "e1000,netdev=p2,addr=0x7", "mount_tag=lab"} {
		idx(s)
	}
	iommu := idx("intel-iommu,intremap=on")
	for _, dev := range []string{"nvme,", "e1000,netdev=p1", "e1000,netdev=p2"} {
		if idx(dev) < iommu {
			t.Errorf("%s before intel-iommu", dev)
		}
	}
	// Only hub ports, nothing attached to the host.
	for i, a := range args {
		if a == "-netdev" && !strings.HasPrefix(args[i+1], "hubport,") {
			t.Errorf("netdev %q is not a hubport", args[i+1])
		}
		if a == "-nic" && args[i+1] != "none" {
			t.Errorf("-nic %s", args[i+1])
		}
	}
	if _, err := (QEMUConfig{Xen: "x", Vmlinuz: "/a,b", Initrd: "i"}).Args(); err == nil {
		t.Error("comma in a multiboot module path accepted")
	}
}

func TestDomainConfigRender(t *testing.T) {
	s := Scenario{Backend: BackendDrvdom}
	dd := s.DrvdomConfig().Render()
	for _, want := range []string{`name = "drvdom"`, `type = "pv"`, "driver_domain = 1", `pci = ['0000:00:05.0', '0000:00:06.0']`,
		`extra = "console=hvc0 lab.role=drvdom drvdom.backend=drvdom"`, "memory = 768", `on_poweroff = "destroy"`} {
		if !strings.Contains(dd, want) {
			t.Errorf("driver domain config lacks %q:\n%s", want, dd)
		}
	}
	if s2 := (Scenario{Backend: BackendKernel, DrvdomImage: "/x.cpio"}); !strings.Contains(s2.DrvdomConfig().Render(), "memory = 512") {
		t.Error("image driver domain memory")
	}
	g := Scenario{Backend: BackendKernel, DiskTarget: "/tmp/disk.img"}.GuestConfig().Render()
	for _, want := range []string{
		`disk = ['vdev=xvdb,format=raw,access=rw,backend=drvdom,target=/tmp/disk.img']`,
		`vif = ['backend=drvdom,bridge=xenbr0,mac=00:16:3e:4c:00:02']`, "lab.role=guest"} {
		if !strings.Contains(g, want) {
			t.Errorf("guest config lacks %q:\n%s", want, g)
		}
	}
	if strings.Contains(g, "driver_domain") || strings.Contains(g, "pci =") {
		t.Errorf("guest config has driver-domain keys:\n%s", g)
	}
	if !strings.Contains(g, `extra = "console=hvc0 lab.role=guest lab.ip=169.254.0.2"`) {
		t.Errorf("guest kernel command line:\n%s", g)
	}
	ga := Scenario{Backend: BackendDrvdom, GuestArgs: " xen_blkfront.max_indirect_segments=256 "}.GuestConfig().Render()
	if !strings.Contains(ga, `extra = "console=hvc0 lab.role=guest lab.ip=169.254.0.2 xen_blkfront.max_indirect_segments=256"`) {
		t.Errorf("guest args not on the guest's command line:\n%s", ga)
	}
}

func TestDom0Script(t *testing.T) {
	plain := Scenario{Backend: BackendKernel}.Dom0Script()
	e2e := Scenario{Backend: BackendKernel, E2E: true, GuestTimeout: 90 * time.Second}.Dom0Script()
	for _, want := range []string{"xl pci-assignable-add 0000:00:05.0", "xl pci-assignable-add 0000:00:06.0",
		"/sys/bus/pci/devices/0000:00:07.0/net", "169.254.0.1/16", "create /lab/drvdom.cfg", "create /lab/guest.cfg", ReadyShell,
		"drvdom-no-stale-backends"} {
		if !strings.Contains(plain, want) {
			t.Errorf("dom0 script lacks %q", want)
		}
	}
	if strings.Contains(plain, "block-detach") {
		t.Error("plain run detaches devices")
	}
	for _, want := range []string{"block-detach guest xvdb", "network-detach guest 0", "cue block-detach ", "cue network-detach ",
		"network-attach guest backend=drvdom bridge=xenbr0 mac=00:16:3e:4c:00:02 ", `"@@LAB END guest.sh" 90`} {
		if !strings.Contains(e2e, want) {
			t.Errorf("e2e dom0 script lacks %q", want)
		}
	}
	if img := (Scenario{Backend: BackendKernel, DrvdomImage: "/x.cpio.gz"}).Dom0Script(); !strings.Contains(img, ReadyImage) || strings.Contains(img, ReadyShell) {
		t.Error("image driver domain: dom0 waits for the wrong readiness line")
	}
	if ng := (Scenario{Backend: BackendKernel, NoGuest: true}).Dom0Script(); strings.Contains(ng, "guest.cfg") {
		t.Error("--no-guest still creates the guest")
	}
	// Every check the e2e guest and dom0 scripts report is expected (fv
	// NAME reports guest-fio-NAME).
	img := Scenario{Backend: BackendDrvdom, DrvdomImage: "/x.cpio.gz", E2E: true}.Dom0Script()
	all := e2e + img + GuestE2EScript + Guest2E2EScript + InitGuest + InitDrvdom
	expected, na := E2EChecksFor(BackendDrvdom)
	if len(na) != 0 || len(expected) != len(E2EChecks)+len(E2EDrvdomOnlyChecks) {
		t.Errorf("drvdom: %d expected, %v not applicable", len(expected), na)
	}
	for _, n := range expected {
		fv := "\nfv " + strings.TrimPrefix(n, "guest-fio-") + " "
		if !strings.Contains(all, n) && !(strings.HasPrefix(n, "guest-fio-") && strings.Contains(all, fv)) {
			t.Errorf("expected check %s is reported by no script", n)
		}
	}
	// The drvdom-only checks are in the drvdom scenario's dom0 script only,
	// and listed (not dropped) for the kernel's backends.
	for _, n := range E2EDrvdomOnlyChecks {
		if strings.Contains(e2e, n) || !strings.Contains(img, n) {
			t.Errorf("%s: kernel script has it %v, drvdom script %v", n, strings.Contains(e2e, n), strings.Contains(img, n))
		}
	}
	if exp, na := E2EChecksFor(BackendKernel); len(exp) != len(E2EChecks) || len(na) != len(E2EDrvdomOnlyChecks) {
		t.Errorf("kernel: %d expected, %v not applicable", len(exp), na)
	}
}

// The e2e scenario's dom0 follows the guest's cues in the order the guest
// gives them, and each cue is given once.
func TestE2ECueOrder(t *testing.T) {
	s := Scenario{Backend: BackendDrvdom, DrvdomImage: "/x.cpio.gz", E2E: true}
	dom0 := s.Dom0Script()
	last, lastG := -1, -1
	for _, cue := range []string{"PHASE discarded", "PHASE block-detach", "PHASE network-detach", "PHASE reboot"} {
		i := strings.Index(dom0, "\ncue "+strings.TrimPrefix(cue, "PHASE ")+" ")
		g := strings.Index(GuestE2EScript, `lab_mark "`+cue+`"`)
		if i < 0 || g < 0 || i < last || g < lastG {
			t.Fatalf("cue %q: dom0 at %d (after %d), guest at %d (after %d)", cue, i, last, g, lastG)
		}
		if strings.Count(GuestE2EScript, `lab_mark "`+cue+`"`) != 1 {
			t.Errorf("cue %q given more than once", cue)
		}
		last, lastG = i, g
	}
	// The second boot never reboots again, and the first only with its marker.
	second := GuestE2EScript[:strings.Index(GuestE2EScript, "\nfi\n")]
	if strings.Contains(second, "sysrq") {
		t.Error("the second boot reboots")
	}
	if !strings.Contains(GuestE2EScript, "touch lab-marker") || strings.Index(GuestE2EScript, "test -f /mnt/d/lab-marker; then") > strings.Index(GuestE2EScript, "echo b > /proc/sysrq-trigger") {
		t.Error("the first boot reboots without checking its marker")
	}
}

func TestE2EConfigs(t *testing.T) {
	s := Scenario{Backend: BackendKernel, DrvdomImage: "/x.cpio.gz", E2E: true}
	g := s.GuestConfig().Render()
	for _, want := range []string{"vcpus = 2", `on_reboot = "restart"`,
		"'vdev=xvdb,format=raw,access=rw,backend=drvdom,target=/dev/nvme0n1'",
		"'vdev=xvdc,format=raw,access=rw,backend=drvdom,target=/run/drvdom/scratch/file.img'",
		"'vdev=xvdd,format=raw,access=rw,backend=drvdom,target=/dev/nvme0n2'",
		"'vdev=xvde,format=raw,access=ro,backend=drvdom,target=/run/drvdom/scratch/ro.img'"} {
		if !strings.Contains(g, want) {
			t.Errorf("e2e guest config lacks %q:\n%s", want, g)
		}
	}
	g2 := s.Guest2Config().Render()
	for _, want := range []string{`name = "guest2"`, "lab.ip=169.254.0.4", "lab.disk=none", "lab.script=guest2.sh", "mac=00:16:3e:4c:00:04"} {
		if !strings.Contains(g2, want) {
			t.Errorf("guest2 config lacks %q:\n%s", want, g2)
		}
	}
	if strings.Contains(g2, "\ndisk =") {
		t.Error("guest2 has a disk")
	}
	dd := s.DrvdomConfig().Render()
	for _, want := range []string{"vcpus = 2", "drvdom.scratch=/run/drvdom/scratch/file.img:128M,/run/drvdom/scratch/ro.img:16M", "drvdom.backend=kernel"} {
		if !strings.Contains(dd, want) {
			t.Errorf("e2e driver domain config lacks %q:\n%s", want, dd)
		}
	}
	// Runs that are not e2e (bench, faults) keep their configs.
	plain := Scenario{Backend: BackendKernel}
	if r := plain.GuestConfig().Render(); strings.Contains(r, "xvdc") || !strings.Contains(r, "vcpus = 1") || !strings.Contains(r, `on_reboot = "destroy"`) {
		t.Errorf("plain guest config changed:\n%s", r)
	}
	if r := plain.DrvdomConfig().Render(); strings.Contains(r, "scratch") || !strings.Contains(r, "vcpus = 1") {
		t.Errorf("plain driver domain config changed:\n%s", r)
	}
	// Prepare writes guest2's config and script only for e2e.
	a := &Artifacts{Vmlinux: writeTemp(t, "vmlinux"), Initrd: writeTemp(t, "initrd")}
	for _, e2e := range []bool{true, false} {
		out := t.TempDir()
		sc := Scenario{Backend: BackendKernel, E2E: e2e, GuestScript: "true\n"}
		if err := sc.Prepare(a, out); err != nil {
			t.Fatal(err)
		}
		_, err := os.Stat(filepath.Join(out, "guest2.cfg"))
		b, _ := os.ReadFile(filepath.Join(out, "guest.img"))
		if (err == nil) != e2e || bytes.Contains(b, []byte("lab/guest2.sh")) != e2e {
			t.Errorf("e2e=%v: guest2.cfg %v, guest2.sh in the ramdisk %v", e2e, err, bytes.Contains(b, []byte("lab/guest2.sh")))
		}
	}
}

func writeTemp(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFiguresAndComparison(t *testing.T) {
	mk := func(iops, to, from float64) *Report {
		return &Report{Files: map[string][]byte{
			"fio-guest.json":      []byte(fmt.Sprintf(`{"jobs":[{"jobname":"r","read":{"iops":%g,"bw_bytes":1}}]}`, iops)),
			"iperf3-guest.json":   []byte(fmt.Sprintf(`{"end":{"sum_sent":{"bits_per_second":1},"sum_received":{"bits_per_second":%g}}}`, to)),
			"iperf3-reverse.json": []byte(fmt.Sprintf(`{"end":{"sum_sent":{"bits_per_second":1},"sum_received":{"bits_per_second":%g}}}`, from)),
		}}
	}
	k, d := mk(800, 2e8, 3e8).Figures(), mk(1000, 1e8, 3e8).Figures()
	if k.RandReadIOPS != 800 || k.ToDom0Gbps != 0.2 || k.FromDom0Gbps != 0.3 {
		t.Fatalf("figures %+v", k)
	}
	var b strings.Builder
	PrintFigures(&b, []string{BackendKernel, BackendDrvdom}, map[string]Figures{BackendKernel: k, BackendDrvdom: d})
	for _, want := range []string{"drvdom/kernel", "800", "1000", "1.25", "0.200", "0.100", "0.50", "1.00"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("comparison lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	PrintFigures(&b, []string{BackendDrvdom}, map[string]Figures{BackendDrvdom: {}})
	if strings.Contains(b.String(), "drvdom/kernel") || !strings.Contains(b.String(), " -") {
		t.Errorf("one backend without figures:\n%s", b.String())
	}
}

func TestSourceHashFollowsSources(t *testing.T) {
	dir := t.TempDir()
	w := func(p, s string) {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w("go.mod", "module x\n")
	w("a/a.go", "package a\n")
	h1, err := SourceHash(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a/a_test.go", "a/testdata/x.go", ".git/x.go", "out/y.go", "README.md"} {
		w(p, "ignored")
	}
	if h, _ := SourceHash(dir); h != h1 {
		t.Error("tests, testdata, .git, out or docs changed the hash")
	}
	w("a/a.go", "package a // changed\n")
	if h, _ := SourceHash(dir); h == h1 {
		t.Error("a source change kept the hash")
	}
}

func TestDrvdomInitLoadsKernelBackendsOnlyForKernelMode(t *testing.T) {
	i := strings.Index(InitDrvdom, "xen-blkback")
	g := strings.Index(InitDrvdom, `if [ "$backend" = kernel ]`)
	if i < 0 || g < 0 || i < g {
		t.Fatal("xen-blkback is loaded outside the backend=kernel branch: it would race drvdomd")
	}
}

func TestCpioRoundTripAndKernelRules(t *testing.T) {
	var buf bytes.Buffer
	w := NewCpioWriter(&buf, false)
	if err := w.AddFile("lab/init-guest.sh", 0o755, []byte("echo hi\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.AddSymlink("lab/x", "init-guest.sh"); err != nil {
		t.Fatal(err)
	}
	if err := w.AddFile("/lab/odd", 0o644, []byte("12345")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if len(b)%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", len(b))
	}
	es, err := ReadCpio(b)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "lab,lab/init-guest.sh,lab/x,lab/odd" {
		t.Fatalf("entries %v", names)
	}
	if es[0].Mode != modeDir|0o755 || es[1].Mode != modeReg|0o755 || string(es[1].Data) != "echo hi\n" ||
		es[2].Mode&0o170000 != modeSymlink || string(es[2].Data) != "init-guest.sh" || string(es[3].Data) != "12345" {
		t.Fatalf("entries %+v", es)
	}
	if _, err := ReadCpio(b[:len(b)-8]); err == nil {
		t.Error("truncated archive accepted")
	}
	// Compressed: one gzip member holding the same archive.
	var gz bytes.Buffer
	w = NewCpioWriter(&gz, true)
	_ = w.AddFile("a", 0o644, []byte("b"))
	_ = w.Close()
	zr, err := gzip.NewReader(&gz)
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := io.ReadAll(zr)
	if es, err := ReadCpio(plain); err != nil || len(es) != 1 || es[0].Name != "a" {
		t.Fatalf("gzip archive: %v %v", es, err)
	}
}

func TestWriteRamdiskPutsPlainCpioFirst(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.gz")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("rootfs"))
	zw.Close()
	os.WriteFile(base, gz.Bytes(), 0o644)
	dst := filepath.Join(dir, "out.img")
	if err := writeRamdisk(dst, base, map[string]string{"guest.sh": "true\n"}, ""); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(dst)
	if !bytes.HasPrefix(b, []byte(cpioMagic)) {
		t.Fatalf("ramdisk starts with %q: libxenguest would try to gunzip it", b[:6])
	}
	if !bytes.HasSuffix(b, gz.Bytes()) {
		t.Fatal("base archive not appended unchanged")
	}
	es, err := ReadCpio(b)
	if err != nil || len(es) != 2 || es[1].Name != "lab/guest.sh" {
		t.Fatalf("%v %v", es, err)
	}
}

const consoleLog = "[    1.0] blkfront: xvdb: flush diskcache\r\n" +
	"@@LAB T guest-init 3.51@@\r\n" +
	"@@LAB CHECK guest-sees-disk PASS /dev/xvdb 2097152 sectors@@\r\n" +
	"[    2.0] noise @@LAB CHECK guest-sees-nic FAIL eth0 @@\r\n" +
	"@@LAB BEGIN guest.sh@@\r\n" +
	"hello from the guest\r\n" +
	"@@LAB FILE fio.json@@\r\n" +
	"{\"jobs\": [{\"jobname\": \"r\", \"error\": 0, \"read\": {\"iops\": 1105.5, \"bw_bytes\": 4528128}, \"write\": {\"iops\": 0, \"bw_bytes\": 0}}]}\r\n" +
	"@@LAB EOF fio.json@@\r\n" +
	"@@LAB FILE cut.json@@\r\n" +
	"{\"partial\r\n" +
	"@@LAB END guest.sh rc=3@@\r\n" +
	"@@LAB FAILED-DOMAIN drvdom no READY marker after 300s@@\r\n"

func TestParseMarkers(t *testing.T) {
	ms := ParseMarkers([]byte(consoleLog))
	cs := Checks(ms, "guest")
	if len(cs) != 2 || !cs[0].Pass || cs[0].Name != "guest-sees-disk" || cs[0].Detail != "/dev/xvdb 2097152 sectors" || cs[1].Pass || cs[1].Source != "guest" {
		t.Fatalf("checks %+v", cs)
	}
	if tl := Timeline(ms); tl["guest-init"] != 3.51 {
		t.Fatalf("timeline %v", tl)
	}
	if d, why, ok := FailedDomain(ms); !ok || d != "drvdom" || why != "no READY marker after 300s" {
		t.Fatalf("failed domain %q %q %v", d, why, ok)
	}
	files := ExtractFiles([]byte(consoleLog))
	if _, ok := files["cut.json"]; ok || len(files) != 1 {
		t.Fatalf("files %v", files)
	}
	f, err := ParseFio(files["fio.json"])
	if err != nil || f.ReadIOPS != 1105.5 || f.ReadBps != 4528128 || f.Job != "r" {
		t.Fatalf("fio %+v %v", f, err)
	}
	sr, ok := FindScript([]byte(consoleLog), "guest.sh")
	if !ok || !sr.Finished || sr.ExitCode != 3 || !strings.HasPrefix(sr.Output, "hello from the guest\n") {
		t.Fatalf("script %+v %v", sr, ok)
	}
	if sr, ok := FindScript([]byte("@@LAB BEGIN x@@\nhalf"), "x"); !ok || sr.Finished || sr.ExitCode != -1 {
		t.Fatalf("unfinished script %+v", sr)
	}
}

func TestParseFioAndIperf(t *testing.T) {
	if _, err := ParseFio([]byte("fio: no jobs")); err == nil {
		t.Error("fio without JSON accepted")
	}
	if _, err := ParseFio([]byte(`{"jobs": []}`)); err == nil {
		t.Error("fio without jobs accepted")
	}
	f, err := ParseFio([]byte("note: both iodepth >= 1 and synchronous I/O engine\n" +
		`{"jobs":[{"jobname":"a","error":0,"read":{"iops":10,"bw_bytes":40960},"write":{"iops":5,"bw_bytes":20480}},` +
		`{"jobname":"b","error":5,"read":{"iops":1,"bw_bytes":4096},"write":{"iops":0,"bw_bytes":0}}]}`))
	if err != nil || f.ReadIOPS != 11 || f.WriteIOPS != 5 || f.WriteBps != 20480 || f.Errors != 1 {
		t.Fatalf("%+v %v", f, err)
	}
	ip, err := ParseIperf3([]byte(`{"start":{},"end":{"sum_sent":{"bits_per_second":2.5e8},"sum_received":{"bits_per_second":2.4e8}}}`))
	if err != nil || ip.SentBps != 2.5e8 || ip.ReceivedBps != 2.4e8 {
		t.Fatalf("%+v %v", ip, err)
	}
	if _, err := ParseIperf3([]byte(`{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`)); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("iperf3 error: %v", err)
	}
}

func TestReportAllChecksCountsMissing(t *testing.T) {
	r := &Report{Checks: []Check{{Name: "a", Pass: true}, {Name: "b"}}}
	got := r.AllChecks([]string{"a", "b", "c"})
	if len(got) != 3 || got[2].Name != "c" || got[2].Pass {
		t.Fatalf("%+v", got)
	}
	if r.OK() {
		t.Error("report with a failed check and no result is OK")
	}
}

func TestCollectAndPrint(t *testing.T) {
	out := t.TempDir()
	os.MkdirAll(filepath.Join(out, "console"), 0o755)
	os.WriteFile(filepath.Join(out, "dom0.log"), []byte("@@LAB CHECK dom0-assign-nvme PASS 0000:00:05.0@@\n@@LAB T dom0-done 99.5@@\n@@LAB FAILED-DOMAIN drvdom no READY marker after 300s@@\n"), 0o644)
	os.WriteFile(filepath.Join(out, "console", "guest-drvdom.log"), []byte("@@LAB BEGIN drvdom.sh@@\r\n"+
		"@@LAB FILE fio-drvdom.json@@\r\n{\"jobs\":[{\"jobname\":\"d\",\"read\":{\"iops\":2000,\"bw_bytes\":8192000}}]}\r\n@@LAB EOF fio-drvdom.json@@\r\n"+
		"@@LAB END drvdom.sh rc=0@@\r\n"), 0o644)
	os.WriteFile(filepath.Join(out, "console", "guest-guest.log"), []byte(consoleLog+
		"@@LAB FILE iperf3-guest.json@@\n{\"end\":{\"sum_sent\":{\"bits_per_second\":3e8},\"sum_received\":{\"bits_per_second\":2.5e8}}}\n@@LAB EOF iperf3-guest.json@@\n"), 0o644)
	r := Collect(out, &Result{Out: out, ExitCode: 0})
	r.Backend = BackendKernel
	if len(r.Checks) != 3 || r.Checks[0].Source != "dom0" || r.Checks[2].Source != GuestName {
		t.Fatalf("checks %+v", r.Checks)
	}
	if r.FailedDomain != "drvdom" || r.OK() {
		t.Fatalf("failed domain %q ok=%v", r.FailedDomain, r.OK())
	}
	if r.DrvdomScript == nil || r.DrvdomScript.ExitCode != 0 || r.GuestScript == nil || r.GuestScript.ExitCode != 3 {
		t.Fatalf("scripts %+v %+v", r.DrvdomScript, r.GuestScript)
	}
	if r.Timeline["dom0/dom0-done"] != 99.5 {
		t.Fatalf("timeline %v", r.Timeline)
	}
	if b, err := os.ReadFile(filepath.Join(out, "fio.json")); err != nil || !strings.Contains(string(b), "jobs") {
		t.Fatalf("lab_put file not written to the run directory: %v", err)
	}
	var bench bytes.Buffer
	r.Files["fio-guest.json"] = r.Files["fio.json"]
	r.PrintBench(&bench)
	for _, want := range []string{"kernel blkback", "2000", "1106", "0.55", "0.250"} {
		if !strings.Contains(bench.String(), want) {
			t.Errorf("bench table lacks %q:\n%s", want, bench.String())
		}
	}
	var rep bytes.Buffer
	r.Print(&rep)
	for _, want := range []string{"FAILED: domain drvdom (no READY marker after 300s)", "FAIL guest-sees-nic [guest]", "guest-drvdom.log"} {
		if !strings.Contains(rep.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, rep.String())
		}
	}
}

func TestFindPrune(t *testing.T) {
	got := findPrune([]string{"usr/lib/python3.11", "a b"})
	if got != `\( -path './usr/lib/python3.11' -o -path './a b' \) -prune -o` {
		t.Fatalf("findPrune = %s", got)
	}
	if findPrune(nil) != "" {
		t.Fatal("empty prune list")
	}
}

func TestLockLabWaitsForHolder(t *testing.T) {
	old := LockPath
	LockPath = filepath.Join(t.TempDir(), "lab.lock")
	defer func() { LockPath = old }()
	var out strings.Builder
	p := NewProgress(&out)
	unlock, err := lockLab(context.Background(), p)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = lockLab(ctx, p)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, out.String(), "another lab boot holds")
	unlock()
	unlock2, err := lockLab(context.Background(), p)
	require.NoError(t, err)
	unlock2()
}

func TestImagePassthroughChecksOnlyForImages(t *testing.T) {
	img := Scenario{Backend: BackendDrvdom, DrvdomImage: "/x/drvdom.cpio.gz", E2E: true}.Dom0Script()
	require.Contains(t, img, `grep -q 'msg="block device" name=nvme0n1 ' "$DDLOG"`)
	require.Contains(t, img, "ck drvdom-nic-passthrough")
	// The checks come after dom0 waited for the ready line.
	require.Less(t, strings.Index(img, "lab_t drvdom-ready"), strings.Index(img, "ck drvdom-nvme-passthrough"))
	shell := Scenario{Backend: BackendDrvdom, E2E: true}.Dom0Script()
	require.NotContains(t, shell, "drvdom-nvme-passthrough")
}

// The e2e scripts parse: the guests' with bash, dom0's and the driver
// domain's with sh (dash in the rootfs).
func TestE2EScriptsParse(t *testing.T) {
	for _, sh := range []string{"bash", "sh"} {
		if _, err := exec.LookPath(sh); err != nil {
			t.Fatalf("%s: %v", sh, err)
		}
	}
	check := func(shell, name, text string) {
		cmd := exec.Command(shell, "-n")
		cmd.Stdin = strings.NewReader(text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s -n %s: %v\n%s", shell, name, err, out)
		}
	}
	check("bash", "guest.sh", LibSh+GuestE2EScript)
	check("bash", "guest2.sh", LibSh+Guest2E2EScript)
	for _, be := range []string{BackendKernel, BackendDrvdom} {
		check("sh", "dom0.sh "+be, Scenario{Backend: be, DrvdomImage: "/x.cpio.gz", E2E: true}.Dom0Script())
		check("sh", "dom0.sh shell "+be, Scenario{Backend: be, E2E: true}.Dom0Script())
	}
	check("sh", "init-drvdom.sh", InitDrvdom)
	check("sh", "init-guest.sh", InitGuest)
}

// Waiters get the lab in the order they came, and a dead waiter's ticket
// does not block the queue.
func TestLockLabIsFirstComeFirstServed(t *testing.T) {
	old := LockPath
	LockPath = filepath.Join(t.TempDir(), "lab.lock")
	defer func() { LockPath = old }()
	p := NewProgress(io.Discard)
	// A ticket of a process that no longer exists (pid 0x7ffffff0 is
	// above pid_max) is skipped and removed.
	os.MkdirAll(LockPath+".q", 0o777)
	stale := filepath.Join(LockPath+".q", fmt.Sprintf("%020d.%d", 1, 0x7ffffff0))
	os.WriteFile(stale, nil, 0o666)
	hold, err := lockLab(context.Background(), p)
	require.NoError(t, err)
	order := make(chan string, 2)
	start := func(name string) {
		go func() {
			unlock, err := lockLab(context.Background(), p)
			if err != nil {
				order <- "error: " + err.Error()
				return
			}
			order <- name
			time.Sleep(300 * time.Millisecond)
			unlock()
		}()
	}
	// Each waiter's ticket is in the queue before the next one starts, and
	// both are before the holder lets go: waited for, not slept for (on a
	// loaded machine "first" could take its ticket after "second" did).
	tickets := func(n int) func() bool {
		return func() bool { ents, _ := os.ReadDir(LockPath + ".q"); return len(ents) == n }
	}
	start("first")
	require.Eventually(t, tickets(1), 10*time.Second, time.Millisecond, "first waiter's ticket")
	start("second")
	require.Eventually(t, tickets(2), 10*time.Second, time.Millisecond, "second waiter's ticket")
	hold()
	require.Equal(t, "first", <-order)
	require.Equal(t, "second", <-order)
	_, err = os.Stat(stale)
	require.True(t, os.IsNotExist(err), "stale ticket left: %v", err)
	ents, _ := os.ReadDir(LockPath + ".q")
	require.Empty(t, ents, "tickets left after every waiter got the lab")
}
