package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"drvdom/xenstore"
	"drvdom/xenstore/xenstored"
)

type fakeOps struct {
	mu       sync.Mutex
	blockDev map[string][2]uint32 // path -> major:minor of a block device
	files    map[string]bool      // regular files
	attached map[string]string    // loop path -> file
	detached []string
	next     uint32
	links    map[string]bool // netdevs that exist
	enslaved []string
}

func newFakeOps() *fakeOps {
	return &fakeOps{blockDev: map[string][2]uint32{}, files: map[string]bool{}, attached: map[string]string{}, links: map[string]bool{}}
}

func (f *fakeOps) attachLoop(file string, ro bool) (*loopDevice, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := fmt.Sprintf("/dev/loop%d", f.next)
	ld := &loopDevice{Path: p, Major: 7, Minor: f.next}
	f.next++
	f.attached[p] = file
	return ld, nil
}

func (f *fakeOps) detachLoop(p string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.attached[p]; !ok {
		return errors.New("not attached")
	}
	delete(f.attached, p)
	f.detached = append(f.detached, p)
	return nil
}

func (f *fakeOps) blockDevNumber(p string) (uint32, uint32, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n, ok := f.blockDev[p]; ok {
		return n[0], n[1], true, nil
	}
	if f.files[p] {
		return 0, 0, false, nil
	}
	return 0, 0, false, fmt.Errorf("stat %s: %w", p, os.ErrNotExist)
}

func (f *fakeOps) enslave(ctx context.Context, ifname, bridge string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		f.mu.Lock()
		ok := f.links[ifname]
		if ok {
			f.enslaved = append(f.enslaved, ifname+">"+bridge)
		}
		f.mu.Unlock()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("link %s: not there after %v", ifname, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (f *fakeOps) waitLinkGone(ctx context.Context, ifname string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		f.mu.Lock()
		there := f.links[ifname]
		f.mu.Unlock()
		if !there {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("link %s: still there", ifname)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (f *fakeOps) snapshot() (attached map[string]string, detached, enslaved []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := map[string]string{}
	for k, v := range f.attached {
		a[k] = v
	}
	return a, slices.Clone(f.detached), slices.Clone(f.enslaved)
}

func eventually(t *testing.T, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type hpEnv struct {
	t    *testing.T
	ctx  context.Context
	dom0 *xenstore.Client
	ddc  *xenstore.Client
	ops  *fakeOps
	h    *kernelHotplug
}

func newHPEnv(t *testing.T, vifWait time.Duration, tune ...func(*kernelHotplug)) *hpEnv {
	srv := xenstored.New()
	srv.IntroduceDomain(1)
	srv.IntroduceDomain(2)
	e := &hpEnv{t: t, ctx: context.Background(), ops: newFakeOps()}
	e.dom0 = xenstore.NewClient(srv.Connect(0))
	e.ddc = xenstore.NewClient(srv.Connect(1))
	e.h = newKernelHotplug(e.ddc, 1, "xenbr0", quiet, e.ops)
	e.h.vifWait = vifWait
	e.h.diskWait = 200 * time.Millisecond
	e.h.removeGrace = 20 * time.Millisecond
	for _, f := range tune {
		f(e.h) // before Run: its goroutines read these
	}
	e.h.resync = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not stop")
		}
		e.dom0.Close()
		e.ddc.Close()
		srv.Close()
	})
	return e
}

func (e *hpEnv) add(typ, id string, kv ...string) string {
	e.t.Helper()
	bp := "/local/domain/1/backend/" + typ + "/2/" + id
	err := e.dom0.Transaction(e.ctx, func(tx *xenstore.Tx) error {
		fp := "/local/domain/2/device/" + typ + "/" + id
		all := append([]string{"frontend", fp, "online", "1", "state", "1"}, kv...)
		for i := 0; i+1 < len(all); i += 2 {
			if err := tx.Write(e.ctx, bp+"/"+all[i], all[i+1]); err != nil {
				return err
			}
		}
		if err := tx.Write(e.ctx, fp+"/state", "1"); err != nil {
			return err
		}
		if err := tx.SetPerms(e.ctx, fp+"/state", []xenstore.Perm{{Domid: 2, Access: xenstore.PermNone}, {Domid: 1, Access: xenstore.PermRead}}); err != nil {
			return err
		}
		return tx.SetPerms(e.ctx, bp, []xenstore.Perm{{Domid: 1, Access: xenstore.PermNone}})
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return bp
}

// writeKeys writes key, value pairs under bp in one transaction, as the
// toolstack does; an empty value removes the key.
func (e *hpEnv) writeKeys(bp string, kv ...string) {
	e.t.Helper()
	err := e.dom0.Transaction(e.ctx, func(tx *xenstore.Tx) error {
		for i := 0; i+1 < len(kv); i += 2 {
			var err error
			if kv[i+1] == "" {
				err = tx.Rm(e.ctx, bp+"/"+kv[i])
			} else {
				err = tx.Write(e.ctx, bp+"/"+kv[i], kv[i+1])
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// waitDetached waits until n loop devices were detached.
func (e *hpEnv) waitDetached(n int) {
	e.t.Helper()
	eventually(e.t, func() string {
		if _, det, _ := e.ops.snapshot(); len(det) != n {
			return fmt.Sprintf("loops detached %v, want %d after online=0 + Closed", det, n)
		}
		return ""
	})
}

func (e *hpEnv) read(p string) string {
	v, err := e.dom0.Read(e.ctx, p)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return v
}

func (e *hpEnv) waitKey(p, want string) {
	e.t.Helper()
	eventually(e.t, func() string {
		if got := e.read(p); got != want {
			return fmt.Sprintf("%s = %q, want %q", p, got, want)
		}
		return ""
	})
}

func TestHotplugVBDFileAndBlock(t *testing.T) {
	e := newHPEnv(t, 2*time.Second)
	e.ops.files["/srv/guest.img"] = true
	e.ops.blockDev["/dev/nvme0n1p1"] = [2]uint32{259, 1}
	e.ops.next = 10

	file := e.add("vbd", "51712", "params", "/srv/guest.img", "mode", "w")
	e.waitKey(file+"/hotplug-status", "connected")
	if got := e.read(file + "/physical-device"); got != "7:a" {
		t.Errorf("physical-device = %q, want 7:a (hex, as blkback scans it)", got)
	}
	if got := e.read(file + "/physical-device-path"); got != "/dev/loop10" {
		t.Errorf("physical-device-path = %q", got)
	}
	blk := e.add("vbd", "51728", "params", "phy:/dev/nvme0n1p1")
	e.waitKey(blk+"/hotplug-status", "connected")
	if got := e.read(blk + "/physical-device"); got != "103:1" {
		t.Errorf("physical-device = %q, want 103:1", got)
	}
	bad := e.add("vbd", "51744", "params", "/nonexistent")
	e.waitKey(bad+"/hotplug-status", "error")
	if got := e.read(bad + "/hotplug-error"); !strings.Contains(got, "/nonexistent") {
		t.Errorf("hotplug-error = %q", got)
	}
	rel := e.add("vbd", "51760", "params", "relative.img")
	e.waitKey(rel+"/hotplug-status", "error")

	// Toolstack removes the file-backed disk: the loop device goes.
	if err := e.dom0.Rm(e.ctx, file); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		att, det, _ := e.ops.snapshot()
		if len(att) != 0 || !slices.Equal(det, []string{"/dev/loop10"}) {
			return fmt.Sprintf("attached %v detached %v", att, det)
		}
		return ""
	})
	// The block device had no loop: nothing to detach on removal.
	if err := e.dom0.Rm(e.ctx, blk); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, det, _ := e.ops.snapshot(); len(det) != 1 {
		t.Errorf("detached %v", det)
	}
}

func TestHotplugVBDOfflineClosed(t *testing.T) {
	e := newHPEnv(t, 2*time.Second)
	e.ops.files["/srv/a.img"] = true
	bp := e.add("vbd", "51712", "params", "/srv/a.img")
	e.waitKey(bp+"/hotplug-status", "connected")
	if err := e.dom0.Write(e.ctx, bp+"/online", "0"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond)
	if _, det, _ := e.ops.snapshot(); len(det) != 0 {
		t.Fatalf("detached while the kernel may still hold it: %v", det)
	}
	if err := e.dom0.Write(e.ctx, bp+"/state", "6"); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		if _, det, _ := e.ops.snapshot(); len(det) != 1 {
			return "loop not detached after online=0 + Closed"
		}
		// The driver domain cleans the backend side, as xl devd does.
		for _, p := range []string{bp, "/local/domain/1/backend/vbd/2"} {
			if _, err := e.dom0.Directory(e.ctx, p); !errors.Is(err, xenstore.ErrNotExist) {
				return fmt.Sprintf("%s still there (%v)", p, err)
			}
		}
		return ""
	})
}

// The toolstack reads the backend's state when its watch fires; the
// directory must outlive that read (removed at once, libxl failed the detach
// with "wanted state 6 but it was removed"), and go once the grace is over.
func TestHotplugVBDRemovalWaitsForToolstack(t *testing.T) {
	const grace = 400 * time.Millisecond
	e := newHPEnv(t, 2*time.Second, func(h *kernelHotplug) { h.removeGrace = grace })
	e.ops.files["/srv/a.img"] = true
	bp := e.add("vbd", "51712", "params", "/srv/a.img")
	e.waitKey(bp+"/hotplug-status", "connected")
	w, err := e.dom0.Watch(e.ctx, bp+"/state", "libxl")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	<-w.Events() // the watch's first event
	closed := time.Now()
	e.writeKeys(bp, "online", "0", "state", "6") // the toolstack detaches; the kernel backend Closed
	<-w.Events()
	// The loop device goes at once (the kernel backend let it go) ...
	e.waitDetached(1)
	// ... the state node stays for the toolstack to read ... A read
	// answered less than the grace after closed saw the node if it was
	// there, however late it was sent: timed from before the read, a
	// reader held off by a loaded machine past the grace saw a correct
	// removal as early.
	for time.Since(closed) < grace/2 {
		got := e.read(bp + "/state")
		if el := time.Since(closed); got != "6" && el < grace {
			t.Fatalf("%v after Closed: state %q, want 6 still there", el, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// ... and the directory goes after the grace.
	eventually(t, func() string {
		if _, err := e.dom0.Directory(e.ctx, bp); !errors.Is(err, xenstore.ErrNotExist) {
			return fmt.Sprintf("backend still there after the grace (%v)", err)
		}
		return ""
	})
	if d := time.Since(closed); d < grace {
		t.Errorf("backend removed %v after Closed, before the %v grace", d, grace)
	}
	if _, det, _ := e.ops.snapshot(); len(det) != 1 {
		t.Errorf("loop detached %d times, want once", len(det))
	}
}

// A device the toolstack brings back (online=1 again) during the grace is
// not removed under it.
func TestHotplugVBDBackDuringGrace(t *testing.T) {
	e := newHPEnv(t, 2*time.Second, func(h *kernelHotplug) { h.removeGrace = 300 * time.Millisecond })
	e.ops.files["/srv/a.img"] = true
	bp := e.add("vbd", "51712", "params", "/srv/a.img")
	e.waitKey(bp+"/hotplug-status", "connected")
	e.writeKeys(bp, "online", "0", "state", "6") // the toolstack detaches; the kernel backend Closed
	e.waitDetached(1)
	e.writeKeys(bp, "online", "1", "state", "1", "hotplug-status", "") // attached again
	e.waitKey(bp+"/hotplug-status", "connected")                       // set up again
	time.Sleep(500 * time.Millisecond)                                 // past the first removal's grace
	if _, err := e.dom0.Directory(e.ctx, bp); err != nil {
		t.Fatalf("backend brought back was removed: %v", err)
	}
	if got := e.read(bp + "/hotplug-status"); got != "connected" {
		t.Errorf("hotplug-status %q after the grace, want connected", got)
	}
}

func TestHotplugFrontendVanished(t *testing.T) {
	e := newHPEnv(t, 2*time.Second)
	e.ops.files["/srv/a.img"] = true
	e.ops.files["/srv/b.img"] = true
	bp := e.add("vbd", "51712", "params", "/srv/a.img")
	other := e.add("vbd", "51728", "params", "/srv/b.img")
	e.waitKey(bp+"/hotplug-status", "connected")
	e.waitKey(other+"/hotplug-status", "connected")
	if err := e.dom0.Write(e.ctx, bp+"/state", "4"); err != nil {
		t.Fatal(err)
	}
	// The guest is destroyed: its frontend goes; online stays 1.
	if err := e.dom0.Rm(e.ctx, "/local/domain/2/device/vbd/51712"); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		if _, err := e.dom0.Directory(e.ctx, bp); !errors.Is(err, xenstore.ErrNotExist) {
			return fmt.Sprintf("backend still there (%v)", err)
		}
		if _, det, _ := e.ops.snapshot(); len(det) != 1 {
			return fmt.Sprintf("detached %v, want one loop", det)
		}
		return ""
	})
	if got := e.read(other + "/hotplug-status"); got != "connected" {
		t.Errorf("the other disk: hotplug-status %q", got)
	}
}

func TestHotplugVIF(t *testing.T) {
	e := newHPEnv(t, 2*time.Second)
	bp := e.add("vif", "0")
	time.Sleep(50 * time.Millisecond)
	if got := e.read(bp + "/hotplug-status"); !strings.HasPrefix(got, "<") {
		t.Fatalf("hotplug-status %q before the netdev exists", got)
	}
	e.ops.mu.Lock()
	e.ops.links["vif2.0"] = true
	e.ops.mu.Unlock()
	e.waitKey(bp+"/hotplug-status", "connected")
	if _, _, ens := e.ops.snapshot(); !slices.Equal(ens, []string{"vif2.0>xenbr0"}) {
		t.Errorf("enslaved %v", ens)
	}
	// A vif whose backend names its bridge joins that one.
	e.ops.mu.Lock()
	e.ops.links["vif2.3"] = true
	e.ops.mu.Unlock()
	bp3 := e.add("vif", "3", "bridge", "xenbr9")
	e.waitKey(bp3+"/hotplug-status", "connected")
	if _, _, ens := e.ops.snapshot(); !slices.Contains(ens, "vif2.3>xenbr9") {
		t.Errorf("enslaved %v, want vif2.3 in xenbr9", ens)
	}
}

func TestHotplugVIFNeverAppears(t *testing.T) {
	// A vif whose netdev never comes: error, not a hang.
	e := newHPEnv(t, 100*time.Millisecond)
	bp2 := e.add("vif", "1", "vifname", "guestnet")
	e.waitKey(bp2+"/hotplug-status", "error")
}

func TestHotplugVIFRemovedWhileWaiting(t *testing.T) {
	// Removed while waiting: the waiter stops (Run's cleanup waits for it)
	// and the directory is not recreated.
	e := newHPEnv(t, time.Hour)
	bp3 := e.add("vif", "2")
	time.Sleep(30 * time.Millisecond)
	if err := e.dom0.Rm(e.ctx, bp3); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if _, err := e.dom0.Read(e.ctx, bp3+"/hotplug-status"); !errors.Is(err, xenstore.ErrNotExist) {
		t.Errorf("removed vif's directory came back: %v", err)
	}
}

func TestDiskTarget(t *testing.T) {
	for in, want := range map[string]string{"/a.img": "/a.img", "phy:/dev/sda": "/dev/sda", "file:/x": "/x", " /y\n": "/y"} {
		if got := diskTarget(in); got != want {
			t.Errorf("diskTarget(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHotplugVBDWaitsForLateDisk(t *testing.T) {
	e := newHPEnv(t, 2*time.Second, func(h *kernelHotplug) { h.diskWait = 5 * time.Second })
	bp := e.add("vbd", "51712", "params", "/dev/nvme0n1")
	time.Sleep(150 * time.Millisecond)
	if got := e.read(bp + "/hotplug-status"); !strings.HasPrefix(got, "<") {
		t.Fatalf("hotplug-status %q before the disk exists", got)
	}
	e.ops.mu.Lock()
	e.ops.blockDev["/dev/nvme0n1"] = [2]uint32{259, 0}
	e.ops.mu.Unlock()
	e.waitKey(bp+"/hotplug-status", "connected")
	if got := e.read(bp + "/physical-device"); got != "103:0" {
		t.Errorf("physical-device = %q", got)
	}
}

func TestHotplugVIFRemovalWaitsForNetdev(t *testing.T) {
	e := newHPEnv(t, 2*time.Second, func(h *kernelHotplug) { h.vifGoneWait = 5 * time.Second })
	e.ops.mu.Lock()
	e.ops.links["vif2.0"] = true
	e.ops.mu.Unlock()
	bp := e.add("vif", "0")
	e.waitKey(bp+"/hotplug-status", "connected")
	e.writeKeys(bp, "online", "0", "state", "6") // the toolstack detaches; the kernel backend Closed
	time.Sleep(150 * time.Millisecond)
	if _, err := e.dom0.Directory(e.ctx, bp); err != nil {
		t.Fatalf("backend removed while vif2.0 still exists: %v", err)
	}
	e.ops.mu.Lock()
	delete(e.ops.links, "vif2.0") // netback freed it
	e.ops.mu.Unlock()
	eventually(t, func() string {
		if _, err := e.dom0.Directory(e.ctx, bp); !errors.Is(err, xenstore.ErrNotExist) {
			return fmt.Sprintf("backend still there after the vif went (%v)", err)
		}
		return ""
	})
}
