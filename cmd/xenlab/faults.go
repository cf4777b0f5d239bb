package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"drvdom/initramfs"
	"drvdom/internal/lab"
)

// faultsCmd runs the crash-only and watchdog scenarios of issue 6:
//
//   - crash boot (our u-root image, drvdom backends, drvdom.faults=1,
//     on_watchdog="restart"): the guest's first read (boot time), the
//     worker SIGKILLed every 2 s under fio + iperf3, then the worker
//     SIGSTOPped: Xen's watchdog restarts the domain and dom0's `drvdomctl
//     supervise` re-attaches the guest's devices;
//   - boot boot: a kernel-stack driver domain (the shell rootfs, kernel
//     backends, `xl devd` with Xen's scripts) and the same guest's first read.
//
// Both boots' "serving" figure is dom0's time from `xl create` of the
// driver domain to seeing the guest's first successful read of its disk.
func faultsCmd(ctx context.Context, p *lab.Progress, args []string) (int, error) {
	fs := flag.NewFlagSet("faults", flag.ExitOnError)
	out := fs.String("out", "", "run directory (default $XDG_CACHE_HOME/drvdom/runs/<time>-faults); boots go in crash/ and devd/")
	image := fs.String("drvdom-image", "", "driver domain image (default: built with `xenlab image` into the run directory)")
	only := fs.String("only", "crash,devd", "boots to run: crash (image: boot time, kills, hang), devd (kernel-stack driver domain with xl devd: boot time), script (kernel backends with the lab's hotplug loop: boot time)")
	timeout := fs.Duration("timeout", 25*time.Minute, "whole-boot timeout for each boot")
	killEvery := fs.Duration("kill-every", 2*time.Second, "SIGKILL period")
	runtime := fs.Duration("runtime", 60*time.Second, "fio runtime under kills")
	noKill := fs.Bool("no-kill", false, "crash boot without the kill phase")
	noHang := fs.Bool("no-hang", false, "crash boot without the hang phase")
	ddArgs := fs.String("drvdom-args", "", "extra driver domain kernel command line for the crash boot")
	keep := fs.Bool("keep", false, "keep the run directories' disk images and ramdisks")
	verbose := fs.Bool("v", false, "copy the serial console to stderr")
	_ = fs.Parse(args)
	boots := map[string]bool{}
	for _, b := range strings.Split(*only, ",") {
		switch b = strings.TrimSpace(b); b {
		case "crash", "devd", "script":
			boots[b] = true
		case "":
		default:
			return 2, fmt.Errorf("faults: --only=%s: want crash, devd or script", b)
		}
	}
	c := common{out: *out, timeout: *timeout, keep: *keep, verbose: *verbose}
	root, err := c.outDir("-faults")
	if err != nil {
		return 1, err
	}
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		return 1, fmt.Errorf("faults: %w", err)
	}
	a, err := build(ctx, p)
	if err != nil {
		return 1, err
	}
	img, imgSize := *image, int64(0)
	if boots["crash"] {
		if img == "" {
			img = filepath.Join(root, "drvdom.cpio.gz")
			done := p.Step("u-root image with drvdomd -> "+img, 60*time.Second)
			res, err := initramfs.Build(initramfs.Options{Output: img, KernelVersion: a.Versions.KRelease, ModulesRoot: a.ModulesRoot,
				Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			done(err)
			if err != nil {
				return 1, err
			}
			imgSize = res.Size
			p.Printf("image %s: %d KB, %d modules, missing %v", img, res.Size>>10, len(res.Modules), res.Missing)
		} else if st, err := os.Stat(img); err == nil {
			imgSize = st.Size()
		} else {
			return 1, fmt.Errorf("faults: image: %w", err)
		}
		if err := buildStatic(ctx, p, "./cmd/drvdomctl", filepath.Join(root, "bin", "drvdomctl")); err != nil {
			return 1, err
		}
	}

	var all []lab.Check
	var crashTimes lab.BootTimes
	kernelTimes := map[string]lab.BootTimes{}
	var figs *lab.FaultFigures
	var dirs []string
	if boots["crash"] {
		plan := lab.DefaultFaultPlan()
		plan.Kill, plan.Hang = !*noKill, !*noHang
		plan.KillEvery, plan.Runtime = *killEvery, *runtime
		s := lab.Scenario{Backend: lab.BackendDrvdom, DrvdomImage: img,
			DrvdomArgs:  strings.TrimSpace("drvdom.faults=1 " + *ddArgs),
			GuestScript: lab.FaultGuestScript(plan), Dom0Phase: lab.FaultDom0Phase(plan), GuestTimeout: 20 * time.Minute}
		dir := filepath.Join(root, "crash")
		rep, err := faultBoot(ctx, p, a, &c, s, dir, filepath.Join(root, "bin", "drvdomctl"))
		if err != nil {
			return 1, err
		}
		dirs = append(dirs, dir)
		rep.Print(os.Stdout)
		all = append(all, prefixed("crash/", rep.AllChecks(lab.FaultChecks(plan)))...)
		crashTimes = lab.ParseBootTimes(rep.Timeline)
		f := lab.ParseFaultFigures(rep)
		figs = &f
		all = append(all, prefixed("crash/", f.Checks())...)
	}
	for _, hp := range []string{lab.HotplugDevd, lab.HotplugScript} {
		if !boots[hp] {
			continue
		}
		s := lab.Scenario{Backend: lab.BackendKernel, KernelHotplug: hp,
			GuestScript: lab.BootGuestScript, Dom0Phase: lab.BootDom0Phase, GuestTimeout: 10 * time.Minute}
		dir := filepath.Join(root, hp)
		rep, err := faultBoot(ctx, p, a, &c, s, dir, "")
		if err != nil {
			return 1, err
		}
		dirs = append(dirs, dir)
		rep.Print(os.Stdout)
		all = append(all, prefixed(hp+"/", rep.AllChecks(lab.BootChecks))...)
		kernelTimes[hp] = lab.ParseBootTimes(rep.Timeline)
	}

	fmt.Println(strings.Repeat("-", 72))
	pass, fail := printChecks(all, 40)
	fmt.Printf("%d passed, %d failed (run directories: %s)\n", pass, fail, strings.Join(dirs, " "))
	fmt.Println(strings.Repeat("-", 72))
	if figs != nil {
		figs.Print(os.Stdout)
	}
	fmt.Println("boot time (dom0 clock; from `xl create` of the driver domain):")
	for _, bt := range []struct {
		name string
		run  bool
		t    lab.BootTimes
	}{{"u-root image, drvdomd backends", boots["crash"], crashTimes},
		{"shell rootfs, kernel backends, xl devd", boots["devd"], kernelTimes[lab.HotplugDevd]},
		{"shell rootfs, kernel backends, lab script", boots["script"], kernelTimes[lab.HotplugScript]}} {
		switch {
		case !bt.run:
		case !bt.t.OK:
			fmt.Printf("  %-40s (not measured: a marker is missing)\n", bt.name)
		default:
			fmt.Printf("  %-40s DD ready %5.1f s; guest's first read %5.1f s (of which guest create+boot %5.1f s)\n",
				bt.name, bt.t.DDReady, bt.t.Serving, bt.t.GuestPart)
		}
	}
	if imgSize > 0 {
		fmt.Printf("image size: %d bytes (%.1f MB) %s\n", imgSize, float64(imgSize)/1e6, img)
	}
	if fail > 0 {
		return 1, nil
	}
	return 0, nil
}

func prefixed(pre string, cs []lab.Check) []lab.Check {
	for i := range cs {
		cs[i].Name = pre + cs[i].Name
	}
	return cs
}

// faultBoot prepares dir for s, gives the driver domain on_watchdog =
// "restart" (Xen restarts a domain whose watchdog fired; xl's default
// destroys it), puts drvdomctl (if any) in dir/bin for dom0, and boots.
func faultBoot(ctx context.Context, p *lab.Progress, a *lab.Artifacts, c *common, s lab.Scenario, dir, drvdomctl string) (*lab.Report, error) {
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	if err := needDrvdomd(ctx, p, &s, filepath.Join(dir, "bin")); err != nil {
		return nil, err
	}
	done := p.Step(fmt.Sprintf("prepare %s (driver domain: %s, backend=%s)", dir, s.DrvdomKind(), s.Backend), 3*time.Second)
	err := s.Prepare(a, dir)
	if err == nil {
		cfg := lab.WithOnWatchdog(s.DrvdomConfig().Render(), "restart")
		err = os.WriteFile(filepath.Join(dir, "drvdom.cfg"), []byte(cfg), 0o644)
	}
	if err == nil && drvdomctl != "" {
		err = copyExe(drvdomctl, filepath.Join(dir, "bin", "drvdomctl"))
	}
	done(err)
	if err != nil {
		return nil, err
	}
	return c.runPrepared(ctx, p, a, s, dir)
}

func copyExe(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// buildStatic builds pkg from this repository as a static linux/amd64
// binary at out (dom0 runs it from /lab over 9p).
func buildStatic(ctx context.Context, p *lab.Progress, pkg, out string) error {
	root, err := initramfs.FindModuleRoot(".")
	if err != nil {
		return fmt.Errorf("%s: %w", pkg, err)
	}
	done := p.Step("go build "+pkg+" (static, for dom0)", 20*time.Second)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	b, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	done(err)
	return err
}
