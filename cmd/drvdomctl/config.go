package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// DomainConfig is the driver domain as xl sees it.
type DomainConfig struct {
	Name    string
	Kernel  string
	Ramdisk string
	Memory  int // MiB
	VCPUs   int
	PCI     []string // BDFs, "0000:00:05.0" (options after a comma allowed)
	Backend string   // "kernel" | "drvdom"
	NIC     string   // passed-through NIC inside the driver domain
	Bridge  string
	Extra   []string // further kernel command-line words
	// InsecureNoIOMMU is set when the user overrode the IOMMU refusal; the
	// config then says so in a comment.
	InsecureNoIOMMU bool
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	bdfRE  = regexp.MustCompile(`^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7](@[0-9a-fA-F]{1,2})?(,[a-z_]+=[A-Za-z0-9_]+)*$`)
	ifRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
)

// Validate checks what xl would otherwise choke on, or worse, misparse.
func (c *DomainConfig) Validate() error {
	if !nameRE.MatchString(c.Name) {
		return fmt.Errorf("bad domain name %q", c.Name)
	}
	if c.Kernel == "" || c.Ramdisk == "" {
		return errors.New("kernel and ramdisk are required")
	}
	for _, s := range []string{c.Kernel, c.Ramdisk} {
		if !xlSafe(s) {
			return fmt.Errorf("path %q cannot be written into an xl config", s)
		}
	}
	if c.Memory < 64 || c.Memory > 1<<20 {
		return fmt.Errorf("memory %d MiB out of range (64..1048576)", c.Memory)
	}
	if c.VCPUs < 1 || c.VCPUs > 128 {
		return fmt.Errorf("vcpus %d out of range (1..128)", c.VCPUs)
	}
	for _, p := range c.PCI {
		if !bdfRE.MatchString(p) {
			return fmt.Errorf("bad PCI device %q (want [DDDD:]BB:DD.F)", p)
		}
	}
	switch c.Backend {
	case "kernel", "drvdom":
	default:
		return fmt.Errorf("backend %q: want kernel or drvdom", c.Backend)
	}
	for _, s := range []string{c.NIC, c.Bridge} {
		if s != "" && !ifRE.MatchString(s) {
			return fmt.Errorf("bad interface name %q", s)
		}
	}
	for _, w := range c.Extra {
		if !xlSafe(w) || strings.ContainsAny(w, " \t") {
			return fmt.Errorf("bad extra kernel argument %q", w)
		}
	}
	return nil
}

func xlSafe(s string) bool {
	return !strings.ContainsAny(s, "\"\\\n\r'\x00")
}

// CommandLine is the driver domain kernel's command line.
func (c *DomainConfig) CommandLine() string {
	words := []string{"console=hvc0", "drvdom.backend=" + c.Backend}
	if c.NIC != "" {
		words = append(words, "drvdom.nic="+c.NIC)
	}
	if c.Bridge != "" {
		words = append(words, "drvdom.bridge="+c.Bridge)
	}
	words = append(words, c.Extra...)
	return strings.Join(words, " ")
}

// Render writes the xl config.
func (c *DomainConfig) Render(w io.Writer) error {
	if err := c.Validate(); err != nil {
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# drvdom driver domain, written by drvdomctl config\n")
	if c.InsecureNoIOMMU && len(c.PCI) > 0 {
		fmt.Fprintf(&b, "# INSECURE: this host has no IOMMU; the devices below can DMA into any domain's memory.\n")
	}
	fmt.Fprintf(&b, "name = %q\n", c.Name)
	fmt.Fprintf(&b, "type = \"pv\"\n")
	fmt.Fprintf(&b, "kernel = %q\n", c.Kernel)
	fmt.Fprintf(&b, "ramdisk = %q\n", c.Ramdisk)
	fmt.Fprintf(&b, "extra = %q\n", c.CommandLine())
	fmt.Fprintf(&b, "memory = %d\n", c.Memory)
	fmt.Fprintf(&b, "maxmem = %d\n", c.Memory)
	fmt.Fprintf(&b, "vcpus = %d\n", c.VCPUs)
	fmt.Fprintf(&b, "driver_domain = 1\n")
	fmt.Fprintf(&b, "on_watchdog = \"restart\"\n")
	fmt.Fprintf(&b, "on_crash = \"restart\"\n")
	fmt.Fprintf(&b, "on_poweroff = \"destroy\"\n")
	fmt.Fprintf(&b, "on_reboot = \"restart\"\n")
	if len(c.PCI) > 0 {
		q := make([]string, len(c.PCI))
		for i, p := range c.PCI {
			q[i] = strconv.Quote(p)
		}
		fmt.Fprintf(&b, "pci = [ %s ]\n", strings.Join(q, ", "))
	}
	_, err := w.Write(b.Bytes())
	return err
}

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

func defaultKernel() string {
	if v, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		return "/boot/vmlinuz-" + strings.TrimSpace(string(v))
	}
	return ""
}

func cmdConfig(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger, plat Platform) int {
	fs := flag.NewFlagSet("drvdomctl config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := DomainConfig{}
	var pci, extra listFlag
	fs.StringVar(&c.Name, "name", "drvdom", "driver domain name")
	fs.StringVar(&c.Kernel, "kernel", defaultKernel(), "driver domain kernel")
	fs.StringVar(&c.Ramdisk, "ramdisk", "/var/lib/drvdom/drvdom.cpio.gz", "driver domain image (initramfs/cmd/mkimage)")
	fs.IntVar(&c.Memory, "memory", 256, "memory in MiB")
	fs.IntVar(&c.VCPUs, "vcpus", 1, "virtual CPUs")
	fs.Var(&pci, "pci", "PCI device to pass through, BDF (repeatable or comma-separated)")
	fs.StringVar(&c.Backend, "backend", "drvdom", "who serves the devices: drvdom (userspace) or kernel (xen-blkback/xen-netback)")
	fs.StringVar(&c.NIC, "nic", "eth0", "passed-through NIC inside the driver domain (empty: none)")
	fs.StringVar(&c.Bridge, "bridge", "xenbr0", "bridge inside the driver domain")
	fs.Var(&extra, "extra", "extra kernel argument (repeatable)")
	out := fs.String("o", "-", "output file (- for stdout)")
	insecure := fs.Bool("insecure-no-iommu", false, "write a PCI passthrough config although Xen has no IOMMU (devices can DMA anywhere)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "drvdomctl config: unexpected arguments %q\n", fs.Args())
		return 2
	}
	c.PCI, c.Extra = pci, extra
	if err := c.Validate(); err != nil {
		fmt.Fprintf(stderr, "drvdomctl config: %v\n", err)
		return 2
	}
	if len(c.PCI) > 0 {
		st, err := ProbeIOMMU(ctx, plat)
		switch {
		case err != nil && !*insecure:
			fmt.Fprintf(stderr, "drvdomctl config: refusing PCI passthrough: %v\n(pass --insecure-no-iommu to write it anyway)\n", err)
			return 1
		case err == nil && st.Present:
			log.Info("IOMMU present", "evidence", st.Why)
		case !*insecure:
			fmt.Fprintf(stderr, "drvdomctl config: refusing PCI passthrough: Xen has no IOMMU (%s).\n"+
				"Without an IOMMU the driver domain can program its devices to DMA into any domain's memory,\n"+
				"which defeats the point of a driver domain. Boot Xen with iommu=1 on IOMMU hardware,\n"+
				"or pass --insecure-no-iommu to write the config anyway.\n", st.Why)
			return 1
		default:
			c.InsecureNoIOMMU = true
			fmt.Fprintf(stderr, "\n!!! WARNING: --insecure-no-iommu: Xen has no IOMMU; the driver domain's devices\n"+
				"!!! can DMA into ANY domain's memory, dom0 included. This driver domain isolates nothing.\n"+
				"!!! (note: xl create refuses passthrough without an IOMMU anyway.)\n\n")
			log.Warn("writing PCI passthrough config without an IOMMU", "devices", c.PCI)
		}
	}
	var w io.Writer = stdout
	if *out != "-" {
		var b bytes.Buffer
		if err := c.Render(&b); err != nil {
			fmt.Fprintf(stderr, "drvdomctl config: %v\n", err)
			return 1
		}
		if err := os.WriteFile(*out, b.Bytes(), 0o644); err != nil {
			fmt.Fprintf(stderr, "drvdomctl config: %v\n", err)
			return 1
		}
		return 0
	}
	if err := c.Render(w); err != nil {
		fmt.Fprintf(stderr, "drvdomctl config: %v\n", err)
		return 1
	}
	return 0
}
