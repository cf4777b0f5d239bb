package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"drvdom/initramfs/moddep"
	"drvdom/xenstore"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestConfigSources(t *testing.T) {
	c := DefaultConfig()
	if c.Backend != "drvdom" || c.NIC != "eth0" || c.Bridge != "xenbr0" || c.DomID != -1 {
		t.Fatalf("defaults %+v", c)
	}
	file := "# comment\nbackend=kernel\nbridge = br9\nbogus line\nnic=eth1\n"
	if err := c.ApplyFile(strings.NewReader(file), quiet); err != nil {
		t.Fatal(err)
	}
	if c.Backend != "kernel" || c.Bridge != "br9" || c.NIC != "eth1" {
		t.Errorf("after file: %+v", c)
	}
	c.ApplyCmdline("console=hvc0 root=/dev/ram0 drvdom.backend=drvdom drvdom.nic=none drvdom.domid=3 drvdom.loglevel=debug drvdom.modules=loop,tun drvdom.bogus=1 drvdom.bridge=", quiet)
	if c.Backend != "drvdom" || c.NIC != "" || c.DomID != 3 || c.LogLevel != slog.LevelDebug || !slices.Equal(c.Modules, []string{"loop", "tun"}) {
		t.Errorf("after cmdline: %+v", c)
	}
	if c.Bridge != "br9" {
		t.Errorf("an empty bridge was accepted: %q", c.Bridge)
	}
	if c.Faults {
		t.Error("faults on by default")
	}
	c.ApplyCmdline("drvdom.faults=1", quiet)
	if !c.Faults {
		t.Error("drvdom.faults=1 ignored")
	}
	if slices.Contains(XenstoreKeys, "faults") {
		t.Error("faults must not be settable from xenstore")
	}
	if c.BlkFixed != DefaultBlkFixed {
		t.Errorf("blkfixed %d by default, want %d", c.BlkFixed, DefaultBlkFixed)
	}
	c.ApplyCmdline("quiet drvdom.blkfixed=0", quiet)
	if c.BlkFixed != 0 || slices.Contains(XenstoreKeys, "blkfixed") {
		t.Errorf("drvdom.blkfixed=0: %d (or settable from xenstore)", c.BlkFixed)
	}
	for _, bad := range [][2]string{{"backend", "qemu"}, {"domid", "65535"}, {"nic", "a/b"}, {"waitnic", "-1"}, {"watchdog", "maybe"}, {"faults", "perhaps"},
		{"blkfixed", "-1"}, {"blkfixed", "4097"}, {"blkfixed", "many"}} {
		if err := c.Set(bad[0], bad[1]); err == nil {
			t.Errorf("Set(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

type mapReader map[string]string

func (m mapReader) Read(_ context.Context, p string) (string, error) {
	if v, ok := m[p]; ok {
		return v, nil
	}
	return "", fmt.Errorf("%s: %w", p, xenstore.ErrNotExist)
}

func TestConfigFromXenstore(t *testing.T) {
	c := DefaultConfig()
	c.ApplyXenstore(context.Background(), mapReader{
		"/local/domain/1/drvdom/backend": "kernel",
		"/local/domain/1/drvdom/bridge":  "xenbr1",
		"/local/domain/1/drvdom/nic":     "bad name",
	}, 1, quiet)
	if c.Backend != "kernel" || c.Bridge != "xenbr1" || c.NIC != "eth0" {
		t.Errorf("%+v", c)
	}
}

func TestWithout(t *testing.T) {
	got := without([]string{"xen-evtchn", "xen_blkback", "loop", "xen-netback"}, BackendModules)
	if !slices.Equal(got, []string{"xen-evtchn", "loop"}) {
		t.Errorf("without = %v", got)
	}
}

func TestModuleLoader(t *testing.T) {
	dir := t.TempDir()
	sys := t.TempDir()
	dep := "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n" +
		"kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n" +
		"kernel/net/llc/llc.ko:\n" +
		"kernel/drivers/block/loop.ko.xz:\n" +
		"kernel/drivers/net/tun.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"kernel/net/bridge/bridge.ko", "kernel/net/802/stp.ko", "kernel/net/llc/llc.ko", "kernel/drivers/block/loop.ko.xz"} {
		p := filepath.Join(dir, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// tun.ko is in modules.dep but not on disk; xenfs is built in; nope is nowhere.
	os.MkdirAll(filepath.Join(sys, "xenfs"), 0o755)
	l := &moduleLoader{dir: dir, log: quiet, sysfs: sys,
		params: moduleParams(`console=hvc0 bridge.x=1 drvdom.backend=drvdom loop.max_loop=64 loop.p="a b"`)}
	f, _ := os.Open(filepath.Join(dir, "modules.dep"))
	var err error
	l.deps, err = moddep.Parse(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	type loaded struct {
		content string
		params  string
		flags   int
	}
	var got []loaded
	l.finit = func(fd int, params string, flags int) error {
		b := make([]byte, 100)
		n, _ := unix.Pread(fd, b, 0)
		got = append(got, loaded{string(b[:n]), params, flags})
		if strings.Contains(string(b[:n]), "llc") {
			return unix.EEXIST // already loaded: fine
		}
		return nil
	}
	n, err := l.Load("bridge", "xenfs", "loop", "tun", "nope")
	if err == nil || !strings.Contains(err.Error(), "tun") && !strings.Contains(err.Error(), "nope") {
		t.Errorf("err = %v, want the missing module named", err)
	}
	want := []loaded{
		{"kernel/net/llc/llc.ko", "", 0}, {"kernel/net/802/stp.ko", "", 0}, {"kernel/net/bridge/bridge.ko", "x=1", 0},
		{"kernel/drivers/block/loop.ko.xz", `max_loop=64 p="a b"`, moduleInitCompressedFile},
	}
	if !slices.Equal(got, want) {
		t.Errorf("finit calls %v, want %v", got, want)
	}
	if n != 4 {
		t.Errorf("loaded %d, want 4", n)
	}
	// Loading again: /sys/module says they are there.
	for _, m := range []string{"llc", "stp", "bridge", "loop"} {
		os.MkdirAll(filepath.Join(sys, m), 0o755)
	}
	got = nil
	if _, err := l.Load("bridge", "loop"); err != nil || len(got) != 0 {
		t.Errorf("reload: err %v, calls %v", err, got)
	}
}

// TestModuleParams: module parameters on the kernel command line, as
// modprobe reads them.
func TestModuleParams(t *testing.T) {
	got := moduleParams(`BOOT_IMAGE=/vmlinuz console=hvc0 e1000.InterruptThrottleRate=2000 xen-blkback.max_ring_page_order=4 ` +
		`e1000.debug=3 quiet lab.msg="a b.c=d" .x=1 y.=2 nvme.poll_queues`)
	want := map[string]string{
		"e1000":       "InterruptThrottleRate=2000 debug=3",
		"xen_blkback": "max_ring_page_order=4",
		"lab":         `msg="a b.c=d"`,
		"nvme":        "poll_queues",
	}
	if !maps.Equal(got, want) {
		t.Errorf("moduleParams = %q, want %q", got, want)
	}
}

func TestModuleLoaderWithoutModulesDep(t *testing.T) {
	l := &moduleLoader{dir: t.TempDir(), log: quiet, sysfs: t.TempDir(), finit: func(int, string, int) error {
		t.Fatal("finit called")
		return nil
	}}
	if _, err := l.Load("bridge"); err == nil {
		t.Error("no error for a module that cannot be found")
	}
}

func TestConfigCPUProfile(t *testing.T) {
	c := DefaultConfig()
	if c.CPUProfile != "" || c.CPUProfileWindow != 10*time.Second {
		t.Fatalf("defaults: cpuprofile=%q window %v, want off and 10s", c.CPUProfile, c.CPUProfileWindow)
	}
	if err := c.ApplyFile(strings.NewReader("cpuprofile=/tmp/prof\n"), quiet); err != nil {
		t.Fatal(err)
	}
	c.ApplyCmdline("console=hvc0 drvdom.cpuprofile-window=2m30s", quiet)
	if c.CPUProfile != "/tmp/prof" || c.CPUProfileWindow != 150*time.Second {
		t.Errorf("after file and cmdline: cpuprofile=%q window %v", c.CPUProfile, c.CPUProfileWindow)
	}
	for _, bad := range []struct{ key, val, want string }{
		{"cpuprofile-window", "10", `cpuprofile-window="10": want a duration such as 10s`},
		{"cpuprofile-window", "fast", `cpuprofile-window="fast": want a duration`},
		{"cpuprofile-window", "500ms", `cpuprofile-window="500ms": 500ms is below the minimum 1s`},
		{"cpuprofile", "prof", `cpuprofile="prof": want a clean absolute directory`},
		{"cpuprofile", "/tmp/../prof", `cpuprofile="/tmp/../prof": want a clean absolute directory`},
	} {
		err := c.Set(bad.key, bad.val)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Set(%q, %q) = %v, want an error with %q", bad.key, bad.val, err, bad.want)
		}
	}
	if c.CPUProfile != "/tmp/prof" || c.CPUProfileWindow != 150*time.Second {
		t.Errorf("a bad value changed the config: cpuprofile=%q window %v", c.CPUProfile, c.CPUProfileWindow)
	}
	if err := c.Set("cpuprofile-window", "1s"); err != nil || c.CPUProfileWindow != time.Second {
		t.Errorf("the minimum 1s: %v, window %v", err, c.CPUProfileWindow)
	}
	c.ApplyCmdline("drvdom.cpuprofile=none", quiet)
	if c.CPUProfile != "" {
		t.Errorf("cpuprofile=none left %q", c.CPUProfile)
	}
	if slices.Contains(XenstoreKeys, "cpuprofile") || slices.Contains(XenstoreKeys, "cpuprofile-window") {
		t.Error("cpuprofile must not be settable from xenstore")
	}
}

// The two-valued keys: off by default, on from the kernel command line, a
// bad value refused by name and leaving the config as it was, not
// settable from xenstore, and printed as Set reads them.
func TestConfigChoices(t *testing.T) {
	for _, tc := range []struct {
		key, bad, wantErr string
		ch                choice
		field             func(*Config) bool
	}{
		{"blkgrants", "persistent", `blkgrants="persistent": want map or copy`, blkGrants, func(c *Config) bool { return c.BlkGrantCopy }},
		{"blkrings", "1", `blkrings="1": want shared or threads`, blkRings, func(c *Config) bool { return c.BlkRingThreads }},
	} {
		t.Run(tc.key, func(t *testing.T) {
			c := DefaultConfig()
			if tc.field(&c) {
				t.Fatalf("default: %s=%s, want %s", tc.key, tc.ch[1], tc.ch[0])
			}
			c.ApplyCmdline("console=hvc0 drvdom."+tc.key+"="+tc.ch[1], quiet)
			if !tc.field(&c) {
				t.Errorf("drvdom.%s=%s on the command line left %s", tc.key, tc.ch[1], tc.ch[0])
			}
			err := c.Set(tc.key, tc.bad)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Set(%s, %s) = %v", tc.key, tc.bad, err)
			}
			if !tc.field(&c) {
				t.Error("a bad value changed the config")
			}
			if err := c.Set(tc.key, tc.ch[0]); err != nil || tc.field(&c) {
				t.Errorf("%s=%s: %v, still %s", tc.key, tc.ch[0], err, tc.ch[1])
			}
			if slices.Contains(XenstoreKeys, tc.key) {
				t.Errorf("%s must not be settable from xenstore", tc.key)
			}
			if tc.ch.name(true) != tc.ch[1] || tc.ch.name(false) != tc.ch[0] {
				t.Errorf("%s: name does not print what Set reads", tc.key)
			}
		})
	}
}
