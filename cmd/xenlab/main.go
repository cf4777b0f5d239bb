// Command xenlab builds the Xen-in-QEMU lab from Debian packages and boots it.
//
//	xenlab build                       build (or find cached) every artifact
//	xenlab run [--out DIR] [--timeout D] [--dom0-script FILE] [--keep]
//	xenlab clean-cache
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

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
		code, err = run(ctx, p, os.Args[2:])
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
		os.Exit(1)
	}
	os.Exit(code)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: xenlab build | run [--out DIR] [--timeout D] [--dom0-script FILE] [--keep] | clean-cache")
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

func run(ctx context.Context, p *lab.Progress, args []string) (int, error) {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	out := fs.String("out", "", "run directory (default out/xenlab/<timestamp>)")
	timeout := fs.Duration("timeout", 15*time.Minute, "overall timeout; QEMU is killed after it")
	script := fs.String("dom0-script", "", "shell script to run in dom0 (default: the lab's driver-domain smoke test)")
	keep := fs.Bool("keep", false, "keep the run directory's disk image")
	verbose := fs.Bool("v", false, "copy the serial console to stderr")
	_ = fs.Parse(args)
	if *out == "" {
		*out = filepath.Join("out", "xenlab", time.Now().UTC().Format("20060102-150405"))
	}
	a, err := build(ctx, p)
	if err != nil {
		return 1, err
	}
	opts := lab.RunOptions{Out: *out, Timeout: *timeout}
	if *verbose {
		opts.Echo = os.Stderr
	}
	if *script != "" {
		b, err := os.ReadFile(*script)
		if err != nil {
			return 1, fmt.Errorf("dom0 script: %w", err)
		}
		opts.Dom0Script = string(b)
	} else {
		opts.Dom0Script, opts.Files, err = lab.DriverDomainSmoke(a)
		if err != nil {
			return 1, err
		}
	}
	res, err := lab.Run(ctx, a, opts, p)
	if !*keep {
		os.Remove(filepath.Join(*out, "nvme.img"))
	}
	if err != nil {
		if errors.Is(err, lab.ErrDomainFailed) {
			fmt.Fprintf(os.Stderr, "xenlab: domain dom0 failed; last 40 lines of %s:\n%s\n", filepath.Join(*out, "serial.log"), lab.Tail(filepath.Join(*out, "serial.log"), 40))
		}
		return 1, err
	}
	p.Printf("dom0 script exit code %d after %.1fs; output in %s", res.ExitCode, res.Elapsed.Seconds(), res.Out)
	if res.ExitCode != 0 {
		failedDomainReport(*out)
	}
	return res.ExitCode, nil
}

// failedDomainReport prints the tail of every domain console the run left.
func failedDomainReport(out string) {
	logs, _ := filepath.Glob(filepath.Join(out, "console", "guest-*.log"))
	fmt.Fprintf(os.Stderr, "xenlab: last 40 lines of %s:\n%s\n", filepath.Join(out, "dom0.log"), lab.Tail(filepath.Join(out, "dom0.log"), 40))
	for _, l := range logs {
		fmt.Fprintf(os.Stderr, "xenlab: last 40 lines of %s:\n%s\n", l, lab.Tail(l, 40))
	}
}
