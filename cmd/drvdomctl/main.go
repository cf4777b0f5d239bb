// Command drvdomctl is the dom0 side of drvdom: it writes the driver
// domain's xl config (refusing PCI passthrough on a host without an IOMMU)
// and shows the devices the driver domain serves.
//
//	drvdomctl config [flags]    write the xl config for the driver domain
//	drvdomctl status [flags]    domains, devices and their xenbus states
//	drvdomctl supervise [flags] re-attach guests' devices when the driver domain restarts
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, `usage: drvdomctl <command> [flags]

commands:
  config   write the driver domain's xl config (drvdomctl config -h)
  status   show the driver domain's devices from xenstore (drvdomctl status -h)
  supervise  re-attach the guests' devices when the driver domain comes back under a new id (drvdomctl supervise -h)`)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "config":
		return cmdConfig(ctx, args[1:], stdout, stderr, log, realPlatform{})
	case "status":
		return cmdStatus(ctx, args[1:], stdout, stderr)
	case "supervise":
		return cmdSupervise(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "drvdomctl: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
}
