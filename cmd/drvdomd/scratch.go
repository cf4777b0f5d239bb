package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ScratchKey is the directory, under the driver domain's home, where each
// scratch file's allocated bytes are published (one key per file, named by
// scratchKeyName), so that dom0 can see a guest's discard punch holes.
const ScratchKey = "data/scratch"

// scratchEvery is how often the allocated bytes are looked at (written only
// when they changed).
const scratchEvery = time.Second

// ensureScratch creates each missing scratch file, sparse, with its size.
// An existing file is never truncated or grown: a restarted drvdomd keeps
// the guests' data. Each file gets one log line saying which it was.
func ensureScratch(files []ScratchFile, log *slog.Logger) error {
	var errs []error
	for _, sf := range files {
		if err := ensureScratchFile(sf, log); err != nil {
			log.Error("scratch file", "path", sf.Path, "err", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func ensureScratchFile(sf ScratchFile, log *slog.Logger) error {
	if err := os.MkdirAll(filepath.Dir(sf.Path), 0o700); err != nil {
		return fmt.Errorf("scratch %s: %w", sf.Path, err)
	}
	// O_EXCL: creating and sizing is only ever done to a new file.
	f, err := os.OpenFile(sf.Path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		st, serr := os.Stat(sf.Path)
		if serr != nil {
			return fmt.Errorf("scratch %s: %w", sf.Path, serr)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("scratch %s: exists and is not a regular file", sf.Path)
		}
		log.Info("scratch file kept", "path", sf.Path, "bytes", st.Size(), "configured_bytes", sf.Size, "allocated", allocated(sf.Path))
		return nil
	}
	if err != nil {
		return fmt.Errorf("scratch %s: %w", sf.Path, err)
	}
	err = f.Truncate(sf.Size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(sf.Path)
		return fmt.Errorf("scratch %s: size %d: %w", sf.Path, sf.Size, err)
	}
	fsType := "unknown"
	var st unix.Statfs_t
	if unix.Statfs(sf.Path, &st) == nil {
		fsType = "0x" + strconv.FormatInt(int64(st.Type), 16)
		if int64(st.Type) == tmpfsMagic {
			fsType = "tmpfs"
		}
	}
	log.Info("scratch file created (sparse)", "path", sf.Path, "bytes", sf.Size, "fs", fsType)
	return nil
}

// allocated returns the bytes a file occupies (st_blocks*512), -1 if it
// cannot be stat'ed.
func allocated(path string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return -1
	}
	return st.Blocks * 512
}

// scratchKeyName is a file's key under ScratchKey: its base name with
// every character xenstore does not take in a node name as '_'.
func scratchKeyName(path string) string {
	b := []byte(filepath.Base(path))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

type storeWriter interface {
	Write(ctx context.Context, path, value string) error
}

// publishScratch writes each file's allocated bytes to
// /local/domain/<self>/ScratchKey/<name> whenever they change, every
// `every`, until ctx ends.
func publishScratch(ctx context.Context, store storeWriter, self uint16, files []ScratchFile, every time.Duration, log *slog.Logger) {
	base := "/local/domain/" + strconv.Itoa(int(self)) + "/" + ScratchKey + "/"
	last := make([]int64, len(files))
	for i := range last {
		last[i] = -2 // never published
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		for i, sf := range files {
			n := allocated(sf.Path)
			if n == last[i] {
				continue
			}
			if err := store.Write(ctx, base+scratchKeyName(sf.Path), strconv.FormatInt(n, 10)); err != nil {
				if ctx.Err() == nil {
					log.Debug("scratch: publish allocated bytes", "path", sf.Path, "err", err)
				}
				continue
			}
			last[i] = n
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// startScratch creates the scratch files and publishes their allocation
// until the returned stop is called (it waits for the publisher to end).
func startScratch(ctx context.Context, files []ScratchFile, store storeWriter, self uint16, log *slog.Logger) (stop func()) {
	if len(files) == 0 {
		return func() {}
	}
	_ = ensureScratch(files, log) // each failure is logged; the rest still serve
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		publishScratch(ctx, store, self, files, scratchEvery, log)
	}()
	return func() { cancel(); wg.Wait() }
}
