package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// ProcStats is what one drvdomd process holds, published as JSON under
// the driver domain's home (StatsKeyPrefix+role) so that dom0 can check,
// after a soak, that nothing leaked: gntdev pages are the kernel's view
// of the grants this process has mapped (its /dev/xen/gntdev mappings).
type ProcStats struct {
	PID         int   `json:"pid"`
	Goroutines  int   `json:"goroutines"`
	FDs         int   `json:"fds"`
	GntdevPages int64 `json:"gntdev_pages"`
	RSSKB       int64 `json:"rss_kb"`
}

// StatsKeyPrefix + role ("worker", "supervisor") is where each process
// publishes its ProcStats, relative to /local/domain/<self>.
const StatsKeyPrefix = "data/drvdomd-stats-"

// readProcStats reads the stats of the process whose /proc directory is
// proc (e.g. /proc/self); Goroutines is this process's.
func readProcStats(proc string) (ProcStats, error) {
	s := ProcStats{Goroutines: runtime.NumGoroutine()}
	if l, err := os.Readlink(proc); err == nil {
		s.PID, _ = strconv.Atoi(l)
	} else {
		s.PID, _ = strconv.Atoi(filepath.Base(proc))
	}
	fds, err := os.ReadDir(filepath.Join(proc, "fd"))
	if err != nil {
		return s, fmt.Errorf("proc stats: %w", err)
	}
	s.FDs = len(fds) - 1 // the directory's own fd while it was read
	f, err := os.Open(filepath.Join(proc, "maps"))
	if err != nil {
		return s, fmt.Errorf("proc stats: %w", err)
	}
	s.GntdevPages, err = gntdevPages(f)
	f.Close()
	if err != nil {
		return s, fmt.Errorf("proc stats: maps: %w", err)
	}
	st, err := os.Open(filepath.Join(proc, "status"))
	if err != nil {
		return s, fmt.Errorf("proc stats: %w", err)
	}
	defer st.Close()
	sc := bufio.NewScanner(st)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			s.RSSKB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return s, sc.Err()
}

// gntdevPages sums the 4 KiB pages of the /dev/xen/gntdev mappings listed
// in a /proc/PID/maps text.
func gntdevPages(r io.Reader) (int64, error) {
	var pages int64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] != "/dev/xen/gntdev" {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || b < a {
			return pages, fmt.Errorf("bad range %q", f[0])
		}
		pages += int64((b - a) / 4096)
	}
	return pages, sc.Err()
}

// publishProcStats writes this process's ProcStats to key every interval
// (when they changed) until ctx ends.
func publishProcStats(ctx context.Context, store interface {
	Write(ctx context.Context, path, value string) error
}, key string, every time.Duration, log *slog.Logger) {
	var last string
	warned := false
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s, err := readProcStats("/proc/self")
		if err == nil {
			b, _ := json.Marshal(s)
			if v := string(b); v != last {
				wctx, cancel := context.WithTimeout(ctx, checkTimeout)
				err = store.Write(wctx, key, v)
				cancel()
				if err == nil {
					last = v
				}
			}
		}
		if err != nil && !warned && ctx.Err() == nil {
			log.Warn("cannot publish process stats", "key", key, "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
