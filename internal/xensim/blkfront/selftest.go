package blkfront

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/xenstore"
)

// SelfTestDevID is the virtual device SelfTest creates (xvdz-ish, out of the
// way of real disks).
const SelfTestDevID = 51952

// SelfTest attaches a loopback disk inside domain self, where a backend
// Manager with blkback must already be running: it writes the backend and
// frontend directories under /local/domain/<self> (a domain may create
// those in its own tree), connects this Go frontend through sharer and evh
// (gntalloc and the event channel device on real Xen), writes, reads back,
// flushes and discards through every negotiated path, then detaches and
// removes the directories. params names the backing (a file, or null:<n>
// for the protocol path alone). It proves the grant, event channel and
// xenstore plumbing of the real host end to end without a guest.
func SelfTest(ctx context.Context, store *xenstore.Client, self uint16, sharer grant.Sharer, evh evtchn.Handle, params string, log *slog.Logger) (err error) {
	if log == nil {
		log = slog.Default()
	}
	d := Disk{BackDom: self, FrontDom: self, DevID: SelfTestDevID, Params: params, Mode: "w"}
	if err := AddDisk(ctx, store, d); err != nil {
		return fmt.Errorf("blkfront selftest: add disk: %w", err)
	}
	defer func() {
		rctx := context.WithoutCancel(ctx)
		if e := RemoveDisk(rctx, store, d); e != nil && err == nil {
			err = e
		}
		// Give the backend a moment to see online=0, then clear the tree.
		wait(rctx, store, d.BackPath()+"/state", "6", 5*time.Second)
		for _, p := range []string{d.BackPath(), d.FrontPath()} {
			if e := store.Rm(rctx, p); e != nil && !errors.Is(e, xenstore.ErrNotExist) && err == nil {
				err = e
			}
		}
	}()
	for _, cfg := range []Config{
		{Protocol: blkback.ProtoX86_64, Persistent: true, Queues: 2, RingPageOrder: 1},
		{Protocol: blkback.ProtoX86_32},
	} {
		if err := selfTestOnce(ctx, store, sharer, evh, d, cfg, log); err != nil {
			return fmt.Errorf("blkfront selftest (%+v): %w", cfg, err)
		}
	}
	return nil
}

func selfTestOnce(ctx context.Context, store *xenstore.Client, sharer grant.Sharer, evh evtchn.Handle, d Disk, cfg Config, log *slog.Logger) error {
	// A new connection starts from Initialising (as a rebooted guest), once
	// the backend has finished closing the previous one.
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := store.Read(ctx, d.BackPath()+"/state")
		if err != nil {
			return err
		}
		if v != "4" && v != "5" {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("backend stays in state %s", v)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := store.Write(ctx, d.FrontPath()+"/state", "1"); err != nil {
		return err
	}
	f, err := Attach(ctx, store, sharer, evh, d.FrontPath(), cfg)
	if err != nil {
		return err
	}
	log.Info("blkfront selftest: connected", "sectors", f.Sectors, "sector-size", f.SectorSize,
		"queues", f.Queues(), "persistent", f.Persistent, "indirect", f.MaxIndirect)
	defer f.Close(context.WithoutCancel(ctx))
	if f.Sectors < 2048 {
		return fmt.Errorf("disk of %d sectors is too small for the self test (1 MiB)", f.Sectors)
	}
	null := len(d.Params) > 5 && d.Params[:5] == "null:"
	sizes := []int{4096, 11 * 4096}
	if f.MaxIndirect >= 64 {
		sizes = append(sizes, 64*4096)
	}
	for q := 0; q < f.Queues(); q++ {
		for i, n := range sizes {
			data := make([]byte, n)
			for j := range data {
				data[j] = byte(j*7 + i + q)
			}
			sector := uint64(i * 128)
			if err := f.Write(ctx, q, sector, data); err != nil {
				return fmt.Errorf("write %d bytes on queue %d: %w", n, q, err)
			}
			got := make([]byte, n)
			if err := f.Read(ctx, q, sector, got); err != nil {
				return fmt.Errorf("read %d bytes on queue %d: %w", n, q, err)
			}
			if !null && !bytes.Equal(got, data) {
				return fmt.Errorf("read back %d bytes on queue %d: data differs", n, q)
			}
		}
	}
	if f.FeatureFlush {
		if err := f.Flush(ctx, 0); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
	}
	if f.FeatureDiscard {
		if err := f.Discard(ctx, 0, 0, 8, false); err != nil {
			return fmt.Errorf("discard: %w", err)
		}
	}
	// A request past the end is refused, and the ring still works.
	if err := f.Read(ctx, 0, f.Sectors, make([]byte, 4096)); !errors.Is(err, ErrStatus(blkback.StatusError)) {
		return fmt.Errorf("read past the end: %v, want an error response", err)
	}
	return f.Read(ctx, 0, 0, make([]byte, 4096))
}

// wait polls path until it reads want or the timeout passes.
func wait(ctx context.Context, store *xenstore.Client, path, want string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if v, err := store.Read(ctx, path); err != nil || v == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
