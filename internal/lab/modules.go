package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Module sets per role. Each is closed over its dependencies at build time.
var (
	Dom0Modules = []string{"xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs", "xen-pciback",
		"xen-blkback", "xen-netback", "loop", "bridge", "tun", "veth", "e1000", "virtio_pci", "9pnet_virtio", "9p"}
	DriverDomainModules = []string{"xen-pcifront", "nvme", "e1000", "xen-blkback", "xen-netback", "xen-evtchn",
		"xen-gntdev", "xen-gntalloc", "xenfs", "xen-privcmd", "loop", "bridge", "tun", "xen_wdt"}
	GuestModules = []string{"xen-blkfront", "xen-netfront", "xen-evtchn", "xen-gntdev", "xenfs", "loop", "ext4"}
)

// ParseShowDepends returns the module files (in load order) named by the
// insmod lines of `modprobe --show-depends`; builtin lines are skipped.
func ParseShowDepends(out []byte) []string {
	var files []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "insmod" {
			files = append(files, f[1])
		}
	}
	return files
}

// trimModules copies the closure of mods from the full module tree under
// root (root/lib/modules/krel) into dst/lib/modules/krel and runs depmod.
func trimModules(ctx context.Context, root, krel string, mods []string, dst string) error {
	src := filepath.Join(root, "lib", "modules", krel)
	out := filepath.Join(dst, "lib", "modules", krel)
	seen := map[string]bool{}
	for _, m := range mods {
		b, err := exec.CommandContext(ctx, "modprobe", "-d", root, "-S", krel, "--show-depends", m).CombinedOutput()
		if err != nil {
			return fmt.Errorf("modprobe --show-depends %s: %w: %s", m, err, b)
		}
		for _, f := range ParseShowDepends(b) {
			rel, err := filepath.Rel(filepath.Join(root, "lib", "modules", krel), f)
			if err != nil || strings.HasPrefix(rel, "..") {
				// modprobe may print the path without the -d prefix.
				rel, err = filepath.Rel(filepath.Join("/lib/modules", krel), f)
				if err != nil {
					return fmt.Errorf("module path %s: %w", f, err)
				}
			}
			if seen[rel] {
				continue
			}
			seen[rel] = true
			if err := copyFile(filepath.Join(src, rel), filepath.Join(out, rel)); err != nil {
				return err
			}
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		if _, err := os.Stat(filepath.Join(src, f)); err == nil {
			if err := copyFile(filepath.Join(src, f), filepath.Join(out, f)); err != nil {
				return err
			}
		}
	}
	if b, err := exec.CommandContext(ctx, "depmod", "-b", dst, krel).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod -b %s: %w: %s", dst, err, b)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	return nil
}

// depmodExtracted runs depmod for every module tree under root/lib/modules
// that has no modules.dep: a kernel package unpacked with dpkg-deb -x
// (a kernel not installed on the host) lacks the files its postinst makes,
// and modprobe --show-depends and the image's module loader need them.
func depmodExtracted(ctx context.Context, root string) error {
	ents, err := os.ReadDir(filepath.Join(root, "lib", "modules"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("depmod: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, "lib", "modules", e.Name(), "modules.dep")); err == nil {
			continue
		}
		if b, err := exec.CommandContext(ctx, "depmod", "-b", root, e.Name()).CombinedOutput(); err != nil {
			return fmt.Errorf("depmod -b %s %s: %w: %s", root, e.Name(), err, b)
		}
	}
	return nil
}
