package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"drvdom/grant"
)

// selftest is `drvdomd selftest [-domid N]`: grant.SelfTest against the real
// Xen devices of this domain (gntalloc, gntdev, evtchn), with this domain as
// its own peer.
func selftest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("drvdomd selftest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	domid := fs.Int("domid", -1, "this domain's id (default: xenstore \"domid\")")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	self := *domid
	if self < 0 {
		store, err := openStore(ctx, 2*time.Second, log)
		if err != nil {
			fmt.Fprintf(stderr, "drvdomd selftest: no xenstore to learn the domain id (use -domid): %v\n", err)
			return 1
		}
		v, err := store.Read(ctx, "domid")
		store.Close()
		if err != nil {
			fmt.Fprintf(stderr, "drvdomd selftest: read domid: %v (use -domid)\n", err)
			return 1
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 16)
		if err != nil {
			fmt.Fprintf(stderr, "drvdomd selftest: domid %q: %v\n", v, err)
			return 1
		}
		self = int(n)
	}
	if self > 0x7FEF {
		fmt.Fprintf(stderr, "drvdomd selftest: bad domid %d\n", self)
		return 2
	}
	if err := grant.SelfTest(ctx, uint16(self), log); err != nil {
		fmt.Fprintf(stdout, "SELFTEST FAIL: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "SELFTEST PASS")
	return 0
}
