package lab

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Artifacts are the built, cached files a boot needs.
type Artifacts struct {
	Versions *Versions
	Xen      string // the gunzipped hypervisor (multiboot ELF)
	Vmlinuz  string // the Debian kernel (bzImage): dom0's, loaded by Xen
	// Vmlinux is the same kernel decompressed (an ELF): domUs boot it,
	// because libxenguest's xz decompression of a bzImage takes ~40 s in a
	// TCG dom0.
	Vmlinux string
	// Initrd is the one rootfs ramdisk (cpio newc, uncompressed: inflating
	// it took a loaded TCG domain over a minute) every domain boots:
	// debootstrap minbase + RootfsPkgs + the union of the module sets + the
	// lab's base /init, which picks the domain's role from lab.role= on the
	// kernel command line and runs /lab/init-<role>.sh (per run).
	Initrd string
	// ModulesRoot holds the full module trees of the kernel (<krel>/...),
	// for image builders that trim their own set (`xenlab image`).
	ModulesRoot string
	// Modules maps a role (dom0, driver-domain, guest) to a directory that
	// holds usr/lib/modules/<krel> with that role's trimmed, depmod'ed set.
	Modules map[string]string
}

// Builder builds artifacts into a Cache.
type Builder struct {
	Cache    Cache
	Progress *Progress
	Mirror   string // debootstrap mirror; default http://deb.debian.org/debian
}

func (b *Builder) run(ctx context.Context, dir string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		tail := out.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail)
	}
	return nil
}

func (b *Builder) step(name string, est time.Duration, f func() error) error {
	done := b.Progress.Step(name, est)
	err := f()
	done(err)
	return err
}

// cached builds artifact unless present, with a progress line either way.
// It returns the artifact's directory and key.
func (b *Builder) cached(artifact string, est time.Duration, inputs map[string]string, f func(dir string) error) (string, string, error) {
	key := Key(artifact, inputs)
	if b.Cache.Ready(artifact, key) {
		b.Progress.Printf("%s: cached (%s)", artifact, key)
		return b.Cache.Path(artifact, key), key, nil
	}
	var dir string
	err := b.step(artifact+": build", est, func() error {
		var err error
		dir, err = b.Cache.Build(artifact, key, inputs, f)
		return err
	})
	return dir, key, err
}

// pkgRoot returns a tree holding pkg=version's files: "/" when the host has
// exactly that version installed, else the extracted .deb (downloaded with
// apt-get download and cached).
func (b *Builder) pkgRoot(ctx context.Context, pkg, version string) (string, error) {
	if iv := installedVersion(ctx, pkg); iv == version {
		b.Progress.Printf("%s %s: installed on the host, using its files", pkg, version)
		return "/", nil
	}
	// "depmod": extracted kernel packages get the modules.dep their
	// postinst would have made (the key's change rebuilds entries cached
	// without it).
	dir, _, err := b.cached("deb-"+pkg, 20*time.Second, map[string]string{"pkg": pkg, "version": version, "depmod": "1"}, func(dir string) error {
		if err := b.run(ctx, dir, "apt-get", "download", pkg+"="+version); err != nil {
			if err2 := b.run(ctx, dir, "apt-get", "update", "-q"); err2 != nil {
				return err2
			}
			if err := b.run(ctx, dir, "apt-get", "download", pkg+"="+version); err != nil {
				return err
			}
		}
		debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
		if len(debs) != 1 {
			return fmt.Errorf("apt-get download %s: %d .deb files", pkg, len(debs))
		}
		if err := b.run(ctx, dir, "dpkg-deb", "-x", debs[0], filepath.Join(dir, "root")); err != nil {
			return err
		}
		return depmodExtracted(ctx, filepath.Join(dir, "root"))
	})
	return filepath.Join(dir, "root"), err
}

// Roles of the module sets.
const (
	RoleDom0   = "dom0"
	RoleDrvdom = "driver-domain"
	RoleGuest  = "guest"
)

// Build resolves versions and builds (or finds cached) every artifact.
func (b *Builder) Build(ctx context.Context) (*Artifacts, error) {
	if b.Progress == nil {
		b.Progress = NewProgress(nil)
	}
	if b.Mirror == "" {
		b.Mirror = "http://deb.debian.org/debian"
	}
	start := time.Now()
	var v *Versions
	if err := b.step("resolve package versions", 3*time.Second, func() error {
		var err error
		v, err = ResolveVersions(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	a := &Artifacts{Versions: v, Modules: map[string]string{}}
	b.Progress.Printf("xen %s, kernel %s %s", v.Of(XenPkg), v.KRelease, v.KernelVer)

	xenRoot, err := b.pkgRoot(ctx, XenPkg, v.Of(XenPkg))
	if err != nil {
		return nil, err
	}
	xenDir, _, err := b.cached("xen", time.Second, map[string]string{XenPkg: v.Of(XenPkg)}, func(dir string) error {
		return gunzipFile(filepath.Join(xenRoot, "boot/xen-4.17-amd64.gz"), filepath.Join(dir, "xen"))
	})
	if err != nil {
		return nil, err
	}
	a.Xen = filepath.Join(xenDir, "xen")

	kroot, err := b.pkgRoot(ctx, v.KernelPkg, v.KernelVer)
	if err != nil {
		return nil, err
	}
	a.ModulesRoot = filepath.Join(kroot, "lib", "modules")
	kin := map[string]string{"kernel": v.KernelPkg + "=" + v.KernelVer}
	kdir, _, err := b.cached("kernel", 5*time.Second, map[string]string{"kernel": kin["kernel"], "files": "vmlinuz,vmlinux"}, func(dir string) error {
		if err := copyFile(filepath.Join(kroot, "boot", "vmlinuz-"+v.KRelease), filepath.Join(dir, "vmlinuz")); err != nil {
			return err
		}
		return ExtractVmlinux(ctx, filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "vmlinux"))
	})
	if err != nil {
		return nil, err
	}
	a.Vmlinuz = filepath.Join(kdir, "vmlinuz")
	a.Vmlinux = filepath.Join(kdir, "vmlinux")

	mods := func(role string, list []string) (string, string, error) {
		return b.cached("modules-"+role, 5*time.Second, map[string]string{"kernel": kin["kernel"], "modules": strings.Join(list, ",")},
			func(dir string) error { return trimModules(ctx, kroot, v.KRelease, list, dir) })
	}
	for role, list := range map[string][]string{RoleDom0: Dom0Modules, RoleDrvdom: DriverDomainModules, RoleGuest: GuestModules} {
		if a.Modules[role], _, err = mods(role, list); err != nil {
			return nil, err
		}
	}
	allMods, modKey, err := mods("all", AllModules())
	if err != nil {
		return nil, err
	}

	rootfs, rootKey, err := b.rootfs(ctx, v)
	if err != nil {
		return nil, err
	}
	init := BaseInit()
	in := map[string]string{"format": "newc", "rootfs": rootKey, "modules": modKey, "init": init, "exclude": strings.Join(PackExclude, " ")}
	d, _, err := b.cached("initrd", 40*time.Second, in, func(dir string) error {
		out := filepath.Join(dir, "initrd.cpio")
		if err := b.run(ctx, rootfs, "sh", "-c", "find . "+findPrune(PackExclude)+" -print0 | cpio --null -o -H newc --quiet > "+shellQuote(out)); err != nil {
			return err
		}
		// A second archive, concatenated: the kernel unpacks both.
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
		defer f.Close()
		w := NewCpioWriter(f, false)
		if err := w.AddTree(filepath.Join(allMods, "lib", "modules"), "usr/lib/modules"); err != nil {
			return err
		}
		if err := w.AddFile("init", 0o755, []byte(init)); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		return f.Close()
	})
	if err != nil {
		return nil, err
	}
	a.Initrd = filepath.Join(d, "initrd.cpio")
	if st, err := os.Stat(a.Initrd); err == nil {
		b.Progress.Printf("artifacts ready in %.1fs (initrd %d MB)", time.Since(start).Seconds(), st.Size()>>20)
	}
	return a, nil
}

// rootfs debootstraps a minbase bookworm with RootfsPkgs, stripped of docs,
// and returns its tree and key.
func (b *Builder) rootfs(ctx context.Context, v *Versions) (string, string, error) {
	pkgs := RootfsPkgs()
	inputs := map[string]string{"mirror": b.Mirror, "suite": "bookworm"}
	for _, p := range pkgs {
		inputs[p] = v.Of(p)
	}
	dir, key, err := b.cached("rootfs", 90*time.Second, inputs, func(dir string) error {
		root := filepath.Join(dir, "root")
		if err := b.run(ctx, dir, "debootstrap", "--variant=minbase", "--include="+strings.Join(pkgs, ","), "bookworm", root, b.Mirror); err != nil {
			return err
		}
		for _, p := range RootfsStrip {
			if err := os.RemoveAll(filepath.Join(root, p)); err != nil {
				return fmt.Errorf("strip %s: %w", p, err)
			}
		}
		return nil
	})
	return filepath.Join(dir, "root"), key, err
}

// RootfsStrip are the paths removed from the debootstrapped tree: nothing a
// lab domain runs needs them.
var RootfsStrip = []string{"usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
	"var/cache/apt", "var/lib/apt/lists", "var/cache/debconf", "usr/share/i18n", "usr/share/zoneinfo",
	"usr/lib/x86_64-linux-gnu/gconv"}

// PackExclude are rootfs paths left out of the ramdisk: every domain
// unpacks the ramdisk into RAM, and nothing the lab runs needs these (udev
// hwdb, Xen's PVH shim, Python: xl, xenstored and xenconsoled are C).
var PackExclude = []string{"usr/lib/udev/hwdb.bin", "usr/lib/udev/hwdb.d", "usr/lib/xen-4.17/boot",
	"usr/lib/python3.11", "usr/lib/python3", "usr/bin/python3.11", "usr/share/perl", "usr/lib/x86_64-linux-gnu/perl"}

// findPrune returns find(1) arguments that skip paths (relative to ".").
func findPrune(paths []string) string {
	if len(paths) == 0 {
		return ""
	}
	parts := make([]string, len(paths))
	for i, p := range paths {
		parts[i] = "-path " + shellQuote("./"+p)
	}
	return "\\( " + strings.Join(parts, " -o ") + " \\) -prune -o"
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func gunzipFile(src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("gunzip: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("gunzip %s: %w", src, err)
	}
	o, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("gunzip: %w", err)
	}
	if _, err := io.Copy(o, zr); err != nil {
		o.Close()
		return fmt.Errorf("gunzip %s: %w", src, err)
	}
	return o.Close()
}

// AllModules is the union of every role's module set, in first-seen order.
func AllModules() []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range [][]string{Dom0Modules, DriverDomainModules, GuestModules} {
		for _, m := range l {
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	sort.Strings(out)
	return out
}

// SourceHash hashes what a Go build of the module at root depends on: every
// non-test .go file, go.mod and go.sum (paths and contents), skipping .git,
// testdata, out and hidden directories. It keys the cached driver-domain
// image: any source change rebuilds it, an unchanged tree reuses it.
func SourceHash(root string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "out") {
				return filepath.SkipDir
			}
			return nil
		}
		if !(strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")) && name != "go.mod" && name != "go.sum" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		fmt.Fprintf(h, "%s\x00%d\x00", rel, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("lab: source hash: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
