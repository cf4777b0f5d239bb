package initramfs

import (
	"bytes"
	"compress/gzip"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/mkuimage/cpio"

	"drvdom/initramfs/moddep"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func hostKernel(t *testing.T) string {
	t.Helper()
	v, err := NewestKernel("/lib/modules")
	if err != nil {
		t.Skipf("no kernel modules installed (apt-get install linux-image-amd64): %v", err)
	}
	return v
}

func TestStageModules(t *testing.T) {
	ver := hostKernel(t)
	dst := t.TempDir()
	files, missing, err := StageModules("/lib/modules", ver, DefaultModules, dst, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 0 {
		t.Errorf("missing modules in %s: %v", ver, missing)
	}
	dep, err := os.ReadFile(filepath.Join(dst, "lib/modules", ver, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := moddep.Parse(bytes.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	if len(d) != len(files) {
		t.Errorf("modules.dep has %d modules, staged %d", len(d), len(files))
	}
	order, miss := d.Order(DefaultModules...)
	if len(miss) != 0 {
		t.Errorf("staged modules.dep lacks %v", miss)
	}
	// The closure is closed: every dependency is staged, on disk.
	for _, n := range order {
		if _, err := os.Stat(filepath.Join(dst, "lib/modules", ver, d[n].Path)); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	for _, want := range []string{"stp", "llc", "xen_evtchn", "xenfs", "xen_blkback", "xen_netback", "loop", "bridge"} {
		if _, ok := d[want]; !ok {
			t.Errorf("%s not staged", want)
		}
	}
	// Nothing beyond the closure: fewer than 40 modules.
	if len(files) > 40 {
		t.Errorf("%d modules staged, the trim did not work", len(files))
	}
}

// TestBuildImage builds the whole image with u-root and looks inside.
func TestBuildImage(t *testing.T) {
	ver := hostKernel(t)
	root, err := FindModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	// u-root's init and gosh need their dependencies in go.mod/go.sum
	// (tools.go keeps them there after `go mod tidy`).
	cmd := exec.Command("go", append([]string{"list", "-deps"}, BusyboxCommands...)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("go.mod lacks u-root's command dependencies; run `go mod tidy` (initramfs/tools.go keeps them): %v\n%s", err, firstLine(out))
	}
	out := filepath.Join(t.TempDir(), "img.cpio.gz")
	res, err := Build(Options{Output: out, KernelVersion: ver, ModuleDir: root, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image %d bytes (%.1f MiB), %d modules", res.Size, float64(res.Size)/(1<<20), len(res.Modules))
	if res.Size > 20<<20 {
		t.Errorf("image is %d bytes, goal < 20 MiB", res.Size)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatalf("not a newc cpio: %v", err)
	}
	have := map[string]cpio.Record{}
	for _, r := range recs {
		have[r.Name] = r
	}
	for _, want := range []string{"init", "bin/drvdomd", "bin/uinit", "bbin/gosh", "bin/sh", ConfigPath,
		"lib/modules/" + ver + "/modules.dep"} {
		if _, ok := have[want]; !ok {
			t.Errorf("image lacks %s", want)
		}
	}
	for _, m := range res.Modules {
		if _, ok := have["lib/modules/"+ver+"/"+m]; !ok {
			t.Errorf("image lacks module %s", m)
		}
	}
	if r, ok := have["bin/uinit"]; ok {
		b := make([]byte, r.FileSize)
		if _, err := r.ReadAt(b, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if string(b) != "drvdomd" {
			t.Errorf("bin/uinit -> %q, want drvdomd", b)
		}
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}
