// Package initramfs builds the driver domain's image: u-root's init with
// drvdomd as its uinit, gosh as the debug shell, the kernel modules the
// driver domain needs (trimmed from a given kernel, with a depmod'd
// modules.dep) and drvdomd's config, as a gzip-compressed newc cpio.
package initramfs

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"

	"drvdom/initramfs/moddep"
)

// DefaultModules are the driver domain's modules, in load order (drvdomd
// loads them in this order; their dependencies come first).
var DefaultModules = []string{
	"xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs",
	"xen-pcifront", "xen_wdt", "nvme", "e1000", "bridge", "tun", "loop",
	"xen-blkback", "xen-netback",
}

// BusyboxCommands are u-root's commands in the image's busybox: the init
// and the shell.
var BusyboxCommands = []string{
	"github.com/u-root/u-root/cmds/core/init",
	"github.com/u-root/u-root/cmds/core/gosh",
}

// BinaryCommands are built as plain binaries: gobusybox rewrites packages in
// GOPATH mode and takes "drvdom/..." (no dot in the first element) for the
// standard library, so drvdom's own commands cannot go in the busybox.
var BinaryCommands = []string{"drvdom/cmd/drvdomd"}

// Paths inside the image.
const (
	ConfigPath      = "etc/drvdom/drvdomd.conf"
	DefaultConfText = "# drvdomd defaults; the kernel command line (drvdom.KEY=VALUE) overrides them.\nbackend=drvdom\nnic=eth0\nbridge=xenbr0\n"
)

// Options says what to build.
type Options struct {
	Output        string   // .cpio.gz path
	KernelVersion string   // default: the newest under ModulesRoot
	ModulesRoot   string   // default /lib/modules
	Modules       []string // default DefaultModules
	Config        string   // drvdomd.conf contents; default DefaultConfText
	ModuleDir     string   // Go module root to build drvdomd from; default: found from the working dir
	TempDir       string   // scratch; default os.MkdirTemp
	Log           *slog.Logger
}

// Result describes what Build wrote.
type Result struct {
	KernelVersion string
	Modules       []string // module files in the image, relative to lib/modules/<ver>
	Missing       []string // requested modules the kernel does not have as modules
	Size          int64    // compressed bytes
}

// NewestKernel is the highest-sorting directory under root with a modules.dep.
func NewestKernel(root string) (string, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return "", fmt.Errorf("list kernels: %w", err)
	}
	var vers []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(root, e.Name(), "modules.dep")); err == nil {
			vers = append(vers, e.Name())
		}
	}
	if len(vers) == 0 {
		return "", fmt.Errorf("no kernel with modules.dep under %s", root)
	}
	sort.Strings(vers)
	return vers[len(vers)-1], nil
}

// StageModules copies the named modules and their dependencies from
// root/ver into dst/lib/modules/ver and writes a modules.dep for them
// (depmod -b when depmod is installed, else the trimmed original).
func StageModules(root, ver string, names []string, dst string, log *slog.Logger) (files, missing []string, err error) {
	src := filepath.Join(root, ver)
	f, err := os.Open(filepath.Join(src, "modules.dep"))
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s: %w", ver, err)
	}
	deps, err := moddep.Parse(f)
	f.Close()
	if err != nil {
		return nil, nil, err
	}
	builtin := readBuiltin(filepath.Join(src, "modules.builtin"))
	order, miss := deps.Order(names...)
	for _, m := range miss {
		if builtin[moddep.Name(m)] {
			log.Info("module is built in", "module", m)
			continue
		}
		missing = append(missing, m)
	}
	out := filepath.Join(dst, "lib", "modules", ver)
	for _, n := range order {
		rel := deps[n].Path
		if err := copyFile(filepath.Join(src, rel), filepath.Join(out, rel)); err != nil {
			return nil, nil, err
		}
		files = append(files, rel)
	}
	for _, meta := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"} {
		if err := copyFile(filepath.Join(src, meta), filepath.Join(out, meta)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, err
		}
	}
	if dm, lerr := exec.LookPath("depmod"); lerr == nil {
		if b, err := exec.Command(dm, "-b", dst, ver).CombinedOutput(); err != nil {
			return nil, nil, fmt.Errorf("depmod -b %s %s: %w: %s", dst, ver, err, b)
		}
	} else {
		sub, err := deps.Subset(order)
		if err != nil {
			return nil, nil, err
		}
		if err := os.WriteFile(filepath.Join(out, "modules.dep"), []byte(sub), 0o644); err != nil {
			return nil, nil, err
		}
	}
	return files, missing, nil
}

func readBuiltin(p string) map[string]bool {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	m := map[string]bool{}
	for _, l := range strings.Fields(string(b)) {
		m[moddep.Name(l)] = true
	}
	return m
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// FindModuleRoot walks up from dir to the directory holding go.mod.
func FindModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Build writes the image.
func Build(o Options) (*Result, error) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	if o.Output == "" {
		return nil, errors.New("initramfs: no output path")
	}
	if o.ModulesRoot == "" {
		o.ModulesRoot = "/lib/modules"
	}
	if len(o.Modules) == 0 {
		o.Modules = DefaultModules
	}
	if o.Config == "" {
		o.Config = DefaultConfText
	}
	var err error
	if o.KernelVersion == "" {
		if o.KernelVersion, err = NewestKernel(o.ModulesRoot); err != nil {
			return nil, err
		}
	}
	if o.ModuleDir == "" {
		if o.ModuleDir, err = FindModuleRoot("."); err != nil {
			return nil, err
		}
	}
	tmp := o.TempDir
	if tmp == "" {
		if tmp, err = os.MkdirTemp("", "drvdom-initramfs-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
	}
	stage := filepath.Join(tmp, "stage")
	files, missing, err := StageModules(o.ModulesRoot, o.KernelVersion, o.Modules, stage, log)
	if err != nil {
		return nil, err
	}
	for _, m := range missing {
		log.Warn("module not in this kernel", "module", m, "kernel", o.KernelVersion)
	}
	etc := filepath.Join(stage, "etc", "drvdom")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(stage, ConfigPath), []byte(o.Config), 0o644); err != nil {
		return nil, err
	}

	cpioPath := filepath.Join(tmp, "image.cpio")
	buildTmp := filepath.Join(tmp, "build")
	if err := os.MkdirAll(buildTmp, 0o755); err != nil {
		return nil, err
	}
	env := golang.Default(golang.DisableCGO(), golang.WithWorkingDir(o.ModuleDir), golang.WithGOOS("linux"), golang.WithGOARCH("amd64"))
	ul := llog.New(slog.LevelInfo, func(format string, v ...any) {
		log.Info("u-root: " + strings.TrimSpace(fmt.Sprintf(format, v...)))
	})
	err = uimage.Create(ul,
		uimage.WithReplaceEnv(env),
		uimage.WithBaseArchive(uimage.DefaultRamfs()),
		uimage.WithCPIOOutput(cpioPath),
		uimage.WithTempDir(buildTmp),
		uimage.WithBusyboxCommands(BusyboxCommands...),
		uimage.WithBinaryCommands(BinaryCommands...),
		uimage.WithInit("init"),
		uimage.WithUinitCommand("drvdomd"),
		uimage.WithShell("gosh"),
		uimage.WithSkipLDD(),
		uimage.WithFiles(
			filepath.Join(stage, "lib")+":lib",
			filepath.Join(stage, "etc", "drvdom")+":etc/drvdom",
		),
	)
	if err != nil {
		return nil, fmt.Errorf("u-root: %w", err)
	}
	size, err := gzipFile(cpioPath, o.Output)
	if err != nil {
		return nil, err
	}
	return &Result{KernelVersion: o.KernelVersion, Modules: files, Missing: missing, Size: size}, nil
}

func gzipFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return 0, err
	}
	zw, err := gzip.NewWriterLevel(out, gzip.BestCompression)
	if err != nil {
		out.Close()
		return 0, err
	}
	if _, err := io.Copy(zw, in); err != nil {
		out.Close()
		return 0, err
	}
	if err := zw.Close(); err != nil {
		out.Close()
		return 0, err
	}
	if err := out.Close(); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return 0, err
	}
	st, err := os.Stat(dst)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}
