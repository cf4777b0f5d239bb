package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"drvdom/internal/lab"
)

// soakCmd runs issue 8's soak: several guests with a vbd and a vif each,
// fio verify and iperf3 cycles, random block-detach/attach and guest
// restarts, then leak checks on drvdomd's worker.
func soakCmd(ctx context.Context, p *lab.Progress, args []string) (int, error) {
	fs := flag.NewFlagSet("soak", flag.ExitOnError)
	k := lab.DefaultSoak
	fs.IntVar(&k.Guests, "guests", k.Guests, "guests, each with a vbd (a scratch file in the driver domain) and a vif")
	fs.DurationVar(&k.Duration, "duration", k.Duration, "how long the guests cycle")
	image := fs.String("drvdom-image", "", "driver domain image (default: built from this repo into the run directory)")
	out := fs.String("out", "", "run directory (default $XDG_CACHE_HOME/drvdom/runs/<time>-soak)")
	keep := fs.Bool("keep", false, "keep the run directory's disk image and ramdisks")
	verbose := fs.Bool("v", false, "copy the serial console to stderr")
	_ = fs.Parse(args)
	if k.Guests < 1 || k.Guests > 4 {
		return 2, fmt.Errorf("soak: --guests=%d: want 1 to 4 (the lab's memory)", k.Guests)
	}
	if k.Duration < time.Minute {
		return 2, fmt.Errorf("soak: --duration=%s: want at least 1m", k.Duration)
	}
	c := common{out: *out, keep: *keep, verbose: *verbose, timeout: k.Duration + 15*time.Minute}
	dir, err := c.outDir("-soak")
	if err != nil {
		return 1, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 1, fmt.Errorf("soak: %w", err)
	}
	if *image == "" {
		*image = filepath.Join(dir, "drvdom.cpio.gz")
		if err := imageCmd(ctx, p, []string{"-o", *image}); err != nil {
			return 1, err
		}
	}
	if *image, err = filepath.Abs(*image); err != nil {
		return 1, err
	}
	a, err := build(ctx, p)
	if err != nil {
		return 1, err
	}
	s := lab.Scenario{Backend: lab.BackendDrvdom, DrvdomImage: *image, NoGuest: true,
		GuestScript: k.GuestScript(), DrvdomArgs: k.DrvdomArgs()}
	done := p.Step(fmt.Sprintf("prepare %s (%d guests, %s)", dir, k.Guests, k.Duration), 3*time.Second)
	err = s.Prepare(a, dir)
	if err == nil {
		err = writeSoakFiles(dir, s, k)
	}
	done(err)
	if err != nil {
		return 1, err
	}
	rep, err := c.runPrepared(ctx, p, a, s, dir)
	if err != nil {
		return 1, err
	}
	rep.Print(os.Stdout)
	printSoakSummary(dir)
	fmt.Println(strings.Repeat("-", 60))
	if _, fail := printChecks(rep.AllChecks(lab.SoakChecks), 34); fail > 0 {
		return 1, nil
	}
	return 0, nil
}

// writeSoakFiles replaces dom0.sh with the soak's and adds the guests'
// configs.
func writeSoakFiles(dir string, s lab.Scenario, k lab.Soak) error {
	script, err := k.Dom0Script(s.Dom0Script())
	if err != nil {
		return err
	}
	files := k.Files()
	files["dom0.sh"] = script
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o755); err != nil {
			return fmt.Errorf("soak: %w", err)
		}
	}
	return nil
}

// printSoakSummary prints dom0's SOAK lines (actions, per-guest counts).
func printSoakSummary(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "dom0.log"))
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		if i := strings.Index(l, "@@LAB SOAK "); i >= 0 && !strings.Contains(l, "SOAK act ") {
			fmt.Println(strings.TrimSuffix(l[i+len("@@LAB "):], "@@"))
		}
	}
}
