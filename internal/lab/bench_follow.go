package lab

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"time"
)

// followBenchChecks reports the bench CHECK markers that appear in the
// console logs at paths while a boot runs (every interval, and once more
// when ctx ends), so that each row's outcome shows up as it happens rather
// than when the boot is over. It returns when ctx ends; the caller owns it.
func followBenchChecks(ctx context.Context, paths []string, every time.Duration, emit func(source string, c Check)) {
	offs := make([]int, len(paths))
	scan := func() {
		for i, p := range paths {
			b, err := readFrom(p, offs[i])
			if err != nil || len(b) == 0 {
				continue
			}
			// Only complete lines: a marker may be half written.
			end := bytes.LastIndexByte(b, '\n')
			if end < 0 {
				continue
			}
			chunk := b[:end+1]
			offs[i] += end + 1
			for _, c := range Checks(ParseMarkers(chunk), p) {
				if strings.HasPrefix(c.Name, "bench-") || strings.HasPrefix(c.Name, "guest-sees") {
					emit(p, c)
				}
			}
		}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			scan()
			return
		case <-t.C:
			scan()
		}
	}
}

// readFrom returns the bytes of the file at p from off on (the consoles
// grow to megabytes of fio JSON: reading them whole every 2 s took host
// CPU from the TCG boot being measured).
func readFrom(p string, off int) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(int64(off), io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

// watchStall calls onStall once, and returns, when none of the files at
// paths has grown for stall (a file that does not exist yet counts as
// empty); it returns without calling it when ctx ends. Under TCG a boot
// sometimes hangs with both vCPUs idle; dom0's own timeouts cannot fire
// then, and the boot would sit until its whole-boot timeout.
//
// The clock starts with the first output: before it the boot may still be
// waiting for the lab's lock behind other helpers' boots (the run
// directory's files exist, empty, meanwhile), which is not a hang; a boot
// that never prints is left to its own timeout.
func watchStall(ctx context.Context, paths []string, every, stall time.Duration, onStall func()) {
	sizes := make([]int64, len(paths))
	var last time.Time
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// Not the tick's own time: a tick read late carries a time
			// from before the output it then sees.
			now := time.Now()
			for i, p := range paths {
				if fi, err := os.Stat(p); err == nil && fi.Size() != sizes[i] {
					sizes[i], last = fi.Size(), now
				}
			}
			if last.IsZero() {
				continue // no output yet: still queued for the lab, or starting
			}
			if now.Sub(last) >= stall {
				onStall()
				return
			}
		}
	}
}
