// Command xenlab builds the Xen-in-QEMU lab from Debian packages and boots it.
//
//	xenlab build
//	xenlab run  [flags]                 driver domain + guest: fio and iperf3, summary table
//	xenlab run  --guest-script FILE     run FILE with bash in the guest; its exit code and output
//	xenlab run  --drvdom-script FILE    run FILE in the driver domain
//	xenlab e2e  [--backend=kernel|drvdom|both] [flags]
//	xenlab bench
//	xenlab clean-cache
//
// Common flags: --backend=kernel|drvdom (drvdom.backend= for the driver domain),
// --drvdom-image auto|shell|PATH (default auto: our u-root image, built by
// `xenlab image` into the cache and reused while the sources are unchanged;
// shell: the debootstrap rootfs with the lab's scripts; PATH: a given image),
// --out DIR, --timeout D, --keep, -v.
//
// With our image, --backend=kernel runs the kernel's xen-blkback and
// xen-netback with drvdomd as their script-free hotplug daemon, and
// --backend=drvdom runs drvdomd's own backends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"drvdom/initramfs"
	"drvdom/internal/lab"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	p := lab.NewProgress(os.Stderr)
	var err error
	code := 0
	switch os.Args[1] {
	case "build":
		_, err = build(ctx, p)
	case "run":
		code, err = runCmd(ctx, p, os.Args[2:])
	case "e2e":
		code, err = e2eCmd(ctx, p, os.Args[2:])
	case "image":
		err = imageCmd(ctx, p, os.Args[2:])
	case "faults":
		code, err = faultsCmd(ctx, p, os.Args[2:])
	case "soak":
		code, err = soakCmd(ctx, p, os.Args[2:])
	case "bench":
		code, err = lab.BenchMain(ctx, p, os.Args[2:], os.Stdout,
			func(ctx context.Context) (*lab.Artifacts, error) { return build(ctx, p) },
			func(ctx context.Context, dir string) (string, error) {
				s := lab.Scenario{Backend: lab.BackendDrvdom}
				err := needDrvdomd(ctx, p, &s, dir)
				return s.Drvdomd, err
			})
	case "clean-cache":
		var dir string
		if dir, err = lab.DefaultCacheDir(); err == nil {
			p.Printf("removing %s", dir)
			err = os.RemoveAll(dir)
		}
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "xenlab:", err)
		if code == 0 {
			code = 1
		}
	}
	stop()
	os.Exit(code)
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: xenlab build
       xenlab run [--guest-script FILE] [--drvdom-script FILE] [--no-baseline] [common flags]
       xenlab e2e [--backend=kernel|drvdom|both] [common flags]
       xenlab image [-o out/drvdom.cpio.gz]   the u-root driver-domain image (package initramfs) for the lab's kernel
       xenlab bench
       xenlab soak [--guests 3] [--duration 10m]   guests with fio/iperf3, detach/attach and restarts, leak checks (issue 8)
       xenlab faults [common flags]        crash-only and watchdog scenarios (issue 6)
       xenlab clean-cache
common flags: --backend=kernel|drvdom --drvdom-image PATH --drvdomd PATH --kernel-hotplug=script|drvdomd
              --disk-target PATH --out DIR --timeout D --keep -v`)
	os.Exit(2)
}

func build(ctx context.Context, p *lab.Progress) (*lab.Artifacts, error) {
	if err := lab.Ensure(ctx, p); err != nil {
		return nil, err
	}
	dir, err := lab.DefaultCacheDir()
	if err != nil {
		return nil, err
	}
	b := &lab.Builder{Cache: lab.Cache{Dir: dir}, Progress: p}
	return b.Build(ctx)
}

// common are the flags every boot takes.
type common struct {
	backend       string
	drvdomImage   string
	drvdomd       string
	kernelHotplug string
	drvdomArgs    string
	guestArgs     string
	diskTarget    string
	out           string
	timeout       time.Duration
	keep          bool
	verbose       bool
	labHeld       bool // the command holds the lab lock across its boots
}

func (c *common) register(fs *flag.FlagSet, defTimeout time.Duration) {
	fs.StringVar(&c.backend, "backend", lab.BackendKernel, "driver domain backend: kernel|drvdom (passed as drvdom.backend=)")
	fs.StringVar(&c.drvdomImage, "drvdom-image", ImageAuto, "driver domain: auto (our u-root image, built into the cache when the sources changed), shell (the debootstrap rootfs with the lab's scripts) or a cpio[.gz] PATH")
	fs.StringVar(&c.drvdomd, "drvdomd", "", "drvdomd binary for the shell driver domain (default: built from this repo when needed)")
	fs.StringVar(&c.kernelHotplug, "kernel-hotplug", lab.HotplugScript, "who does the kernel backends' hotplug in the shell driver domain: script|drvdomd")
	fs.StringVar(&c.drvdomArgs, "drvdom-args", "", "extra driver domain kernel command line (e.g. drvdom.loglevel=debug)")
	fs.StringVar(&c.guestArgs, "guest-args", "", "extra guest kernel command line (e.g. xen_blkfront.max_indirect_segments=256)")
	fs.StringVar(&c.diskTarget, "disk-target", lab.NVMeTarget, "the guest disk's path inside the driver domain")
	fs.StringVar(&c.out, "out", "", "run directory (default $XDG_CACHE_HOME/drvdom/runs/<time>)")
	fs.DurationVar(&c.timeout, "timeout", defTimeout, "whole-boot timeout; QEMU is killed after it")
	fs.BoolVar(&c.keep, "keep", false, "keep the run directory's disk image and ramdisks")
	fs.BoolVar(&c.verbose, "v", false, "copy the serial console to stderr")
}

func (c *common) outDir(suffix string) (string, error) {
	if c.out != "" {
		return filepath.Abs(c.out)
	}
	dir, err := lab.DefaultCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "runs", time.Now().UTC().Format("20060102-150405")+suffix), nil
}

// boot prepares the run directory for s and boots it. It returns the run's
// result and its collected report.
func boot(ctx context.Context, p *lab.Progress, a *lab.Artifacts, c *common, s lab.Scenario, suffix string) (*lab.Report, error) {
	out, err := c.outDir(suffix)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	if s.DrvdomImage, err = resolveImage(ctx, p, a, s.DrvdomImage); err != nil {
		return nil, err
	}
	if err := needDrvdomd(ctx, p, &s, filepath.Join(out, "bin")); err != nil {
		return nil, err
	}
	if s.DrvdomImage != "" {
		if s.DrvdomImage, err = filepath.Abs(s.DrvdomImage); err != nil {
			return nil, err
		}
	}
	done := p.Step(fmt.Sprintf("prepare %s (driver domain: %s, backend=%s)", out, s.DrvdomKind(), s.Backend), 3*time.Second)
	err = s.Prepare(a, out)
	done(err)
	if err != nil {
		return nil, err
	}
	return c.runPrepared(ctx, p, a, s, out)
}

// runPrepared boots the run directory dir, already Prepared for s, and
// collects its report. A failed domain is in the report; any other error
// (QEMU, the lab lock) is returned.
func (c *common) runPrepared(ctx context.Context, p *lab.Progress, a *lab.Artifacts, s lab.Scenario, dir string) (*lab.Report, error) {
	opts := lab.RunOptions{Out: dir, Timeout: c.timeout, LabHeld: c.labHeld}
	if c.verbose {
		opts.Echo = os.Stderr
	}
	res, runErr := lab.Run(ctx, a, opts, p)
	if !c.keep {
		lab.Cleanup(dir)
	}
	rep := lab.Collect(dir, res)
	rep.Backend = s.Backend
	if runErr != nil && !errors.Is(runErr, lab.ErrDomainFailed) {
		return rep, runErr
	}
	return rep, nil
}

// printChecks prints one PASS/FAIL line per check, names padded to width,
// and counts them.
func printChecks(checks []lab.Check, width int) (pass, fail int) {
	for _, ch := range checks {
		st := "PASS"
		if ch.Pass {
			pass++
		} else {
			fail++
			st = "FAIL"
		}
		fmt.Printf("%s %-*s %s\n", st, width, ch.Name, ch.Detail)
	}
	return pass, fail
}

func (c *common) scenario() (lab.Scenario, error) {
	if c.backend != lab.BackendKernel && c.backend != lab.BackendDrvdom {
		return lab.Scenario{}, fmt.Errorf("--backend=%s: want kernel or drvdom", c.backend)
	}
	if c.kernelHotplug != lab.HotplugScript && c.kernelHotplug != lab.HotplugDrvdomd {
		return lab.Scenario{}, fmt.Errorf("--kernel-hotplug=%s: want script or drvdomd", c.kernelHotplug)
	}
	return lab.Scenario{Backend: c.backend, DrvdomImage: c.drvdomImage, DiskTarget: c.diskTarget,
		Drvdomd: c.drvdomd, KernelHotplug: c.kernelHotplug, DrvdomArgs: c.drvdomArgs, GuestArgs: c.guestArgs}, nil
}

// needDrvdomd builds drvdomd from this repository into dir when the shell
// driver domain will run it and no binary was given.
func needDrvdomd(ctx context.Context, p *lab.Progress, s *lab.Scenario, dir string) error {
	if s.DrvdomImage != "" || s.Drvdomd != "" {
		return nil
	}
	if s.Backend != lab.BackendDrvdom && s.KernelHotplug != lab.HotplugDrvdomd {
		return nil
	}
	root, err := initramfs.FindModuleRoot(".")
	if err != nil {
		return fmt.Errorf("drvdomd: %w", err)
	}
	out := filepath.Join(dir, "drvdomd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("drvdomd: %w", err)
	}
	done := p.Step("go build ./cmd/drvdomd (static, for the shell driver domain)", 20*time.Second)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/drvdomd")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	b, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("go build ./cmd/drvdomd: %w\n%s", err, b)
	}
	done(err)
	s.Drvdomd = out
	return err
}

// Driver domain kinds --drvdom-image takes besides a path.
const (
	ImageAuto  = "auto"
	ImageShell = "shell"
)

// resolveImage turns --drvdom-image into a Scenario.DrvdomImage: "" for the
// shell driver domain, the cached image for auto, else the path given.
func resolveImage(ctx context.Context, p *lab.Progress, a *lab.Artifacts, spec string) (string, error) {
	switch spec {
	case "", ImageShell:
		return "", nil
	case ImageAuto:
		return autoImage(ctx, p, a)
	}
	return spec, nil
}

// autoImage returns our image for the lab's kernel, built into the cache
// (<cache>/image/<key>/drvdom.cpio.gz) unless one of the same sources,
// kernel and module set is there. Older images are removed.
func autoImage(ctx context.Context, p *lab.Progress, a *lab.Artifacts) (string, error) {
	root, err := initramfs.FindModuleRoot(".")
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	src, err := lab.SourceHash(root)
	if err != nil {
		return "", err
	}
	dir, err := lab.DefaultCacheDir()
	if err != nil {
		return "", err
	}
	c := lab.Cache{Dir: dir}
	inputs := map[string]string{"source": src, "kernel": a.Versions.KRelease, "modules-root": a.ModulesRoot,
		"modules": strings.Join(initramfs.DefaultModules, ","), "config": initramfs.DefaultConfText}
	key := lab.Key("image", inputs)
	const name = "drvdom.cpio.gz"
	if c.Ready("image", key) {
		p.Printf("image: cached (%s, sources %s)", key, src)
		return filepath.Join(c.Path("image", key), name), nil
	}
	done := p.Step(fmt.Sprintf("image: u-root image with drvdomd (sources %s) and %s's modules", src, a.Versions.KRelease), 45*time.Second)
	var res *initramfs.Result
	out, err := c.Build("image", key, inputs, func(tmp string) error {
		var err error
		res, err = initramfs.Build(initramfs.Options{Output: filepath.Join(tmp, name), KernelVersion: a.Versions.KRelease,
			ModulesRoot: a.ModulesRoot, ModuleDir: root, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		return err
	})
	done(err)
	if err != nil {
		return "", err
	}
	p.Printf("image %s: %d KB, %d modules, missing %v", filepath.Join(out, name), res.Size>>10, len(res.Modules), res.Missing)
	if ents, err := os.ReadDir(filepath.Join(dir, "image")); err == nil {
		for _, e := range ents {
			if e.Name() != key {
				os.RemoveAll(filepath.Join(dir, "image", e.Name()))
			}
		}
	}
	return filepath.Join(out, name), nil
}

func imageCmd(ctx context.Context, p *lab.Progress, args []string) error {
	fs := flag.NewFlagSet("image", flag.ExitOnError)
	out := fs.String("o", filepath.Join("out", "drvdom.cpio.gz"), "output image (gzip-compressed cpio)")
	_ = fs.Parse(args)
	a, err := build(ctx, p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	done := p.Step(fmt.Sprintf("u-root image with drvdomd and %s's modules -> %s", a.Versions.KRelease, *out), 30*time.Second)
	res, err := initramfs.Build(initramfs.Options{Output: *out, KernelVersion: a.Versions.KRelease, ModulesRoot: a.ModulesRoot,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	done(err)
	if err != nil {
		return err
	}
	p.Printf("image %s: %d KB, %d modules, missing %v", *out, res.Size>>10, len(res.Modules), res.Missing)
	return nil
}

func readScript(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("script: %w", err)
	}
	return string(b), nil
}

func runCmd(ctx context.Context, p *lab.Progress, args []string) (int, error) {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var c common
	c.register(fs, 15*time.Minute)
	guestScript := fs.String("guest-script", "", "run FILE with bash in the guest once its disk and NIC are up (default: fio + iperf3)")
	ddScript := fs.String("drvdom-script", "", "run FILE with bash in the driver domain before the guest starts (default: fio baseline on the NVMe)")
	noBaseline := fs.Bool("no-baseline", false, "skip the fio baseline inside the driver domain")
	noGuest := fs.Bool("no-guest", false, "boot the driver domain only")
	_ = fs.Parse(args)
	s, err := c.scenario()
	if err != nil {
		return 2, err
	}
	if s.GuestScript, err = readScript(*guestScript); err != nil {
		return 2, err
	}
	if s.DrvdomScript, err = readScript(*ddScript); err != nil {
		return 2, err
	}
	custom := *guestScript != "" || *ddScript != ""
	if *guestScript == "" && !custom {
		s.GuestScript = lab.GuestBenchScript
	}
	if *ddScript == "" && !custom && !*noBaseline && (s.DrvdomImage == "" || s.DrvdomImage == ImageShell) {
		s.DrvdomScript = lab.DrvdomBaselineScript(s.DiskTarget)
	}
	s.NoGuest = *noGuest
	a, err := build(ctx, p)
	if err != nil {
		return 1, err
	}
	rep, err := boot(ctx, p, a, &c, s, "-run")
	if rep != nil {
		rep.Print(os.Stdout)
	}
	if err != nil {
		return 1, err
	}
	if custom {
		code := 0
		for _, sr := range []struct {
			label string
			set   bool
			r     *lab.ScriptResult
		}{{"drvdom.sh", *ddScript != "", rep.DrvdomScript}, {"guest.sh", *guestScript != "", rep.GuestScript}} {
			if !sr.set {
				continue
			}
			if sr.r == nil || !sr.r.Finished {
				fmt.Printf("%s: did not finish\n", sr.label)
				code = 1
				continue
			}
			fmt.Printf("--- %s output ---\n%s--- %s exit code %d ---\n", sr.label, sr.r.Output, sr.label, sr.r.ExitCode)
			if sr.r.ExitCode != 0 && code == 0 {
				code = sr.r.ExitCode
			}
		}
		if !rep.OK() && code == 0 {
			code = 1
		}
		return code, nil
	}
	rep.PrintBench(os.Stdout)
	if !rep.OK() {
		return 1, nil
	}
	return 0, nil
}

func e2eCmd(ctx context.Context, p *lab.Progress, args []string) (int, error) {
	fs := flag.NewFlagSet("e2e", flag.ExitOnError)
	var c common
	c.register(fs, 15*time.Minute)
	_ = fs.Parse(args)
	backends := []string{c.backend}
	if c.backend == "both" {
		backends = []string{lab.BackendKernel, lab.BackendDrvdom}
		c.backend = lab.BackendKernel
	}
	if _, err := c.scenario(); err != nil {
		return 2, err
	}
	a, err := build(ctx, p)
	if err != nil {
		return 1, err
	}
	// One image for every boot of the run (the tree may change meanwhile).
	if c.drvdomImage, err = resolveImage(ctx, p, a, c.drvdomImage); err != nil {
		return 1, err
	}
	if c.drvdomImage == "" {
		c.drvdomImage = ImageShell
	}
	if len(backends) > 1 {
		// The boots run back to back: their figures are compared.
		release, err := lab.HoldLab(ctx, p)
		if err != nil {
			return 1, err
		}
		defer release()
		c.labHeld = true
	}
	var all []lab.Check
	var na []string
	figs := map[string]lab.Figures{}
	for _, be := range backends {
		c.backend = be
		s, _ := c.scenario()
		s.E2E = true
		s.GuestScript = lab.GuestE2EScript
		cc := c
		if len(backends) > 1 && cc.out != "" {
			cc.out = filepath.Join(cc.out, be)
		}
		rep, err := boot(ctx, p, a, &cc, s, "-e2e-"+be)
		if err != nil {
			return 1, err
		}
		rep.Print(os.Stdout)
		expected, notApplicable := lab.E2EChecksFor(be)
		for _, ch := range rep.AllChecks(expected) {
			if len(backends) > 1 {
				ch.Name = be + "/" + ch.Name
			}
			all = append(all, ch)
		}
		for _, n := range notApplicable {
			na = append(na, be+"/"+n)
		}
		figs[be] = rep.Figures()
	}
	fmt.Println(strings.Repeat("-", 60))
	pass, fail := printChecks(all, 34)
	for _, n := range na {
		fmt.Printf("N/A  %-34s only drvdom's backends report it (drvdomd's log and statistics)\n", n)
	}
	fmt.Printf("%d passed, %d failed, %d not applicable\n", pass, fail, len(na))
	fmt.Println(strings.Repeat("-", 60))
	lab.PrintFigures(os.Stdout, backends, figs)
	if fail > 0 {
		return 1, nil
	}
	return 0, nil
}
