package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"drvdom/initramfs/moddep"
)

// moduleInitCompressedFile is MODULE_INIT_COMPRESSED_FILE (uapi/linux/module.h).
const moduleInitCompressedFile = 4

// moduleLoader loads kernel modules with finit_module, dependencies first,
// from /lib/modules/<release>/modules.dep. A module that is missing is one
// log line, never a hang or an abort.
type moduleLoader struct {
	dir   string // /lib/modules/<release>
	deps  moddep.Deps
	log   *slog.Logger
	sysfs string // /sys/module, to see what is loaded or built in
	finit func(fd int, params string, flags int) error
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func newModuleLoader(root string, log *slog.Logger) *moduleLoader {
	l := &moduleLoader{
		dir:   filepath.Join(root, kernelRelease()),
		log:   log,
		sysfs: "/sys/module",
		finit: unix.FinitModule,
	}
	f, err := os.Open(filepath.Join(l.dir, "modules.dep"))
	if err != nil {
		log.Error("no modules.dep: modules cannot be loaded (built-in drivers still work)", "dir", l.dir, "err", err)
		return l
	}
	defer f.Close()
	if l.deps, err = moddep.Parse(f); err != nil {
		log.Error("bad modules.dep", "dir", l.dir, "err", err)
	}
	return l
}

func (l *moduleLoader) present(name string) bool {
	_, err := os.Stat(filepath.Join(l.sysfs, name))
	return err == nil
}

// Load loads the named modules and their dependencies; it returns how many
// it loaded now and the first error (every failure is also logged).
func (l *moduleLoader) Load(names ...string) (int, error) {
	order, missing := l.deps.Order(names...)
	var first error
	for _, m := range missing {
		n := moddep.Name(m)
		if l.present(n) {
			l.log.Debug("module built in or already loaded", "module", n)
			continue
		}
		err := fmt.Errorf("module %s: not in %s/modules.dep and not built in", m, l.dir)
		l.log.Warn("module missing", "module", m, "dir", l.dir)
		if first == nil {
			first = err
		}
	}
	loaded := 0
	for _, n := range order {
		if l.present(n) {
			continue
		}
		if err := l.loadOne(n); err != nil {
			l.log.Warn("module load failed", "module", n, "err", err)
			if first == nil {
				first = err
			}
			continue
		}
		loaded++
		l.log.Info("module loaded", "module", n)
	}
	return loaded, first
}

func (l *moduleLoader) loadOne(name string) error {
	p := filepath.Join(l.dir, l.deps[name].Path)
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("module %s: %w", name, err)
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(p, ".xz") || strings.HasSuffix(p, ".zst") || strings.HasSuffix(p, ".gz") {
		flags |= moduleInitCompressedFile
	}
	if err := l.finit(int(f.Fd()), "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("module %s: finit_module %s: %w", name, p, err)
	}
	return nil
}
