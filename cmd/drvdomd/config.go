package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"drvdom/xenstore"
)

// Config is drvdomd's configuration. Sources, later ones winning: the
// defaults, /etc/drvdom/drvdomd.conf in the image (KEY=VALUE lines), the
// kernel command line (drvdom.KEY=VALUE), and xenstore
// (/local/domain/<self>/drvdom/KEY, written by dom0).
type Config struct {
	Backend  string   // "drvdom" (userspace backends) | "kernel" (xen-blkback/xen-netback + our hotplug)
	NIC      string   // passed-through NIC to enslave to Bridge ("" or "none": none)
	Bridge   string   // bridge for the NIC and the guests' vifs
	Modules  []string // modules to load at boot, in order
	DomID    int      // driver domain's id; -1: read "domid" from xenstore
	LogLevel slog.Level
	Watchdog bool // feed /dev/watchdog (xen_wdt) while running
	WaitNIC  int  // seconds to wait for the NIC to appear
	// Faults lets dom0 inject faults through FaultKey (the lab's crash
	// tests); never from xenstore's drvdom/ keys, only the image and the
	// kernel command line.
	Faults bool
	// Scratch are files created (sparse, if missing) at boot, e.g. the
	// file backings of guests' disks in the domain's tmpfs; their
	// allocated bytes are published for dom0 (see scratch.go).
	Scratch []ScratchFile
	// CPUProfile, if set, is where the backend worker writes its CPU
	// profile, one file per CPUProfileWindow (see profile.go); image and
	// kernel command line only.
	CPUProfile       string
	CPUProfileWindow time.Duration
	// BlkGrantCopy makes blkback move data with grant copy through local
	// bounce pages instead of mapping the frontends' pages (blkgrants=copy;
	// default map, with persistent grants).
	BlkGrantCopy bool
	// BlkRingThreads serves each io_uring ring of blkback from a thread
	// of its own (blkrings=threads; default shared: one reaper per
	// device; see blkback.Driver.RingThreads).
	BlkRingThreads bool
	// BlkFixed is the number of 128 KiB bounce buffers per vbd registered
	// with its io_uring (blkfixed=N, 0..4096; default DefaultBlkFixed;
	// 0: transfers go to the frontend's pages; see
	// blkback.Driver.FixedBuffers).
	BlkFixed int
}

// DefaultBlkFixed bounce buffers per vbd (4 MiB) cover a guest's 1 MiB
// reads or writes at QD4 in blkfront's 128 KiB requests.
const DefaultBlkFixed = 32

// BaseModules are loaded in every mode; BackendModules only in kernel mode
// (in drvdom mode the kernel's backends would race drvdomd for the devices).
var (
	BaseModules = []string{
		"xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs",
		"xen-pcifront", "xen_wdt", "nvme", "e1000", "bridge", "tun", "loop",
	}
	BackendModules = []string{"xen-blkback", "xen-netback"}
)

// DefaultConfig is the configuration without any source.
func DefaultConfig() Config {
	return Config{
		Backend:  "drvdom",
		NIC:      "eth0",
		Bridge:   "xenbr0",
		Modules:  append([]string(nil), BaseModules...),
		DomID:    -1,
		LogLevel: slog.LevelInfo,
		Watchdog: true,
		WaitNIC:  10,
		BlkFixed: DefaultBlkFixed,

		CPUProfileWindow: DefaultCPUProfileWindow,
	}
}

// Set applies one KEY=VALUE.
func (c *Config) Set(key, val string) error {
	val = strings.TrimSpace(val)
	switch key {
	case "backend":
		if val != "drvdom" && val != "kernel" {
			return fmt.Errorf("backend=%q: want drvdom or kernel", val)
		}
		c.Backend = val
	case "nic":
		if val == "none" {
			val = ""
		}
		if len(val) > 15 || strings.ContainsAny(val, "/ \t") {
			return fmt.Errorf("nic=%q: not an interface name", val)
		}
		c.NIC = val
	case "bridge":
		if val == "" || len(val) > 15 || strings.ContainsAny(val, "/ \t") {
			return fmt.Errorf("bridge=%q: not an interface name", val)
		}
		c.Bridge = val
	case "modules":
		c.Modules = nil
		for _, m := range strings.Split(val, ",") {
			if m = strings.TrimSpace(m); m != "" {
				c.Modules = append(c.Modules, m)
			}
		}
	case "domid":
		n, err := strconv.ParseUint(val, 10, 16)
		if err != nil || n >= 0x7FF0 {
			return fmt.Errorf("domid=%q: not a domain id", val)
		}
		c.DomID = int(n)
	case "loglevel":
		var l slog.Level
		if err := l.UnmarshalText([]byte(val)); err != nil {
			return fmt.Errorf("loglevel=%q: %w", val, err)
		}
		c.LogLevel = l
	case "watchdog":
		b, err := strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("watchdog=%q: %w", val, err)
		}
		c.Watchdog = b
	case "faults":
		b, err := strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("faults=%q: %w", val, err)
		}
		c.Faults = b
	case "scratch":
		files, err := ParseScratch(val)
		if err != nil {
			return fmt.Errorf("scratch=%q: %w", val, err)
		}
		c.Scratch = files
	case "blkgrants":
		return setChoice(&c.BlkGrantCopy, key, val, blkGrants)
	case "blkrings":
		return setChoice(&c.BlkRingThreads, key, val, blkRings)
	case "blkfixed":
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 || n > 4096 {
			return fmt.Errorf("blkfixed=%q: want 0..4096 buffers", val)
		}
		c.BlkFixed = n
	case "cpuprofile":
		dir, err := parseCPUProfileDir(val)
		if err != nil {
			return fmt.Errorf("cpuprofile=%q: %w", val, err)
		}
		c.CPUProfile = dir
	case "cpuprofile-window":
		d, err := parseCPUProfileWindow(val)
		if err != nil {
			return fmt.Errorf("cpuprofile-window=%q: %w", val, err)
		}
		c.CPUProfileWindow = d
	case "waitnic":
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 || n > 3600 {
			return fmt.Errorf("waitnic=%q: want seconds", val)
		}
		c.WaitNIC = n
	default:
		return fmt.Errorf("unknown key %q", key)
	}
	return nil
}

// ApplyFile applies KEY=VALUE lines ('#' comments).
func (c *Config) ApplyFile(r io.Reader, log *slog.Logger) error {
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			log.Warn("config: line without '='", "line", n)
			continue
		}
		if err := c.Set(strings.TrimSpace(k), v); err != nil {
			log.Warn("config file", "line", n, "err", err)
		}
	}
	return sc.Err()
}

// ApplyCmdline applies drvdom.KEY=VALUE words from a kernel command line.
func (c *Config) ApplyCmdline(cmdline string, log *slog.Logger) {
	for _, w := range strings.Fields(cmdline) {
		kv, ok := strings.CutPrefix(w, "drvdom.")
		if !ok {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			v = "1"
		}
		if err := c.Set(k, v); err != nil {
			log.Warn("kernel command line", "word", w, "err", err)
		}
	}
}

// XenstoreKeys are the keys ApplyXenstore looks for.
var XenstoreKeys = []string{"backend", "nic", "bridge", "loglevel"}

// ApplyXenstore applies /local/domain/<self>/drvdom/KEY for XenstoreKeys.
func (c *Config) ApplyXenstore(ctx context.Context, s interface {
	Read(ctx context.Context, path string) (string, error)
}, self uint16, log *slog.Logger) {
	base := "/local/domain/" + strconv.Itoa(int(self)) + "/drvdom/"
	for _, k := range XenstoreKeys {
		v, err := s.Read(ctx, base+k)
		if errors.Is(err, xenstore.ErrNotExist) {
			continue
		}
		if err != nil {
			log.Warn("config from xenstore", "key", base+k, "err", err)
			continue
		}
		if err := c.Set(k, v); err != nil {
			log.Warn("config from xenstore", "key", base+k, "err", err)
		}
	}
}

// A choice is a key's two values: [0] for false, [1] for true.
type choice [2]string

var (
	blkGrants = choice{"map", "copy"}
	blkRings  = choice{"shared", "threads"}
)

// setChoice sets *b from val, one of ch's values.
func setChoice(b *bool, key, val string, ch choice) error {
	switch val {
	case ch[0]:
		*b = false
	case ch[1]:
		*b = true
	default:
		return fmt.Errorf("%s=%q: want %s or %s", key, val, ch[0], ch[1])
	}
	return nil
}

// name is the value standing for b.
func (ch choice) name(b bool) string {
	if b {
		return ch[1]
	}
	return ch[0]
}
