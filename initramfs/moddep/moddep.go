// Package moddep reads a kernel's modules.dep and puts modules in load
// order. Both the image builder (which trims a kernel's modules) and drvdomd
// (which loads them with finit_module at boot) use it; it has no
// dependencies so drvdomd stays small.
package moddep

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// Deps is a parsed modules.dep: module name -> its file and dependencies.
type Deps map[string]Entry

// Entry is one modules.dep line.
type Entry struct {
	Path string   // relative to /lib/modules/<ver>, e.g. kernel/drivers/xen/xen-evtchn.ko
	Deps []string // module names it needs (modules.dep lists the whole closure)
}

// Name is a module's canonical name from a file name or a user's spelling:
// base name without .ko and compression suffix, '-' as '_' (as the kernel
// and modprobe treat them as the same).
func Name(s string) string {
	s = path.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// Parse reads modules.dep ("path: dep dep ...", one module a line).
func Parse(r io.Reader) (Deps, error) {
	d := Deps{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		p, rest, ok := strings.Cut(l, ":")
		if !ok || p == "" {
			return nil, fmt.Errorf("modules.dep line %d: no ':' in %q", line, l)
		}
		e := Entry{Path: p}
		for _, dp := range strings.Fields(rest) {
			e.Deps = append(e.Deps, Name(dp))
		}
		d[Name(p)] = e
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.dep: %w", err)
	}
	return d, nil
}

// Order returns the modules named and everything they need, each once,
// dependencies before their users, in the order the names were given
// otherwise. Names not in d are returned in missing (they may be built in).
func (d Deps) Order(names ...string) (order []string, missing []string) {
	done := map[string]bool{}
	visiting := map[string]bool{}
	var visit func(n string)
	visit = func(n string) {
		if done[n] || visiting[n] {
			return // a cycle cannot happen in a depmod'd file; never loop
		}
		e, ok := d[n]
		if !ok {
			return
		}
		visiting[n] = true
		deps := append([]string(nil), e.Deps...)
		// modules.dep lists the closure; visiting each dep's own deps first
		// gives a correct order whatever order the line used.
		for _, dep := range deps {
			visit(dep)
		}
		visiting[n] = false
		done[n] = true
		order = append(order, n)
	}
	for _, raw := range names {
		n := Name(raw)
		if _, ok := d[n]; !ok {
			missing = append(missing, raw)
			continue
		}
		visit(n)
	}
	return order, missing
}

// Subset is the modules.dep for only the named modules (a closed set: every
// dependency of a listed module must be listed), sorted by path.
func (d Deps) Subset(names []string) (string, error) {
	set := map[string]bool{}
	for _, n := range names {
		set[Name(n)] = true
	}
	var lines []string
	for n := range set {
		e, ok := d[n]
		if !ok {
			return "", fmt.Errorf("module %s not in modules.dep", n)
		}
		deps := make([]string, 0, len(e.Deps))
		for _, dep := range e.Deps {
			de, ok := d[dep]
			if !ok || !set[dep] {
				return "", fmt.Errorf("module %s needs %s, which is not in the set", n, dep)
			}
			deps = append(deps, de.Path)
		}
		l := e.Path + ":"
		if len(deps) > 0 {
			l += " " + strings.Join(deps, " ")
		}
		lines = append(lines, l)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n", nil
}
