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
	dir    string // /lib/modules/<release>
	deps   moddep.Deps
	log    *slog.Logger
	sysfs  string            // /sys/module, to see what is loaded or built in
	params map[string]string // module (with _) -> its parameters from the kernel command line
	finit  func(fd int, params string, flags int) error
}

// moduleParams returns the module parameters a kernel command line gives
// ("e1000.InterruptThrottleRate=2000": e1000 -> "InterruptThrottleRate=2000"),
// as modprobe passes them to a module it loads: the kernel itself applies
// them only to built-in code. Words in double quotes are one word, as the
// kernel splits its command line; '-' in a module's name is '_'.
func moduleParams(cmdline string) map[string]string {
	params := map[string]string{}
	for _, w := range cmdlineWords(cmdline) {
		eq := strings.IndexByte(w, '=')
		name := w
		if eq >= 0 {
			name = w[:eq]
		}
		dot := strings.IndexByte(name, '.')
		if dot <= 0 || dot == len(name)-1 {
			continue
		}
		mod := strings.ReplaceAll(w[:dot], "-", "_")
		if params[mod] != "" {
			params[mod] += " "
		}
		params[mod] += w[dot+1:]
	}
	return params
}

// cmdlineWords splits a kernel command line at blanks outside double
// quotes.
func cmdlineWords(s string) []string {
	var words []string
	var w strings.Builder
	quoted := false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			w.WriteRune(r)
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if w.Len() > 0 {
				words = append(words, w.String())
				w.Reset()
			}
		default:
			w.WriteRune(r)
		}
	}
	if w.Len() > 0 {
		words = append(words, w.String())
	}
	return words
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
	params := l.params[strings.ReplaceAll(name, "-", "_")]
	if err := l.finit(int(f.Fd()), params, flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("module %s: finit_module %s (parameters %q): %w", name, p, params, err)
	}
	if params != "" {
		l.log.Info("module parameters from the kernel command line", "module", name, "params", params)
	}
	return nil
}
