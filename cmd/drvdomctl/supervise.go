package main

// drvdomctl supervise: dom0's half of the crash-only driver domain. Xen's
// watchdog restarts a hung driver domain under a new domain id, and stock
// Linux frontends cannot follow a backend to a new domain: their devices
// must be attached again. supervise keeps a snapshot of every guest device
// the driver domain serves (its specs, read from the backend directories
// while they exist) and, when the domain of that name comes back under a
// new id (@releaseDomain/@introduceDomain), removes the stale frontend
// entries (what `xl block-detach --force` leaves behind is removed
// directly in xenstore: the old backend cannot answer) and calls
// `xl block-attach` / `xl network-attach` with backend=<name> and the same
// specs, once the new drvdomd says it runs (data/drvdomd=running).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"drvdom/xenstore"
)

// ReadyKey is written by drvdomd's worker, relative to its domain's home,
// once its backends watch xenstore.
const ReadyKey = "data/drvdomd"

// supStore is the part of the xenstore client supervise uses (a
// *xenstore.Client).
type supStore interface {
	Read(ctx context.Context, path string) (string, error)
	Directory(ctx context.Context, path string) ([]string, error)
	Rm(ctx context.Context, path string) error
	Transaction(ctx context.Context, fn func(tx *xenstore.Tx) error) error
}

// toolstack runs xl.
type toolstack interface {
	XL(ctx context.Context, args ...string) error
}

type realXL struct{ timeout time.Duration }

func (x realXL) XL(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, x.timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "xl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("xl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// devKey names a guest device.
type devKey struct {
	Kind  string // "vbd" or "vif"
	Guest uint16
	DevID uint32
}

// devSpec is what it takes to attach a device again.
type devSpec struct {
	devKey
	// vbd
	Vdev, Target, Access string
	CDROM                bool
	// vif
	MAC, Bridge, IP, Rate string
}

// xlArgs returns the xl command that attaches the device to guest with the
// driver domain named backend. Values come from xenstore, which the driver
// domain could write: they are refused if they could change the spec's
// meaning (a comma or '=' in a block spec value, spaces anywhere).
func (s devSpec) xlArgs(backend string) ([]string, error) {
	guest := strconv.Itoa(int(s.Guest))
	bad := func(v string) bool { return strings.ContainsAny(v, ",= \t\n'\"\\") }
	switch s.Kind {
	case "vbd":
		access := "rw"
		if s.Access == "r" || s.Access == "ro" {
			access = "ro"
		}
		if s.Vdev == "" || s.Target == "" || bad(s.Vdev) || bad(backend) || strings.ContainsAny(s.Target, "\n'\"\\") {
			return nil, fmt.Errorf("vbd %d/%d: unusable spec vdev=%q target=%q", s.Guest, s.DevID, s.Vdev, s.Target)
		}
		spec := "vdev=" + s.Vdev + ",format=raw,access=" + access + ",backend=" + backend
		if s.CDROM {
			spec += ",devtype=cdrom"
		}
		spec += ",target=" + s.Target // target must be last: it may hold commas
		return []string{"block-attach", guest, spec}, nil
	case "vif":
		args := []string{"network-attach", guest, "backend=" + backend}
		if bad(backend) {
			return nil, fmt.Errorf("vif %d/%d: bad backend name", s.Guest, s.DevID)
		}
		for _, kv := range [][2]string{{"mac", s.MAC}, {"bridge", s.Bridge}, {"ip", s.IP}, {"rate", s.Rate}} {
			if kv[1] == "" {
				continue
			}
			if bad(kv[1]) {
				return nil, fmt.Errorf("vif %d/%d: unusable %s=%q", s.Guest, s.DevID, kv[0], kv[1])
			}
			args = append(args, kv[0]+"="+kv[1])
		}
		return args, nil
	}
	return nil, fmt.Errorf("unknown device kind %q", s.Kind)
}

// Supervisor watches the driver domain named Name.
type Supervisor struct {
	Store     supStore
	XL        toolstack
	Name      string
	Log       *slog.Logger
	Poll      time.Duration // rescan period besides the watches
	ReadyWait time.Duration // how long to wait for the new drvdomd

	domid int // the driver domain's id now, -1 unknown
	specs map[devKey]devSpec
	// Reattached counts devices attached again (tests, status).
	Reattached atomic.Int64
}

// findDomain returns the id of the domain named name (the highest, if a
// dying one still has the name).
func findDomain(ctx context.Context, s supStore, name string) (int, error) {
	ids, err := s.Directory(ctx, "/local/domain")
	if err != nil {
		return -1, fmt.Errorf("list domains: %w", err)
	}
	found := -1
	for _, d := range ids {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 || n > 0x7FEF {
			continue
		}
		if v, err := s.Read(ctx, "/local/domain/"+d+"/name"); err == nil && v == name && n > found {
			found = n
		}
	}
	return found, nil
}

// snapshot records every guest device the driver domain dd serves. A device
// whose backend directory is already gone (the domain is dying) keeps its
// previous spec.
func (sv *Supervisor) snapshot(ctx context.Context, dd int) error {
	doms, err := sv.Store.Directory(ctx, "/local/domain")
	if err != nil {
		return fmt.Errorf("list domains: %w", err)
	}
	next := map[devKey]devSpec{}
	for _, d := range doms {
		g, err := strconv.Atoi(d)
		if err != nil || g < 0 || g > 0x7FEF || g == dd {
			continue
		}
		for _, kind := range []string{"vbd", "vif"} {
			base := "/local/domain/" + d + "/device/" + kind
			devs, err := sv.Store.Directory(ctx, base)
			if err != nil {
				continue
			}
			for _, id := range devs {
				devid, err := strconv.ParseUint(id, 10, 32)
				if err != nil {
					continue
				}
				fe := base + "/" + id
				if b, err := sv.Store.Read(ctx, fe+"/backend-id"); err != nil || strings.TrimSpace(b) != strconv.Itoa(dd) {
					continue
				}
				key := devKey{Kind: kind, Guest: uint16(g), DevID: uint32(devid)}
				spec, err := sv.readSpec(ctx, key, "/local/domain/"+strconv.Itoa(dd)+"/backend/"+kind+"/"+d+"/"+id)
				if err != nil {
					if old, ok := sv.specs[key]; ok {
						next[key] = old
					} else if spec, lerr := sv.readSpec(ctx, key, "/libxl/"+d+"/device/"+kind+"/"+id); lerr == nil {
						next[key] = spec
					} else {
						sv.Log.Warn("supervise: no spec for device", "kind", kind, "guest", g, "devid", devid, "err", err)
					}
					continue
				}
				next[key] = spec
			}
		}
	}
	sv.specs = next
	return nil
}

// readSpec reads a device's spec from a backend directory (or libxl's copy
// of it): the same key names, in one transaction, so a directory removed
// meanwhile (the driver domain destroyed) gives the spec whole or not at
// all, never a vif without its bridge.
func (sv *Supervisor) readSpec(ctx context.Context, k devKey, dir string) (devSpec, error) {
	var s devSpec
	err := sv.Store.Transaction(ctx, func(tx *xenstore.Tx) error {
		rd := func(key string) string {
			v, _ := tx.Read(ctx, dir+"/"+key)
			return strings.TrimSpace(v)
		}
		s = devSpec{devKey: k}
		switch k.Kind {
		case "vbd":
			s.Target, s.Access, s.Vdev = rd("params"), rd("mode"), rd("dev")
			s.CDROM = rd("device-type") == "cdrom"
			if s.Target == "" {
				s.Target = rd("target")
			}
			if s.Target == "" || s.Vdev == "" {
				return fmt.Errorf("%s: no params/dev: %w", dir, xenstore.ErrNotExist)
			}
		case "vif":
			s.MAC, s.Bridge, s.IP, s.Rate = rd("mac"), rd("bridge"), rd("ip"), rd("rate")
			if s.MAC == "" {
				return fmt.Errorf("%s: no mac: %w", dir, xenstore.ErrNotExist)
			}
		}
		return nil
	})
	return s, err
}

// step looks at the driver domain once; it re-attaches when the domain
// came back under a new id.
func (sv *Supervisor) step(ctx context.Context) error {
	id, err := findDomain(ctx, sv.Store, sv.Name)
	if err != nil {
		return err
	}
	switch {
	case id < 0:
		return nil // gone: wait for it, keeping the snapshot
	case sv.domid < 0 || id == sv.domid:
		if sv.domid != id {
			sv.Log.Info("supervise: driver domain found", "name", sv.Name, "domid", id)
		}
		sv.domid = id
		return sv.snapshot(ctx, id)
	}
	old := sv.domid
	sv.domid = id
	sv.Log.Warn("supervise: driver domain restarted", "name", sv.Name, "old", old, "new", id, "devices", len(sv.specs))
	err = sv.reattach(ctx, old, id)
	if serr := sv.snapshot(ctx, id); serr != nil && err == nil {
		err = serr
	}
	return err
}

// waitReady waits (bounded) for the new drvdomd to say it runs.
func (sv *Supervisor) waitReady(ctx context.Context, id int) {
	deadline := time.Now().Add(sv.ReadyWait)
	for time.Now().Before(deadline) {
		if v, err := sv.Store.Read(ctx, "/local/domain/"+strconv.Itoa(id)+"/"+ReadyKey); err == nil && strings.TrimSpace(v) == "running" {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	sv.Log.Warn("supervise: new driver domain did not report ready; attaching anyway", "domid", id)
}

// reattach attaches every device old served to the new domain.
func (sv *Supervisor) reattach(ctx context.Context, old, id int) error {
	sv.waitReady(ctx, id)
	keys := make([]devKey, 0, len(sv.specs))
	for k := range sv.specs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.Guest != b.Guest {
			return a.Guest < b.Guest
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.DevID < b.DevID
	})
	var errs []error
	for _, k := range keys {
		s := sv.specs[k]
		g := strconv.Itoa(int(k.Guest))
		if _, err := sv.Store.Read(ctx, "/local/domain/"+g+"/name"); errors.Is(err, xenstore.ErrNotExist) {
			continue // the guest is gone
		}
		fe := "/local/domain/" + g + "/device/" + k.Kind + "/" + strconv.FormatUint(uint64(k.DevID), 10)
		if b, err := sv.Store.Read(ctx, fe+"/backend-id"); err == nil && strings.TrimSpace(b) == strconv.Itoa(id) {
			continue // already attached to the new domain
		}
		args, err := s.xlArgs(sv.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// Forced detach: the old backend is gone, so remove what it and
		// libxl left: the frontend, libxl's record and the old backend.
		// Every path is built here: the frontend's own "backend" key is
		// the guest's to write, and dom0 must not remove what it names.
		id32 := strconv.FormatUint(uint64(k.DevID), 10)
		for _, p := range []string{fe, "/libxl/" + g + "/device/" + k.Kind + "/" + id32,
			"/local/domain/" + strconv.Itoa(old) + "/backend/" + k.Kind + "/" + g + "/" + id32} {
			if err := sv.Store.Rm(ctx, p); err != nil && !errors.Is(err, xenstore.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			}
		}
		if err := sv.XL.XL(ctx, args...); err != nil {
			errs = append(errs, fmt.Errorf("%s %d/%d: %w", k.Kind, k.Guest, k.DevID, err))
			continue
		}
		sv.Reattached.Add(1)
		sv.Log.Info("supervise: re-attached", "kind", k.Kind, "guest", k.Guest, "devid", k.DevID, "backend", sv.Name, "domid", id)
	}
	return errors.Join(errs...)
}

// watcher is what Run needs to be told of domains coming and going.
type watcher interface {
	Watch(ctx context.Context, path, token string) (*xenstore.Watch, error)
}

// Run supervises until ctx ends.
func (sv *Supervisor) Run(ctx context.Context, w watcher) error {
	sv.domid = -1
	var events []<-chan xenstore.WatchEvent
	for _, p := range []string{"@releaseDomain", "@introduceDomain"} {
		wt, err := w.Watch(ctx, p, "drvdomctl-supervise"+p)
		if err != nil {
			return fmt.Errorf("watch %s: %w", p, err)
		}
		defer wt.Close()
		events = append(events, wt.Events())
	}
	tick := time.NewTicker(sv.Poll)
	defer tick.Stop()
	for {
		if err := sv.step(ctx); err != nil {
			sv.Log.Error("supervise", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-events[0]:
		case <-events[1]:
		case <-tick.C:
		}
	}
}

func cmdSupervise(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("drvdomctl supervise", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "drvdom", "driver domain name")
	socket := fs.String("socket", "", "xenstored socket (default: /dev/xen/xenbus, then /run/xenstored/socket)")
	poll := fs.Duration("poll", 2*time.Second, "rescan period")
	ready := fs.Duration("ready-wait", 120*time.Second, "how long to wait for a restarted drvdomd before attaching")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c, err := openStore(*socket)
	if err != nil {
		fmt.Fprintf(stderr, "drvdomctl supervise: %v\n", err)
		return 1
	}
	defer c.Close()
	sv := &Supervisor{Store: c, XL: realXL{timeout: 120 * time.Second}, Name: *name, Poll: *poll, ReadyWait: *ready,
		Log: slog.New(slog.NewTextHandler(stderr, nil))}
	if err := sv.Run(ctx, c); err != nil {
		fmt.Fprintf(stderr, "drvdomctl supervise: %v\n", err)
		return 1
	}
	return 0
}
