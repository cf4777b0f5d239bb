package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
)

// ErrNoCandidate is returned when apt has no installable version of a package.
var ErrNoCandidate = errors.New("no candidate version")

// ParsePolicyCandidate returns the "Candidate:" version of pkg in the output
// of `apt-cache policy pkg`.
func ParsePolicyCandidate(pkg string, out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "Candidate:"); ok {
			v = strings.TrimSpace(v)
			if v == "" || v == "(none)" {
				break
			}
			return v, nil
		}
	}
	return "", fmt.Errorf("apt-cache policy %s: %w", pkg, ErrNoCandidate)
}

var kernelDep = regexp.MustCompile(`\blinux-image-(\d[^\s,()]*-amd64)\b`)

// ParseKernelDepends returns the concrete kernel package and its release
// (e.g. "linux-image-6.1.0-48-amd64", "6.1.0-48-amd64") that the
// metapackage's `apt-cache show` output depends on.
func ParseKernelDepends(out []byte) (pkg, kver string, err error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if d, ok := strings.CutPrefix(line, "Depends:"); ok {
			if m := kernelDep.FindStringSubmatch(d); m != nil {
				return "linux-image-" + m[1], m[1], nil
			}
		}
		if line == "" { // first stanza only: it is the candidate's
			break
		}
	}
	return "", "", errors.New("apt-cache show linux-image-amd64: no linux-image-*-amd64 dependency")
}

// Packages names the apt packages the lab is made of.
var (
	XenPkg         = "xen-hypervisor-4.17-amd64"
	XenUtilsPkg    = "xen-utils-4.17"
	KernelMetaPkg  = "linux-image-amd64"
	Dom0RootfsPkgs = []string{XenUtilsPkg, "fio", "iperf3", "iproute2", "kmod", "procps"}
	GuestRootPkgs  = []string{"fio", "iperf3", "bash", "e2fsprogs", "iproute2", "kmod", "procps", "util-linux"}
	// ExtraRootPkgs are tools the lab's scripts use in every domain.
	ExtraRootPkgs = []string{"iputils-ping"}
)

// RootfsPkgs is the package set of the one rootfs shared by dom0, the
// shell driver domain and guests (one debootstrap instead of three).
func RootfsPkgs() []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range [][]string{Dom0RootfsPkgs, GuestRootPkgs, ExtraRootPkgs} {
		for _, p := range l {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// Versions are the resolved package versions every artifact is keyed by.
type Versions struct {
	KernelPkg string            // linux-image-6.1.0-N-amd64
	KernelVer string            // its version, e.g. 6.1.172-1
	KRelease  string            // uname -r, e.g. 6.1.0-48-amd64
	Pkgs      map[string]string // package -> candidate version (all others)
}

// Of returns the version of pkg ("" if unknown).
func (v *Versions) Of(pkg string) string { return v.Pkgs[pkg] }

// ParsePolicy returns every package's candidate version from the output of
// `apt-cache policy PKG...` (packages without a candidate are left out).
func ParsePolicy(out []byte) map[string]string {
	res := map[string]string{}
	var cur string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line != "" && line[0] != ' ' && strings.HasSuffix(line, ":") {
			cur = strings.TrimSuffix(line, ":")
			continue
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Candidate:"); ok && cur != "" {
			if v = strings.TrimSpace(v); v != "" && v != "(none)" {
				res[cur] = v
			}
		}
	}
	return res
}

// ResolveVersions asks apt for the candidate versions of every package the
// lab uses (two apt-cache calls: they are slow on a loaded machine).
func ResolveVersions(ctx context.Context) (*Versions, error) {
	v := &Versions{Pkgs: map[string]string{}}
	show, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", KernelMetaPkg).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache show %s: %w", KernelMetaPkg, err)
	}
	if v.KernelPkg, v.KRelease, err = ParseKernelDepends(show); err != nil {
		return nil, err
	}
	all := append([]string{KernelMetaPkg, v.KernelPkg, XenPkg}, RootfsPkgs()...)
	out, err := exec.CommandContext(ctx, "apt-cache", append([]string{"policy"}, all...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache policy: %w", err)
	}
	cand := ParsePolicy(out)
	for _, p := range all {
		c, ok := cand[p]
		if !ok {
			return nil, fmt.Errorf("apt-cache policy %s: %w", p, ErrNoCandidate)
		}
		v.Pkgs[p] = c
	}
	v.KernelVer = v.Pkgs[v.KernelPkg]
	return v, nil
}

func aptCandidate(ctx context.Context, pkg string) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "policy", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache policy %s: %w", pkg, err)
	}
	return ParsePolicyCandidate(pkg, out)
}

// installedVersion returns the version of pkg installed on the host, or ""
// when it is not (fully) installed.
func installedVersion(ctx context.Context, pkg string) string {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Status}\t${Version}", pkg).Output()
	if err != nil {
		return ""
	}
	st, ver, ok := strings.Cut(string(out), "\t")
	if !ok || st != "install ok installed" {
		return ""
	}
	return ver
}
