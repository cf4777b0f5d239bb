package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"drvdom/xenstore"
	"drvdom/xenstore/xenstored"
)

// fakeXL plays libxl for xl block-attach / network-attach: it checks that
// the stale frontend is gone and writes the new frontend and backend.
type fakeXL struct {
	t     *testing.T
	store *xenstore.Client
	name  string

	mu    sync.Mutex
	calls []string
	fail  bool
}

func (x *fakeXL) XL(ctx context.Context, args ...string) error {
	x.mu.Lock()
	x.calls = append(x.calls, strings.Join(args, " "))
	fail := x.fail
	x.mu.Unlock()
	if fail {
		return errors.New("xl: toolstack busy")
	}
	dd, err := findDomain(ctx, x.store, x.name)
	if err != nil || dd < 0 {
		return fmt.Errorf("xl: no backend domain %s", x.name)
	}
	var fe, be string
	switch args[0] {
	case "block-attach":
		fe, be = "/local/domain/"+args[1]+"/device/vbd/51728", fmt.Sprintf("/local/domain/%d/backend/vbd/%s/51728", dd, args[1])
	case "network-attach":
		fe, be = "/local/domain/"+args[1]+"/device/vif/0", fmt.Sprintf("/local/domain/%d/backend/vif/%s/0", dd, args[1])
	default:
		return fmt.Errorf("xl: unexpected %v", args)
	}
	if _, err := x.store.Read(ctx, fe+"/backend-id"); !errors.Is(err, xenstore.ErrNotExist) {
		x.t.Errorf("xl %s: stale frontend %s still there (%v)", args[0], fe, err)
		return errors.New("xl: device exists")
	}
	for k, v := range map[string]string{fe + "/backend-id": fmt.Sprint(dd), fe + "/backend": be, fe + "/state": "1", be + "/state": "1"} {
		if err := x.store.Write(ctx, k, v); err != nil {
			return err
		}
	}
	return nil
}

func (x *fakeXL) Calls() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]string(nil), x.calls...)
}

// listingStore is the supervisor's store, counting its listings of
// /local/domain. A step lists it twice while the driver domain is there
// (findDomain, then snapshot): of three listings begun after a count was
// read, one is a snapshot's that ended before the next began, so a whole
// snapshot was taken after that count.
type listingStore struct {
	*xenstore.Client
	lists atomic.Int64
}

func (s *listingStore) Directory(ctx context.Context, p string) ([]string, error) {
	if p == "/local/domain" {
		s.lists.Add(1)
	}
	return s.Client.Directory(ctx, p)
}

// snapshotted waits until the supervisor took a whole snapshot of what is
// in xenstore now (the driver domain being there).
func (s *listingStore) snapshotted(t *testing.T) {
	t.Helper()
	from := s.lists.Load()
	waitUntil(t, "a snapshot", func() bool { return s.lists.Load() >= from+3 })
}

func writeAll(t *testing.T, c *xenstore.Client, kv map[string]string) {
	t.Helper()
	for k, v := range kv {
		if err := c.Write(context.Background(), k, v); err != nil {
			t.Fatal(err)
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The driver domain restarts under a new id (Xen's watchdog): the guest's
// disk and NIC are attached to it again with the same specs, after the
// stale frontends are removed; a device another backend serves is left
// alone; nothing is attached twice.
func TestSuperviseReattachesAfterRestart(t *testing.T) {
	srv := xenstored.New()
	defer srv.Close()
	for _, d := range []uint16{1, 2, 3} {
		srv.IntroduceDomain(d)
	}
	c := xenstore.NewClient(srv.Connect(0))
	defer c.Close()
	writeAll(t, c, map[string]string{
		"/local/domain/0/name": "Domain-0",
		"/local/domain/1/name": "drvdom",
		"/local/domain/2/name": "guest",
		"/local/domain/3/name": "other",
		// guest 2: a disk and a NIC from drvdom (domain 1)
		"/local/domain/2/device/vbd/51728/backend-id": "1",
		"/local/domain/2/device/vbd/51728/backend":    "/local/domain/1/backend/vbd/2/51728",
		"/local/domain/2/device/vbd/51728/state":      "4",
		"/local/domain/1/backend/vbd/2/51728/params":  "/tmp/disk.img",
		"/local/domain/1/backend/vbd/2/51728/mode":    "w",
		"/local/domain/1/backend/vbd/2/51728/dev":     "xvdb",
		"/libxl/2/device/vbd/51728/backend":           "/local/domain/1/backend/vbd/2/51728",
		"/local/domain/2/device/vif/0/backend-id":     "1",
		"/local/domain/2/device/vif/0/backend":        "/local/domain/3/device", // hostile: dom0 must not remove it
		"/local/domain/1/backend/vif/2/0/mac":         "00:16:3e:4c:00:02",
		"/local/domain/1/backend/vif/2/0/bridge":      "xenbr0",
		// domain 3: a disk from dom0
		"/local/domain/3/device/vbd/51712/backend-id": "0",
		"/local/domain/3/device/vbd/51712/backend":    "/local/domain/0/backend/vbd/3/51712",
		"/local/domain/0/backend/vbd/3/51712/params":  "/dev/sda",
		"/local/domain/0/backend/vbd/3/51712/dev":     "xvda",
	})
	xl := &fakeXL{t: t, store: c, name: "drvdom"}
	// The snapshots the restarts need are waited for, not slept for: on a
	// loaded machine 100 ms could pass before the supervisor's first step,
	// and a domain removed before it was seen is re-attached from nothing.
	// ReadyWait is far longer than the test takes to say the new drvdomd
	// runs: attaching because it expired is not what is tested.
	ls := &listingStore{Client: c}
	sv := &Supervisor{Store: ls, XL: xl, Name: "drvdom", Poll: 20 * time.Millisecond, ReadyWait: time.Minute, Log: quietLog()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sv.Run(ctx, c) }()
	defer func() { cancel(); <-done }()
	ls.snapshotted(t)
	if calls := xl.Calls(); len(calls) != 0 {
		t.Fatalf("xl called with the driver domain alive: %v", calls)
	}

	// Xen's watchdog restart: the domain is destroyed (libxl removes its
	// home, backends included), then created again under id 5.
	// A snapshot may be under way: its spec reads are one transaction
	// each, so the removal cannot leave it a vif without its bridge.
	srv.ReleaseDomain(1)
	if err := c.Rm(ctx, "/local/domain/1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	srv.IntroduceDomain(5)
	writeAll(t, c, map[string]string{"/local/domain/5/name": "drvdom"})
	time.Sleep(100 * time.Millisecond)
	if calls := xl.Calls(); len(calls) != 0 {
		t.Fatalf("attached before the new drvdomd runs: %v", calls)
	}
	writeAll(t, c, map[string]string{"/local/domain/5/" + ReadyKey: "running"})
	waitUntil(t, "two re-attaches", func() bool { return len(xl.Calls()) >= 2 })
	time.Sleep(100 * time.Millisecond) // more steps: nothing attached twice
	want := []string{
		"block-attach 2 vdev=xvdb,format=raw,access=rw,backend=drvdom,target=/tmp/disk.img",
		"network-attach 2 backend=drvdom mac=00:16:3e:4c:00:02 bridge=xenbr0",
	}
	if got := xl.Calls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("xl calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := c.Read(ctx, "/libxl/2/device/vbd/51728/backend"); !errors.Is(err, xenstore.ErrNotExist) {
		t.Errorf("libxl's record of the old disk left: %v", err)
	}
	if v, err := c.Read(ctx, "/local/domain/3/device/vbd/51712/backend-id"); v != "0" {
		t.Errorf("a path the guest named was removed: %v", err)
	}
	if v, _ := c.Read(ctx, "/local/domain/3/device/vbd/51712/backend-id"); v != "0" {
		t.Errorf("another backend's device touched: backend-id %q", v)
	}

	// A second restart re-attaches from the new snapshot.
	writeAll(t, c, map[string]string{
		"/local/domain/5/backend/vbd/2/51728/params": "/tmp/disk.img",
		"/local/domain/5/backend/vbd/2/51728/mode":   "r",
		"/local/domain/5/backend/vbd/2/51728/dev":    "xvdb",
		"/local/domain/5/backend/vif/2/0/mac":        "00:16:3e:4c:00:02",
	})
	ls.snapshotted(t)
	srv.ReleaseDomain(5)
	if err := c.Rm(ctx, "/local/domain/5"); err != nil {
		t.Fatal(err)
	}
	srv.IntroduceDomain(6)
	writeAll(t, c, map[string]string{"/local/domain/6/name": "drvdom", "/local/domain/6/" + ReadyKey: "running"})
	waitUntil(t, "second re-attach", func() bool { return len(xl.Calls()) >= 4 })
	if got := xl.Calls()[2]; got != "block-attach 2 vdev=xvdb,format=raw,access=ro,backend=drvdom,target=/tmp/disk.img" {
		t.Errorf("second restart: %s", got)
	}
	// The count follows the xl call it counts.
	waitUntil(t, "the second re-attach counted", func() bool { return sv.Reattached.Load() >= 4 })
	time.Sleep(50 * time.Millisecond) // nothing counted twice
	if sv.Reattached.Load() != 4 {
		t.Errorf("Reattached %d", sv.Reattached.Load())
	}
}

// A guest that went away meanwhile gets nothing; a failing xl is reported.
func TestSuperviseGuestGoneAndXLFailure(t *testing.T) {
	srv := xenstored.New()
	defer srv.Close()
	srv.IntroduceDomain(1)
	srv.IntroduceDomain(2)
	c := xenstore.NewClient(srv.Connect(0))
	defer c.Close()
	ctx := context.Background()
	writeAll(t, c, map[string]string{
		"/local/domain/1/name":                    "drvdom",
		"/local/domain/2/name":                    "guest",
		"/local/domain/2/device/vif/0/backend-id": "1",
		"/local/domain/1/backend/vif/2/0/mac":     "00:16:3e:4c:00:02",
	})
	xl := &fakeXL{t: t, store: c, name: "drvdom", fail: true}
	sv := &Supervisor{Store: c, XL: xl, Name: "drvdom", Poll: time.Hour, ReadyWait: 0, Log: quietLog(), domid: -1}
	if err := sv.step(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Rm(ctx, "/local/domain/1"); err != nil {
		t.Fatal(err)
	}
	writeAll(t, c, map[string]string{"/local/domain/4/name": "drvdom"})
	if err := sv.step(ctx); err == nil || !strings.Contains(err.Error(), "toolstack busy") {
		t.Fatalf("xl failure not reported: %v", err)
	}
	// The guest is gone before the next restart: nothing attached.
	writeAll(t, c, map[string]string{"/local/domain/2/device/vif/0/backend-id": "4", "/local/domain/4/backend/vif/2/0/mac": "00:16:3e:4c:00:02"})
	if err := sv.step(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Rm(ctx, "/local/domain/2"); err != nil {
		t.Fatal(err)
	}
	c.Rm(ctx, "/local/domain/4")
	writeAll(t, c, map[string]string{"/local/domain/7/name": "drvdom"})
	n := len(xl.Calls())
	if err := sv.step(ctx); err != nil {
		t.Fatal(err)
	}
	if len(xl.Calls()) != n {
		t.Errorf("attached to a guest that is gone: %v", xl.Calls()[n:])
	}
}

// Specs come from the driver domain's xenstore, which it writes: values that
// would change the meaning of the xl spec are refused.
func TestSpecArgsRefuseInjection(t *testing.T) {
	ok := devSpec{devKey: devKey{Kind: "vbd", Guest: 2, DevID: 51728}, Vdev: "xvdb", Target: "/dev/vg/a,b", Access: "w"}
	if a, err := ok.xlArgs("drvdom"); err != nil || a[2] != "vdev=xvdb,format=raw,access=rw,backend=drvdom,target=/dev/vg/a,b" {
		t.Fatalf("%v %v", a, err)
	}
	for _, s := range []devSpec{
		{devKey: devKey{Kind: "vbd"}, Vdev: "xvdb,backend=evil", Target: "/x"},
		{devKey: devKey{Kind: "vbd"}, Vdev: "xvdb", Target: ""},
		{devKey: devKey{Kind: "vbd"}, Vdev: "xvdb", Target: "/x'; reboot"},
		{devKey: devKey{Kind: "vif"}, MAC: "00:16:3e:00:00:01 script=/tmp/evil"},
		{devKey: devKey{Kind: "vif"}, MAC: "00:16:3e:00:00:01", Bridge: "br0=x"},
		{devKey: devKey{Kind: "pci"}},
	} {
		if a, err := s.xlArgs("drvdom"); err == nil {
			t.Errorf("%+v accepted: %v", s, a)
		}
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
