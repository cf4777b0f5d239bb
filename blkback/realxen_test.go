package blkback_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/xensim/blkfront"
	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

// TestRealXenLoopback serves a disk to this very domain on real Xen:
// gntdev, gntalloc, the event channel device and the real xenstore, with
// the Go blkfront as the guest. It runs in the lab's dom0 or driver domain.
func TestRealXenLoopback(t *testing.T) {
	for _, dev := range []string{"/dev/xen/gntdev", "/dev/xen/gntalloc", "/dev/xen/evtchn"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs real Xen (%s: %v)", dev, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	store, err := xenstore.Open()
	if err != nil {
		t.Fatalf("xenstore on a Xen host: %v", err)
	}
	defer store.Close()
	v, err := store.Read(ctx, "domid")
	if err != nil {
		t.Fatal(err)
	}
	self, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		t.Fatalf("domid %q", v)
	}
	mapper, err := grant.OpenGntdev()
	if err != nil {
		t.Fatal(err)
	}
	defer mapper.Close()
	sharer, err := grant.OpenGntalloc()
	if err != nil {
		t.Fatal(err)
	}
	defer sharer.Close()
	evh, err := evtchn.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer evh.Close()
	drv := &blkback.Driver{Grants: mapper, Events: evtchn.Open, Log: quietLog()}
	bstore, err := xenstore.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer bstore.Close()
	mctx, mcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		xenbus.NewManager(bstore, uint16(self), quietLog(), drv).Run(mctx)
	}()
	defer func() { mcancel(); <-done }()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := blkfront.SelfTest(ctx, store, uint16(self), sharer, evh, path, quietLog()); err != nil {
		t.Fatal(err)
	}
}
