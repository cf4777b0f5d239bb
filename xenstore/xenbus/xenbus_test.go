package xenbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"drvdom/xenstore"
	"drvdom/xenstore/xenstored"
)

func TestStateValues(t *testing.T) {
	// xen/include/public/io/xenbus.h
	want := map[State]int{Unknown: 0, Initialising: 1, InitWait: 2, Initialised: 3, Connected: 4,
		Closing: 5, Closed: 6, Reconfiguring: 7, Reconfigured: 8}
	for s, n := range want {
		if int(s) != n {
			t.Errorf("%v = %d, want %d", s, int(s), n)
		}
	}
	if got := State(42).String(); got != "State(42)" {
		t.Errorf("State(42).String() = %q", got)
	}
	if got := InitWait.String(); got != "InitWait" {
		t.Errorf("InitWait.String() = %q", got)
	}
}

func TestParseState(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want State
		ok   bool
	}{
		{"0", Unknown, true}, {"1", Initialising, true}, {"4", Connected, true}, {"8", Reconfigured, true},
		{"6\n", Closed, true}, {" 3 ", Initialised, true},
		{"9", Unknown, false}, {"-1", Unknown, false}, {"", Unknown, false}, {"abc", Unknown, false},
		{"4x", Unknown, false}, {"99999999999999999999", Unknown, false}, {"0x4", Unknown, false},
	} {
		got, ok := ParseState(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseState(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzParseState(f *testing.F) {
	for _, s := range []string{"1", "4", "9", "-1", " 6\n", "\x00", "4294967300"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st, ok := ParseState(s)
		if ok && (st < Unknown || st > Reconfigured) {
			t.Fatalf("ParseState(%q) = %v accepted out of range", s, st)
		}
		if !ok && st != Unknown {
			t.Fatalf("ParseState(%q) rejected but returned %v", s, st)
		}
		if ok && strconv.Itoa(int(st)) != strings.TrimSpace(s) {
			t.Fatalf("ParseState(%q) = %v does not round-trip", s, st)
		}
		_ = st.String()
	})
}

func TestParsePathParts(t *testing.T) {
	if d, ok := parseDomid("5"); !ok || d != 5 {
		t.Errorf("parseDomid(5) = %d %v", d, ok)
	}
	for _, bad := range []string{"", "05", "-1", "65535", "32752", "x", "1/2"} {
		if _, ok := parseDomid(bad); ok {
			t.Errorf("parseDomid(%q) accepted", bad)
		}
	}
	if id, ok := parseDevID("51712"); !ok || id != 51712 {
		t.Errorf("parseDevID = %d %v", id, ok)
	}
	for _, bad := range []string{"", "012", "4294967296", "a"} {
		if _, ok := parseDevID(bad); ok {
			t.Errorf("parseDevID(%q) accepted", bad)
		}
	}
	for p, want := range map[string]bool{
		"/local/domain/2/device/vbd/51712": true,
		"local/domain/2":                   false,
		"/":                                false,
		"/a//b":                            false,
		"/a/b/":                            false,
		"/a/b c":                           false,
	} {
		if got := validFrontPath(p); got != want {
			t.Errorf("validFrontPath(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestErrorPath(t *testing.T) {
	d := &Dev{BackPath: "/local/domain/1/backend/vbd/2/51712"}
	if got, want := d.ErrorPath(), "/local/domain/1/error/backend/vbd/2/51712/error"; got != want {
		t.Errorf("ErrorPath = %q, want %q", got, want)
	}
}

// ---- lifecycle on the in-memory xenstored ----

const (
	dd    = 1 // driver domain
	guest = 2
)

type call struct {
	op   string // probe connect disconnect close
	dev  string
	back State // backend state seen at the call
}

type fakeDriver struct {
	typ string
	mu  sync.Mutex
	log []call
	// failConnect makes Connect fail for these device ids.
	failConnect map[uint32]bool
	failProbe   map[uint32]bool
	// missingProbes makes Probe fail with fs.ErrNotExist this many times.
	missingProbes int
	open          int // instances probed and not closed
	connected     int
	params        []string // what each successful Probe read
}

func (f *fakeDriver) Type() string { return f.typ }

func (f *fakeDriver) record(op string, d *Dev) {
	bs, _ := d.BackState(context.Background())
	f.mu.Lock()
	f.log = append(f.log, call{op: op, dev: d.Name(), back: bs})
	f.mu.Unlock()
}

func (f *fakeDriver) Probe(ctx context.Context, d *Dev) (Instance, error) {
	f.record("probe", d)
	if f.failProbe[d.DevID] {
		return nil, errors.New("no such disk")
	}
	f.mu.Lock()
	missing := f.missingProbes > 0
	if missing {
		f.missingProbes--
	}
	f.mu.Unlock()
	if missing {
		return nil, fmt.Errorf("open /dev/nvme0n1: %w", fs.ErrNotExist)
	}
	params, err := d.ReadBack(ctx, "params")
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.params = append(f.params, params)
	f.mu.Unlock()
	if err := d.WriteBack(ctx, "hotplug-status", "connected"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.open++
	f.mu.Unlock()
	return &fakeInst{f: f, d: d}, nil
}

func (f *fakeDriver) count(op, dev string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.log {
		if c.op == op && c.dev == dev {
			n++
		}
	}
	return n
}

func (f *fakeDriver) last(op, dev string) (call, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.log) - 1; i >= 0; i-- {
		if f.log[i].op == op && f.log[i].dev == dev {
			return f.log[i], true
		}
	}
	return call{}, false
}

func (f *fakeDriver) counts() (open, connected int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.open, f.connected
}

type fakeInst struct {
	f         *fakeDriver
	d         *Dev
	connected bool
	closed    bool
}

func (i *fakeInst) Connect(ctx context.Context) error {
	i.f.record("connect", i.d)
	if i.connected {
		return errors.New("fake: Connect while connected")
	}
	if i.f.failConnect[i.d.DevID] {
		return fmt.Errorf("map ring: %w", errors.New("grant refused"))
	}
	if _, err := i.d.ReadFront(ctx, "ring-ref"); err != nil {
		return err
	}
	i.connected = true
	i.f.mu.Lock()
	i.f.connected++
	i.f.mu.Unlock()
	return nil
}

func (i *fakeInst) Disconnect() error {
	i.f.record("disconnect", i.d)
	if i.connected {
		i.connected = false
		i.f.mu.Lock()
		i.f.connected--
		i.f.mu.Unlock()
	}
	return nil
}

func (i *fakeInst) Close() error {
	i.f.record("close", i.d)
	if i.closed {
		return errors.New("fake: double Close")
	}
	if i.connected {
		return errors.New("fake: Close while connected")
	}
	i.closed = true
	i.f.mu.Lock()
	i.f.open--
	i.f.mu.Unlock()
	return nil
}

type env struct {
	t      *testing.T
	srv    *xenstored.Server
	dom0   *xenstore.Client
	ddc    *xenstore.Client
	guestc *xenstore.Client
	ctx    context.Context
	// removeNodes and probeWait are Manager.RemoveNodes and ProbeWait for
	// managers start makes.
	removeNodes bool
	probeWait   time.Duration
	removeGrace time.Duration
	resync      time.Duration // Manager.Resync; 0: 50 ms
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := xenstored.New()
	srv.IntroduceDomain(dd)
	srv.IntroduceDomain(guest)
	e := &env{t: t, srv: srv, ctx: context.Background(), removeNodes: true}
	e.dom0 = xenstore.NewClient(srv.Connect(0))
	e.ddc = xenstore.NewClient(srv.Connect(dd))
	e.guestc = xenstore.NewClient(srv.Connect(guest))
	t.Cleanup(func() {
		e.dom0.Close()
		e.ddc.Close()
		e.guestc.Close()
		srv.Close()
	})
	return e
}

func backPath(typ string, id uint32) string {
	return fmt.Sprintf("/local/domain/%d/backend/%s/%d/%d", dd, typ, guest, id)
}

func frontPath(typ string, id uint32) string {
	return fmt.Sprintf("/local/domain/%d/device/%s/%d", guest, typ, id)
}

// addDevice does what libxl does in dom0 to give the guest a device served
// by the driver domain.
func (e *env) addDevice(typ string, id uint32) {
	e.t.Helper()
	err := e.dom0.Transaction(e.ctx, func(tx *xenstore.Tx) error {
		return e.addDeviceTx(tx, typ, id, "/disk.img")
	})
	if err != nil {
		e.t.Fatalf("add device: %v", err)
	}
}

// addDeviceTx writes a new device's backend and frontend directories in tx.
func (e *env) addDeviceTx(tx *xenstore.Tx, typ string, id uint32, params string) error {
	ctx := e.ctx
	bp, fp := backPath(typ, id), frontPath(typ, id)
	for _, kv := range [][2]string{
		{bp + "/frontend", fp}, {bp + "/frontend-id", strconv.Itoa(guest)}, {bp + "/online", "1"},
		{bp + "/state", "1"}, {bp + "/params", params},
		{fp + "/backend", bp}, {fp + "/backend-id", strconv.Itoa(dd)}, {fp + "/state", "1"},
	} {
		if err := tx.Write(ctx, kv[0], kv[1]); err != nil {
			return err
		}
	}
	if err := tx.SetPerms(ctx, bp, []xenstore.Perm{{Domid: dd, Access: xenstore.PermNone}, {Domid: guest, Access: xenstore.PermRead}}); err != nil {
		return err
	}
	for _, k := range []string{"frontend", "frontend-id", "online", "state", "params"} {
		if err := tx.SetPerms(ctx, bp+"/"+k, []xenstore.Perm{{Domid: dd, Access: xenstore.PermNone}, {Domid: guest, Access: xenstore.PermRead}}); err != nil {
			return err
		}
	}
	for _, p := range []string{fp, fp + "/backend", fp + "/backend-id", fp + "/state"} {
		if err := tx.SetPerms(ctx, p, []xenstore.Perm{{Domid: guest, Access: xenstore.PermNone}, {Domid: dd, Access: xenstore.PermRead}}); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) front(typ string, id uint32, s State) {
	e.t.Helper()
	if s == Initialised || s == Connected {
		if err := e.guestc.Write(e.ctx, frontPath(typ, id)+"/ring-ref", "8"); err != nil {
			e.t.Fatalf("write ring-ref: %v", err)
		}
	}
	if err := e.guestc.Write(e.ctx, frontPath(typ, id)+"/state", strconv.Itoa(int(s))); err != nil {
		e.t.Fatalf("frontend state %v: %v", s, err)
	}
}

func (e *env) read(p string) string {
	v, err := e.dom0.Read(e.ctx, p)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return v
}

// handshake answers the backend's InitWait with Initialised and waits for
// it to connect.
func (e *env) handshake(typ string, id uint32) {
	e.t.Helper()
	e.waitBack(typ, id, InitWait)
	e.front(typ, id, Initialised)
	e.waitBack(typ, id, Connected)
}

// waitRemoved waits until typ/id's backend directory is gone and m no
// longer manages the device.
func (e *env) waitRemoved(m *Manager, typ string, id uint32) {
	e.t.Helper()
	eventually(e.t, func() string {
		if _, err := e.dom0.Directory(e.ctx, backPath(typ, id)); !errors.Is(err, xenstore.ErrNotExist) {
			return fmt.Sprintf("backend directory still there (%v)", err)
		}
		if m.Devices() != 0 {
			return "device still managed"
		}
		return ""
	})
}

func (e *env) waitBack(typ string, id uint32, s State) {
	e.t.Helper()
	want := strconv.Itoa(int(s))
	p := backPath(typ, id) + "/state"
	eventually(e.t, func() string {
		if got := e.read(p); got != want {
			return fmt.Sprintf("%s = %s, want %s (%v)", p, got, want, s)
		}
		return ""
	})
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

func (e *env) start(drivers ...Driver) (*Manager, func()) {
	e.t.Helper()
	m := NewManager(e.ddc, dd, slog.New(slog.NewTextHandler(io.Discard, nil)), drivers...)
	m.Resync = 50 * time.Millisecond
	if e.resync > 0 {
		m.Resync = e.resync
	}
	m.RemoveNodes = e.removeNodes
	m.ProbeWait = e.probeWait
	m.RemoveGrace = e.removeGrace
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- m.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				e.t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			e.t.Fatal("Run did not return after cancel")
		}
	}
	e.t.Cleanup(stop)
	return m, stop
}

func TestVBDLifecycle(t *testing.T) {
	e := newEnv(t)
	drv := &fakeDriver{typ: "vbd"}
	m, stop := e.start(drv)
	const id = 51712
	name := "vbd 2/51712"
	e.addDevice("vbd", id)

	// Probe, hotplug-status, InitWait.
	e.waitBack("vbd", id, InitWait)
	if got := e.read(backPath("vbd", id) + "/hotplug-status"); got != "connected" {
		t.Errorf("hotplug-status = %q", got)
	}
	if n := drv.count("probe", name); n != 1 {
		t.Errorf("probes = %d, want 1", n)
	}
	if c, _ := drv.last("probe", name); c.back != Initialising {
		t.Errorf("probe ran in backend state %v, want Initialising", c.back)
	}

	// blkfront answers InitWait with Initialised: connect.
	e.front("vbd", id, Initialised)
	e.waitBack("vbd", id, Connected)
	if c, _ := drv.last("connect", name); c.back != InitWait {
		t.Errorf("connect ran in backend state %v, want InitWait", c.back)
	}
	// Frontend Connected too: no second Connect.
	e.front("vbd", id, Connected)
	time.Sleep(100 * time.Millisecond)
	if n := drv.count("connect", name); n != 1 {
		t.Errorf("connects = %d, want 1", n)
	}

	// Frontend closes.
	e.front("vbd", id, Closing)
	e.waitBack("vbd", id, Closing)
	if _, c := drv.counts(); c != 0 {
		t.Errorf("still connected after frontend Closing")
	}
	e.front("vbd", id, Closed)
	e.waitBack("vbd", id, Closed)

	// Guest reboots: Initialising -> InitWait -> connect again.
	e.front("vbd", id, Initialising)
	e.handshake("vbd", id)
	if n := drv.count("connect", name); n != 2 {
		t.Errorf("connects after reboot = %d, want 2", n)
	}
	if n := drv.count("probe", name); n != 1 {
		t.Errorf("probes after reboot = %d, want 1", n)
	}

	// Toolstack detaches: online=0 + backend Closing, frontend follows to Closed.
	err := e.dom0.Transaction(e.ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(e.ctx, backPath("vbd", id)+"/online", "0"); err != nil {
			return err
		}
		return tx.Write(e.ctx, backPath("vbd", id)+"/state", "5")
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := drv.count("close", name); n != 0 {
		t.Fatalf("closed while the frontend was still Connected")
	}
	e.front("vbd", id, Closed)
	eventually(t, func() string {
		if n := drv.count("close", name); n != 1 {
			return fmt.Sprintf("closes = %d, want 1", n)
		}
		if m.Devices() != 0 {
			return fmt.Sprintf("manager still has %d devices", m.Devices())
		}
		return ""
	})
	// The driver domain removes the backend directory (dom0's libxl only
	// removes the frontend side), and the emptied frontend-domain directory.
	eventually(t, func() string {
		for _, p := range []string{backPath("vbd", id), fmt.Sprintf("/local/domain/%d/backend/vbd/%d", dd, guest)} {
			if _, err := e.dom0.Directory(e.ctx, p); !errors.Is(err, xenstore.ErrNotExist) {
				return fmt.Sprintf("%s still there (%v)", p, err)
			}
		}
		return ""
	})
	time.Sleep(150 * time.Millisecond)
	stop()
	if n := drv.count("probe", name); n != 1 {
		t.Errorf("probes at end = %d, want 1", n)
	}
	if open, conn := drv.counts(); open != 0 || conn != 0 {
		t.Errorf("open instances %d, connected %d at end", open, conn)
	}
}

func TestVIFConnectsOnConnectedOnly(t *testing.T) {
	e := newEnv(t)
	drv := &fakeDriver{typ: "vif"}
	e.start(drv)
	e.addDevice("vif", 0)
	e.waitBack("vif", 0, InitWait)
	e.front("vif", 0, Initialised)
	time.Sleep(100 * time.Millisecond)
	if n := drv.count("connect", "vif 2/0"); n != 0 {
		t.Fatalf("vif connected on frontend Initialised")
	}
	e.front("vif", 0, Connected)
	e.waitBack("vif", 0, Connected)
}

func TestConnectErrorIsolated(t *testing.T) {
	e := newEnv(t)
	drv := &fakeDriver{typ: "vbd", failConnect: map[uint32]bool{51712: true}}
	e.start(drv)
	e.addDevice("vbd", 51712)
	e.addDevice("vbd", 51728)
	e.waitBack("vbd", 51712, InitWait)
	e.waitBack("vbd", 51728, InitWait)
	e.front("vbd", 51712, Initialised)
	e.front("vbd", 51728, Initialised)
	e.waitBack("vbd", 51712, Closing)
	e.waitBack("vbd", 51728, Connected)
	ep := fmt.Sprintf("/local/domain/%d/error/backend/vbd/%d/51712/error", dd, guest)
	got := e.read(ep)
	if !strings.HasPrefix(got, "5 ") || !strings.Contains(got, "grant refused") {
		t.Errorf("%s = %q, want \"5 ...grant refused\"", ep, got)
	}
	if v := e.read(fmt.Sprintf("/local/domain/%d/error/backend/vbd/%d/51728/error", dd, guest)); !strings.Contains(v, "ENOENT") && !strings.Contains(v, "not exist") {
		t.Errorf("healthy device has an error node: %q", v)
	}
	// The failed one recovers through the normal path once it can connect.
	e.front("vbd", 51712, Closed)
	e.waitBack("vbd", 51712, Closed)
}

func TestProbeErrorWritesError(t *testing.T) {
	e := newEnv(t)
	drv := &fakeDriver{typ: "vbd", failProbe: map[uint32]bool{51712: true}}
	m, _ := e.start(drv)
	e.addDevice("vbd", 51712)
	e.waitBack("vbd", 51712, Closing)
	if v := e.read(fmt.Sprintf("/local/domain/%d/error/backend/vbd/%d/51712/error", dd, guest)); !strings.Contains(v, "no such disk") {
		t.Errorf("error node = %q", v)
	}
	if err := e.dom0.Write(e.ctx, backPath("vbd", 51712)+"/online", "0"); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		if m.Devices() != 0 {
			return "failed device not removed on online=0"
		}
		for _, p := range []string{backPath("vbd", 51712), fmt.Sprintf("/local/domain/%d/error/backend/vbd/%d/51712", dd, guest)} {
			if _, err := e.dom0.Directory(e.ctx, p); !errors.Is(err, xenstore.ErrNotExist) {
				return fmt.Sprintf("%s still there (%v)", p, err)
			}
		}
		return ""
	})
}

func TestFrontendVanished(t *testing.T) {
	e := newEnv(t)
	drv := &fakeDriver{typ: "vbd"}
	m, _ := e.start(drv)
	e.addDevice("vbd", 51712)
	e.addDevice("vbd", 51728)
	e.handshake("vbd", 51712)
	// The guest is destroyed: its frontend directory goes, online stays 1.
	if err := e.dom0.Rm(e.ctx, frontPath("vbd", 51712)); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		if drv.count("close", "vbd 2/51712") != 1 {
			return "not closed after its frontend vanished"
		}
		if _, err := e.dom0.Directory(e.ctx, backPath("vbd", 51712)); !errors.Is(err, xenstore.ErrNotExist) {
			return fmt.Sprintf("backend directory still there (%v)", err)
		}
		if m.Devices() != 1 {
			return fmt.Sprintf("%d devices, want the other one left", m.Devices())
		}
		return ""
	})
	// The sibling is untouched and the frontend-domain directory stays.
	if got := e.read(backPath("vbd", 51728) + "/state"); got != "2" {
		t.Errorf("sibling state = %q, want 2", got)
	}
}

// TestBackendDirReplaced: the toolstack removes a connected device and writes
// it anew, with another disk, in one transaction (a detach and attach of
// the same id with no look in between). The old instance must not serve the
// new directory: it is closed and a new probe reads the new disk.
func TestBackendDirReplaced(t *testing.T) {
	e := newEnv(t)
	drv := &fakeDriver{typ: "vbd"}
	e.resync = time.Hour // the replacement alone must bring the new probe
	m, _ := e.start(drv)
	const id = 51712
	e.addDevice("vbd", id)
	e.handshake("vbd", id)
	err := e.dom0.Transaction(e.ctx, func(tx *xenstore.Tx) error {
		for _, p := range []string{backPath("vbd", id), frontPath("vbd", id)} {
			if err := tx.Rm(e.ctx, p); err != nil {
				return err
			}
		}
		return e.addDeviceTx(tx, "vbd", id, "/other.img")
	})
	if err != nil {
		t.Fatal(err)
	}
	e.waitBack("vbd", id, InitWait)
	eventually(t, func() string {
		drv.mu.Lock()
		defer drv.mu.Unlock()
		if len(drv.params) != 2 || drv.params[1] != "/other.img" {
			return fmt.Sprintf("probes read params %q, want a second probe of /other.img", drv.params)
		}
		if drv.open != 1 || drv.connected != 0 {
			return fmt.Sprintf("open %d connected %d, want the old instance closed and the new one waiting", drv.open, drv.connected)
		}
		return ""
	})
	if got := e.read(backPath("vbd", id) + "/hotplug-status"); got != "connected" {
		t.Errorf("hotplug-status = %q after the new probe", got)
	}
	e.front("vbd", id, Initialised)
	e.waitBack("vbd", id, Connected)
	if m.Devices() != 1 {
		t.Errorf("devices = %d, want 1", m.Devices())
	}
}

func TestBackendDirRemoved(t *testing.T) {
	e := newEnv(t)
	drv := &fakeDriver{typ: "vbd"}
	m, _ := e.start(drv)
	e.addDevice("vbd", 51712)
	e.handshake("vbd", 51712)
	// Guest destroyed, toolstack force-removes the backend.
	if err := e.dom0.Rm(e.ctx, backPath("vbd", 51712)); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		if open, conn := drv.counts(); open != 0 || conn != 0 {
			return fmt.Sprintf("open %d connected %d after removal", open, conn)
		}
		if m.Devices() != 0 {
			return "device still managed"
		}
		return ""
	})
	if _, err := e.dom0.Read(e.ctx, backPath("vbd", 51712)+"/state"); !errors.Is(err, xenstore.ErrNotExist) {
		t.Errorf("backend state re-created after removal: %v", err)
	}
	// Same device id again: probed afresh.
	e.addDevice("vbd", 51712)
	e.waitBack("vbd", 51712, InitWait)
	if n := drv.count("probe", "vbd 2/51712"); n != 2 {
		t.Errorf("probes = %d, want 2", n)
	}
}

func TestHostileFrontendState(t *testing.T) {
	e := newEnv(t)
	drv := &fakeDriver{typ: "vbd"}
	e.start(drv)
	e.addDevice("vbd", 51712)
	e.waitBack("vbd", 51712, InitWait)
	for _, v := range []string{"garbage", "99", "-3", strings.Repeat("9", 200)} {
		if err := e.guestc.Write(e.ctx, frontPath("vbd", 51712)+"/state", v); err != nil {
			t.Fatal(err)
		}
	}
	e.waitBack("vbd", 51712, Closed)
	e.front("vbd", 51712, Initialising)
	e.handshake("vbd", 51712)
}

func TestResumeConnectedDevice(t *testing.T) {
	e := newEnv(t)
	e.addDevice("vbd", 51712)
	// A previous drvdomd left it Connected; the frontend is Connected.
	if err := e.dom0.Write(e.ctx, backPath("vbd", 51712)+"/state", "4"); err != nil {
		t.Fatal(err)
	}
	e.front("vbd", 51712, Connected)
	drv := &fakeDriver{typ: "vbd"}
	_, stop := e.start(drv)
	eventually(t, func() string {
		if _, c := drv.counts(); c != 1 {
			return "not reconnected"
		}
		return ""
	})
	if c, _ := drv.last("connect", "vbd 2/51712"); c.back != Connected {
		t.Errorf("resume went through %v, want straight Connect", c.back)
	}
	// Daemon stops: instances released, xenstore untouched.
	stop()
	if open, conn := drv.counts(); open != 0 || conn != 0 {
		t.Errorf("open %d connected %d after shutdown", open, conn)
	}
	if got := e.read(backPath("vbd", 51712) + "/state"); got != "4" {
		t.Errorf("backend state after shutdown = %q, want 4", got)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		e := newEnv(t)
		drv := &fakeDriver{typ: "vbd"}
		vif := &fakeDriver{typ: "vif"}
		_, stop := e.start(drv, vif)
		for i := uint32(0); i < 5; i++ {
			e.addDevice("vbd", 51712+16*i)
			e.addDevice("vif", i)
		}
		for i := uint32(0); i < 5; i++ {
			e.waitBack("vbd", 51712+16*i, InitWait)
			e.front("vbd", 51712+16*i, Initialised)
			e.waitBack("vbd", 51712+16*i, Connected)
		}
		for i := uint32(0); i < 3; i++ {
			if err := e.dom0.Rm(e.ctx, backPath("vbd", 51712+16*i)); err != nil {
				t.Fatal(err)
			}
		}
		stop()
		e.dom0.Close()
		e.ddc.Close()
		e.guestc.Close()
		if open, conn := drv.counts(); open != 0 || conn != 0 {
			t.Errorf("vbd open %d connected %d", open, conn)
		}
		if open, _ := vif.counts(); open != 0 {
			t.Errorf("vif open %d", open)
		}
	}()
	eventually(t, func() string {
		if n := runtime.NumGoroutine(); n > base {
			buf := make([]byte, 1<<16)
			return fmt.Sprintf("%d goroutines, started with %d:\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
		return ""
	})
}

func TestRestartAfterClose(t *testing.T) {
	e := newEnv(t)
	e.addDevice("vbd", 51712)
	// A previous drvdomd closed the device and the frontend is Closed.
	if err := e.dom0.Write(e.ctx, backPath("vbd", 51712)+"/state", "6"); err != nil {
		t.Fatal(err)
	}
	e.front("vbd", 51712, Closed)
	var seen []string
	var mu sync.Mutex
	w, err := e.dom0.Watch(e.ctx, backPath("vbd", 51712)+"/state", "t")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-stopWatch:
				return
			case _, ok := <-w.Events():
				if !ok {
					return
				}
				v := e.read(backPath("vbd", 51712) + "/state")
				mu.Lock()
				seen = append(seen, v)
				mu.Unlock()
			}
		}
	}()
	drv := &fakeDriver{typ: "vbd"}
	e.start(drv)
	eventually(t, func() string {
		if drv.count("probe", "vbd 2/51712") != 1 {
			return "not probed"
		}
		return ""
	})
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	for _, v := range seen {
		if v != "6" {
			t.Errorf("backend state went through %q while the frontend stayed Closed (seen %v)", v, seen)
		}
	}
	mu.Unlock()
	// The guest comes back.
	e.front("vbd", 51712, Initialising)
	e.handshake("vbd", 51712)
	close(stopWatch)
	<-watchDone
}

func TestKeepNodesByDefault(t *testing.T) {
	e := newEnv(t)
	e.removeNodes = false
	drv := &fakeDriver{typ: "vbd"}
	m, _ := e.start(drv)
	e.addDevice("vbd", 51712)
	e.waitBack("vbd", 51712, InitWait)
	if err := e.dom0.Write(e.ctx, backPath("vbd", 51712)+"/online", "0"); err != nil {
		t.Fatal(err)
	}
	e.front("vbd", 51712, Closed)
	e.waitBack("vbd", 51712, Closed)
	eventually(t, func() string {
		if m.Devices() != 0 || drv.count("close", "vbd 2/51712") != 1 {
			return "not closed"
		}
		return ""
	})
	time.Sleep(50 * time.Millisecond)
	if got := e.read(backPath("vbd", 51712) + "/state"); got != "6" {
		t.Errorf("backend state = %q, want 6 kept without RemoveNodes", got)
	}
}

func TestProbeRetriesMissingDisk(t *testing.T) {
	e := newEnv(t)
	e.probeWait = 5 * time.Second
	drv := &fakeDriver{typ: "vbd", missingProbes: 2}
	e.start(drv)
	e.addDevice("vbd", 51712)
	e.waitBack("vbd", 51712, InitWait)
	if n := drv.count("probe", "vbd 2/51712"); n != 3 {
		t.Errorf("probes = %d, want 3 (two misses, then the disk)", n)
	}
	// Without ProbeWait a missing disk fails at once.
	e2 := newEnv(t)
	drv2 := &fakeDriver{typ: "vbd", missingProbes: 1}
	e2.start(drv2)
	e2.addDevice("vbd", 51712)
	e2.waitBack("vbd", 51712, Closing)
	if v := e2.read(fmt.Sprintf("/local/domain/%d/error/backend/vbd/%d/51712/error", dd, guest)); !strings.HasPrefix(v, "2 ") {
		t.Errorf("error node = %q, want ENOENT (2)", v)
	}
}
