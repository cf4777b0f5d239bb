package lab

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Artifacts are the built, cached files a boot needs.
type Artifacts struct {
	Versions   *Versions
	Xen        string // the gunzipped hypervisor (multiboot ELF)
	Vmlinuz    string
	Dom0Initrd string // dom0 rootfs + modules + init, cpio newc gzip
	GuestRoot  string // guest rootfs + modules, cpio newc gzip
	DDModules  string // a directory holding lib/modules/<krel> for the driver domain
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
func (b *Builder) cached(artifact string, est time.Duration, inputs map[string]string, f func(dir string) error) (string, error) {
	key := Key(artifact, inputs)
	if b.Cache.Ready(artifact, key) {
		b.Progress.Printf("%s: cached (%s)", artifact, key)
		return b.Cache.Path(artifact, key), nil
	}
	var dir string
	err := b.step(artifact+": build", est, func() error {
		var err error
		dir, err = b.Cache.Build(artifact, key, inputs, f)
		return err
	})
	return dir, err
}

// deb downloads and extracts pkg=version; returns the extracted tree.
func (b *Builder) deb(ctx context.Context, pkg, version string) (string, error) {
	return b.cached("deb-"+pkg, 10*time.Second, map[string]string{"pkg": pkg, "version": version}, func(dir string) error {
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
		return b.run(ctx, dir, "dpkg-deb", "-x", debs[0], filepath.Join(dir, "root"))
	})
}

// Build resolves versions and builds (or finds cached) every artifact.
func (b *Builder) Build(ctx context.Context) (*Artifacts, error) {
	if b.Progress == nil {
		b.Progress = NewProgress(nil)
	}
	if b.Mirror == "" {
		b.Mirror = "http://deb.debian.org/debian"
	}
	var v *Versions
	if err := b.step("resolve package versions", 3*time.Second, func() error {
		var err error
		v, err = ResolveVersions(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	a := &Artifacts{Versions: v}
	b.Progress.Printf("xen %s, kernel %s %s", v.Of(XenPkg), v.KRelease, v.KernelVer)

	xenDeb, err := b.deb(ctx, XenPkg, v.Of(XenPkg))
	if err != nil {
		return nil, err
	}
	xenDir, err := b.cached("xen", time.Second, map[string]string{XenPkg: v.Of(XenPkg)}, func(dir string) error {
		return gunzipFile(filepath.Join(xenDeb, "root/boot/xen-4.17-amd64.gz"), filepath.Join(dir, "xen"))
	})
	if err != nil {
		return nil, err
	}
	a.Xen = filepath.Join(xenDir, "xen")

	kdeb, err := b.deb(ctx, v.KernelPkg, v.KernelVer)
	if err != nil {
		return nil, err
	}
	kroot := filepath.Join(kdeb, "root")
	a.Vmlinuz = filepath.Join(kroot, "boot", "vmlinuz-"+v.KRelease)

	mods := func(role string, list []string) (string, error) {
		return b.cached("modules-"+role, 5*time.Second, map[string]string{"kernel": v.KernelPkg + "=" + v.KernelVer, "modules": strings.Join(list, ",")},
			func(dir string) error { return trimModules(ctx, kroot, v.KRelease, list, dir) })
	}
	dom0Mods, err := mods("dom0", Dom0Modules)
	if err != nil {
		return nil, err
	}
	if a.DDModules, err = mods("driver-domain", DriverDomainModules); err != nil {
		return nil, err
	}
	guestMods, err := mods("guest", GuestModules)
	if err != nil {
		return nil, err
	}

	dom0FS, err := b.rootfs(ctx, "dom0", Dom0RootfsPkgs, v)
	if err != nil {
		return nil, err
	}
	guestFS, err := b.rootfs(ctx, "guest", GuestRootPkgs, v)
	if err != nil {
		return nil, err
	}
	init := Dom0Init()
	d, err := b.cached("dom0-initrd", 60*time.Second, map[string]string{"rootfs": dom0FS, "modules": dom0Mods, "init": init}, func(dir string) error {
		return b.packCpio(ctx, filepath.Join(dir, "initrd.cpio.gz"), filepath.Join(dom0FS, "root"), filepath.Join(dom0Mods), map[string]string{"init": init})
	})
	if err != nil {
		return nil, err
	}
	a.Dom0Initrd = filepath.Join(d, "initrd.cpio.gz")
	ginit := GuestInit()
	g, err := b.cached("guest-initrd", 60*time.Second, map[string]string{"rootfs": guestFS, "modules": guestMods, "init": ginit}, func(dir string) error {
		return b.packCpio(ctx, filepath.Join(dir, "initrd.cpio.gz"), filepath.Join(guestFS, "root"), guestMods, map[string]string{"init": ginit})
	})
	if err != nil {
		return nil, err
	}
	a.GuestRoot = filepath.Join(g, "initrd.cpio.gz")
	return a, nil
}

// rootfs debootstraps a minbase bookworm with pkgs, stripped of docs.
func (b *Builder) rootfs(ctx context.Context, role string, pkgs []string, v *Versions) (string, error) {
	inputs := map[string]string{"mirror": b.Mirror, "suite": "bookworm"}
	for _, p := range pkgs {
		inputs[p] = v.Of(p)
	}
	return b.cached("rootfs-"+role, 60*time.Second, inputs, func(dir string) error {
		root := filepath.Join(dir, "root")
		if err := b.run(ctx, dir, "debootstrap", "--variant=minbase", "--include="+strings.Join(pkgs, ","), "bookworm", root, b.Mirror); err != nil {
			return err
		}
		for _, p := range []string{"usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "var/cache/apt", "var/lib/apt/lists"} {
			if err := os.RemoveAll(filepath.Join(root, p)); err != nil {
				return fmt.Errorf("strip %s: %w", p, err)
			}
		}
		return nil
	})
}

// packCpio writes root, overlaid with the trees in overlays and the extra
// files (path -> content, mode 0755), as a gzip -1 cpio newc archive.
func (b *Builder) packCpio(ctx context.Context, out, root, modules string, files map[string]string) error {
	stage := out + ".stage"
	if err := b.run(ctx, "/", "cp", "-a", root+"/.", stage); err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if modules != "" {
		if err := b.run(ctx, "/", "cp", "-a", filepath.Join(modules, "lib")+"/.", filepath.Join(stage, "lib")); err != nil {
			return err
		}
	}
	for p, content := range files {
		if err := os.WriteFile(filepath.Join(stage, p), []byte(content), 0o755); err != nil {
			return fmt.Errorf("pack %s: %w", p, err)
		}
	}
	return b.run(ctx, stage, "sh", "-c", "find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > "+shellQuote(out))
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

// hashFiles hashes the contents of files (for keys of generated inputs).
func hashFiles(paths ...string) (string, error) {
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("hash: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(p), len(b))
		h.Write(b)
	}
	return fmt.Sprintf("%x", h.Sum(nil))[:16], nil
}
