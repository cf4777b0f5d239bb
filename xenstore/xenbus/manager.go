package xenbus

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"drvdom/xenstore"
)

// Driver is one backend type ("vbd", "vif").
type Driver interface {
	Type() string
	// Probe runs when backend/<type>/<frontdom>/<devid> appears with
	// online=1: read the backend keys, set up the host side, publish
	// features, write hotplug-status=connected. The lifecycle then switches
	// to InitWait. ctx lives as long as the device.
	Probe(ctx context.Context, d *Dev) (Instance, error)
}

// Instance is a probed device.
type Instance interface {
	// Connect maps the frontend's rings, binds its event channels and starts
	// serving; the lifecycle then switches to Connected. ctx lives as long
	// as the device.
	Connect(ctx context.Context) error
	// Disconnect stops serving and unmaps everything; Connect may follow.
	Disconnect() error
	// Close frees the host side: the device is gone.
	Close() error
}

// ConnectPolicy is an optional Driver extension naming the frontend states in
// which Connect runs. Without it a "vbd" connects when the frontend is
// Initialised or Connected (blkfront answers InitWait with Initialised) and
// every other type when it is Connected (netfront answers with Connected).
type ConnectPolicy interface {
	ConnectOn(front State) bool
}

func connectsOn(drv Driver, fs State) bool {
	if p, ok := drv.(ConnectPolicy); ok {
		return p.ConnectOn(fs)
	}
	if drv.Type() == "vbd" {
		return fs == Initialised || fs == Connected
	}
	return fs == Connected
}

// DefaultResync is how often Run rescans each backend tree, in case a watch
// event was coalesced or dropped.
const DefaultResync = 10 * time.Second

// Manager runs the backend lifecycle for a set of drivers. It watches
// /local/domain/<self>/backend/<type> for each driver, and each device's
// frontend state. Every device has one goroutine, owned by Run's context.
//
// A device is removed (Disconnect, state Closed, Close, then with
// RemoveNodes its backend directory deleted) when online=0 and the frontend
// is Closing, Closed or gone, or when the frontend directory vanished (guest
// destroyed). A backend directory removed by the toolstack is Disconnect
// and Close only.
//
// Run itself runs on its caller's goroutine (see Run): a Manager with no
// device adds no goroutine.
type Manager struct {
	store   *xenstore.Client
	self    uint16
	log     *slog.Logger
	drivers []Driver

	// Resync is the rescan period (DefaultResync if zero). Set before Run.
	Resync time.Duration
	// RemoveNodes makes a removed device's backend directory, error node and
	// an emptied frontend-domain directory go too, as xl devd does in a
	// driver domain (dom0's libxl removes only the frontend side and waits
	// for the driver domain to clean the backend side). drvdomd sets it;
	// without it the last state (Closed) stays readable. Set before Run.
	RemoveNodes bool
	// RemoveGrace, with RemoveNodes, is how long a removed device's
	// backend directory stays after the backend went Closed while the
	// frontend directory is still there: dom0's libxl waits for state
	// Closed, reads it, then removes the frontend; a backend directory
	// deleted before libxl read the state makes the detach fail ("wanted
	// state 6 but it was removed"). It must stay well under libxl's
	// LIBXL_DESTROY_TIMEOUT (10 s), which for a driver domain's backend
	// counts from libxl reading Closed to the directory going: libxl
	// removes the frontend only after that (seen in the lab, where a
	// 10 s grace failed `xl network-detach`). 0: remove at once. Set
	// before Run.
	RemoveGrace time.Duration
	// ProbeWait is how long Probe is retried while it fails with an error
	// wrapping fs.ErrNotExist (the backing disk not there yet); 0: no
	// retry. Set before Run.
	ProbeWait time.Duration

	running atomic.Bool
	seq     atomic.Uint64
	devWG   sync.WaitGroup
	// again asks Run's loop for a rescan: a device that let go of its key
	// for a directory still there (brought online again, or replaced)
	// must be probed afresh without waiting for the next watch event or
	// the periodic resync.
	again chan struct{}

	mu      sync.Mutex
	devs    map[devKey]*device
	exiting map[devKey]chan struct{} // done channels of devices still tearing down
}

type devKey struct {
	typ   string
	front uint16
	id    uint32
}

// NewManager returns a Manager for the driver domain self.
func NewManager(store *xenstore.Client, self uint16, log *slog.Logger, drivers ...Driver) *Manager {
	if log == nil {
		log = slog.Default()
	}
	return &Manager{
		store:   store,
		self:    self,
		log:     log,
		drivers: drivers,
		devs:    make(map[devKey]*device),
		exiting: make(map[devKey]chan struct{}),
		again:   make(chan struct{}, 1),
	}
}

// rescanSoon asks Run's loop to rescan every tree once more.
func (m *Manager) rescanSoon() {
	select {
	case m.again <- struct{}{}:
	default:
	}
}

// BackendBase is /local/domain/<self>/backend/<typ>.
func BackendBase(self uint16, typ string) string {
	return "/local/domain/" + strconv.Itoa(int(self)) + "/backend/" + typ
}

// Devices returns the number of devices the manager is running now.
func (m *Manager) Devices() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.devs)
}

// Run serves until ctx ends or a backend watch fails. On return every device
// goroutine has stopped and every Instance is closed; xenstore is left as it
// was (a restarted daemon resumes Connected devices without disturbing the
// frontends). Run returns nil when ctx ended.
//
// Run serves every driver's backend watch and the resync on the caller's
// goroutine: the only goroutines it starts are the devices', each gone once
// its device is. A process counting its goroutines (drvdomd publishes
// runtime.NumGoroutine for dom0's soak) thus sees the same number before
// the first device and after the last one, whenever it took the first
// sample: before Run, or once Run's watches were set.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("xenbus: Manager.Run called twice")
	}
	if len(m.drivers) == 0 {
		return errors.New("xenbus: no drivers")
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var watches []typeWatch
	var err error
	seen := map[string]bool{}
	for _, drv := range m.drivers {
		typ := drv.Type()
		if typ == "" || strings.Contains(typ, "/") || seen[typ] {
			err = fmt.Errorf("xenbus: bad or duplicate driver type %q", typ)
			break
		}
		seen[typ] = true
		base := BackendBase(m.self, typ)
		w, werr := m.store.Watch(ctx, base, "xenbus/backend/"+typ)
		if werr != nil {
			err = fmt.Errorf("xenbus: watch %s: %w", base, werr)
			break
		}
		m.log.Info("xenbus: watching", "type", typ, "path", base)
		watches = append(watches, typeWatch{drv: drv, base: base, w: w})
	}
	if err == nil {
		err = m.serve(ctx, watches)
	}
	cancel()
	for _, tw := range watches {
		tw.w.Close()
	}
	m.devWG.Wait()
	if parent.Err() != nil && (err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return nil
	}
	return err
}

// typeWatch is one driver's watch on its backend/<type> directory.
type typeWatch struct {
	drv  Driver
	base string
	w    *xenstore.Watch
}

func (m *Manager) resync() time.Duration {
	if m.Resync > 0 {
		return m.Resync
	}
	return DefaultResync
}

// serve handles the backend watches' events and the periodic rescans of
// every driver's tree until ctx ends or a watch ends.
func (m *Manager) serve(ctx context.Context, watches []typeWatch) error {
	for _, tw := range watches {
		m.rescan(ctx, tw.drv, tw.base)
	}
	tick := time.NewTicker(m.resync())
	defer tick.Stop()
	// One select over a set of watches known only at run time: rare
	// events, so reflect.Select's cost does not matter.
	const firstWatch = 3
	cases := make([]reflect.SelectCase, firstWatch, firstWatch+len(watches))
	cases[0] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())}
	cases[1] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(tick.C)}
	cases[2] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(m.again)}
	for _, tw := range watches {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(tw.w.Events())})
	}
	for {
		i, v, ok := reflect.Select(cases)
		switch i {
		case 0:
			return ctx.Err()
		case 1, 2:
			for _, tw := range watches {
				m.rescan(ctx, tw.drv, tw.base)
			}
		default:
			tw := watches[i-firstWatch]
			if !ok {
				return fmt.Errorf("xenbus: watch on %s ended", tw.base)
			}
			ev, _ := v.Interface().(xenstore.WatchEvent)
			m.handleEvent(ctx, tw.drv, tw.base, ev.Path)
		}
	}
}

func (m *Manager) handleEvent(ctx context.Context, drv Driver, base, path string) {
	if path == base {
		m.rescan(ctx, drv, base)
		return
	}
	rel, ok := strings.CutPrefix(path, base+"/")
	if !ok {
		return
	}
	parts := strings.SplitN(rel, "/", 3)
	if len(parts) < 2 {
		// A frontend domain's directory came or went: look at all of it.
		m.rescan(ctx, drv, base)
		return
	}
	fd, ok1 := parseDomid(parts[0])
	id, ok2 := parseDevID(parts[1])
	if !ok1 || !ok2 {
		return
	}
	m.ensure(ctx, drv, base, fd, id)
}

// rescan looks at the whole backend/<type> tree: it starts devices that are
// online and kicks every known one, so a device whose directory vanished
// notices.
func (m *Manager) rescan(ctx context.Context, drv Driver, base string) {
	typ := drv.Type()
	fds, err := m.store.Directory(ctx, base)
	if err != nil && !errors.Is(err, xenstore.ErrNotExist) {
		if ctx.Err() == nil {
			m.log.Warn("xenbus: list backends", "path", base, "err", err)
		}
		return
	}
	for _, f := range fds {
		fd, ok := parseDomid(f)
		if !ok {
			continue
		}
		ids, err := m.store.Directory(ctx, base+"/"+f)
		if err != nil {
			continue
		}
		for _, s := range ids {
			id, ok := parseDevID(s)
			if !ok {
				continue
			}
			m.ensure(ctx, drv, base, fd, id)
		}
	}
	m.mu.Lock()
	for k, d := range m.devs {
		if k.typ == typ {
			d.kick()
		}
	}
	m.mu.Unlock()
}

// ensure kicks the device if it runs, or starts it if its backend directory
// says online=1 and names a frontend.
func (m *Manager) ensure(ctx context.Context, drv Driver, base string, fd uint16, id uint32) {
	key := devKey{typ: drv.Type(), front: fd, id: id}
	m.mu.Lock()
	d := m.devs[key]
	m.mu.Unlock()
	if d != nil {
		d.kick()
		return
	}
	if ctx.Err() != nil {
		return
	}
	back := base + "/" + strconv.Itoa(int(fd)) + "/" + strconv.FormatUint(uint64(id), 10)
	online, err := m.store.Read(ctx, back+"/online")
	if err != nil || strings.TrimSpace(online) != "1" {
		return
	}
	front, err := m.store.Read(ctx, back+"/frontend")
	if err != nil {
		return
	}
	front = strings.TrimSpace(front)
	if !validFrontPath(front) {
		m.log.Warn("xenbus: backend names a bad frontend path", "backend", back, "frontend", truncate(front, 64))
		return
	}
	dev := &Dev{
		Store:     m.store,
		Type:      key.typ,
		FrontDom:  fd,
		DevID:     id,
		BackPath:  back,
		FrontPath: front,
	}
	dev.Log = m.log.With("dev", dev.Name())

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.devs[key] != nil || ctx.Err() != nil {
		return
	}
	dctx, cancel := context.WithCancel(ctx)
	d = &device{
		m:      m,
		key:    key,
		dev:    dev,
		drv:    drv,
		poke:   make(chan struct{}, 1),
		cancel: cancel,
		done:   make(chan struct{}),
		state:  Unknown,
	}
	prev := m.exiting[key]
	m.devs[key] = d
	m.devWG.Add(1)
	go d.run(dctx, prev)
}

// forget takes d out of the running set (it is tearing down); a device that
// appears again under the same key waits for d to finish first.
func (m *Manager) forget(d *device) {
	m.mu.Lock()
	if m.devs[d.key] == d {
		delete(m.devs, d.key)
		m.exiting[d.key] = d.done
	}
	m.mu.Unlock()
}

func (m *Manager) finished(d *device) {
	m.mu.Lock()
	if m.exiting[d.key] == d.done {
		delete(m.exiting, d.key)
	}
	m.mu.Unlock()
}

func parseDomid(s string) (uint16, bool) {
	if s == "" || len(s) > 5 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n >= 0x7FF0 { // DOMID_FIRST_RESERVED
		return 0, false
	}
	return uint16(n), true
}

func parseDevID(s string) (uint32, bool) {
	if s == "" || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

func validFrontPath(p string) bool {
	if len(p) < 2 || len(p) > 3072 || p[0] != '/' || strings.HasSuffix(p, "/") || strings.Contains(p, "//") {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/_-@", c) >= 0) {
			return false
		}
	}
	return true
}

// device is one backend device's goroutine and the state it alone touches.
type device struct {
	m      *Manager
	key    devKey
	dev    *Dev
	drv    Driver
	poke   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	inst      Instance
	connected bool
	state     State // what we last switched the backend to
	// closedAt is when the device was closed for removal; its backend
	// directory goes once the frontend is gone or RemoveGrace passed.
	closedAt time.Time
}

func (d *device) kick() {
	select {
	case d.poke <- struct{}{}:
	default:
	}
}

func (d *device) run(ctx context.Context, prev chan struct{}) {
	defer d.m.devWG.Done()
	defer d.m.finished(d)
	defer close(d.done)
	defer d.cancel()
	log := d.dev.logger()

	if prev != nil {
		select {
		case <-prev:
		case <-ctx.Done():
			d.m.forget(d)
			return
		}
	}

	var fevents <-chan xenstore.WatchEvent
	tok := fmt.Sprintf("xenbus/front/%s/%d/%d/%d", d.key.typ, d.key.front, d.key.id, d.m.seq.Add(1))
	fw, err := d.dev.Store.Watch(ctx, d.dev.FrontPath+"/state", tok)
	if err != nil {
		// Degraded: the resync ticker still kicks us.
		log.Warn("xenbus: cannot watch frontend state", "path", d.dev.FrontPath+"/state", "err", err)
	} else {
		defer fw.Close()
		fevents = fw.Events()
	}

	log.Info("xenbus: probe", "frontend", d.dev.FrontPath)
	inst, err := d.probe(ctx)
	switch {
	case err != nil:
		if ctx.Err() != nil {
			d.m.forget(d)
			return
		}
		d.dev.WriteError(ctx, fmt.Errorf("probe: %w", err))
		d.switchState(ctx, Closing)
	case inst == nil:
		d.dev.WriteError(ctx, errors.New("probe: driver returned no instance"))
		d.switchState(ctx, Closing)
	default:
		d.inst = inst
		d.start(ctx)
	}

	for {
		if d.step(ctx) {
			return
		}
		select {
		case <-ctx.Done():
			// Shutdown, not removal: free the host side, leave xenstore
			// alone so a restarted daemon can resume.
			d.m.forget(d)
			d.teardown()
			return
		case <-d.poke:
		case _, ok := <-fevents:
			if !ok {
				fevents = nil
			}
		}
	}
}

// probe runs the driver's Probe; while it fails because a file or device
// does not exist yet (a disk still probing at boot) it retries for up to
// Manager.ProbeWait.
func (d *device) probe(ctx context.Context) (Instance, error) {
	deadline := time.Now().Add(d.m.ProbeWait)
	for attempt := 0; ; attempt++ {
		inst, err := d.drv.Probe(ctx, d.dev)
		if err == nil || !errors.Is(err, fs.ErrNotExist) || ctx.Err() != nil || !time.Now().Before(deadline) {
			return inst, err
		}
		if attempt == 0 {
			d.dev.logger().Info("xenbus: probe: not there yet, retrying", "for", time.Until(deadline).Round(time.Second), "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(probeRetryDelay):
		}
	}
}

// probeRetryDelay is the pause between Probe attempts under ProbeWait.
const probeRetryDelay = 250 * time.Millisecond

// start follows a successful Probe: InitWait, or, when a previous drvdomd
// left the device Connected and the frontend is still there, connect again
// at once (crash-only restart: the frontend never sees a change).
func (d *device) start(ctx context.Context) {
	bs, _ := d.dev.BackState(ctx)
	fs, _ := d.dev.FrontState(ctx)
	if bs == Connected && connectsOn(d.drv, fs) {
		if err := d.inst.Connect(ctx); err != nil {
			d.failConnect(ctx, err)
			return
		}
		d.connected = true
		d.state = Connected
		d.dev.logger().Info("xenbus: resumed", "front", fs.String())
		return
	}
	if (bs == Closing || bs == Closed) && (fs == Closing || fs == Closed || fs == Unknown) {
		// A previous drvdomd closed it and the frontend has not come back:
		// stay closed until it reinitialises (no InitWait flicker).
		d.state = bs
		return
	}
	d.switchState(ctx, InitWait)
}

func (d *device) switchState(ctx context.Context, s State) {
	if err := d.dev.SwitchState(ctx, s); err != nil {
		if ctx.Err() == nil {
			d.dev.logger().Warn("xenbus: switch state", "state", s.String(), "err", err)
		}
		return
	}
	d.state = s
}

func (d *device) failConnect(ctx context.Context, err error) {
	d.dev.WriteError(ctx, fmt.Errorf("connect: %w", err))
	// Release whatever Connect set up before it failed.
	if derr := d.inst.Disconnect(); derr != nil {
		d.dev.logger().Warn("xenbus: disconnect after failed connect", "err", derr)
	}
	d.connected = false
	d.switchState(ctx, Closing)
}

func (d *device) disconnect() {
	if !d.connected {
		return
	}
	d.connected = false
	if err := d.inst.Disconnect(); err != nil {
		d.dev.logger().Warn("xenbus: disconnect", "err", err)
		return
	}
	d.dev.logger().Info("xenbus: disconnected")
}

// teardown disconnects and closes the instance.
func (d *device) teardown() {
	if d.inst == nil {
		return
	}
	d.disconnect()
	if err := d.inst.Close(); err != nil {
		d.dev.logger().Warn("xenbus: close", "err", err)
	}
	d.inst = nil
	d.dev.logger().Info("xenbus: closed")
}

// rearm makes sure the device looks again before RemoveGrace ends even if
// no watch fires (the resync may be slower than the grace).
func (d *device) rearm() {
	left := d.m.RemoveGrace - time.Since(d.closedAt)
	if left < 10*time.Millisecond {
		left = 10 * time.Millisecond
	}
	time.AfterFunc(left, d.kick) // a kick after the device is gone is a no-op
}

// removeNodes deletes the device's backend directory, its error node and
// the frontend domain's directory if that is now empty. In a driver domain
// this is the backend's job: dom0's toolstack removes only the frontend
// side (it is what xl devd does after the hotplug script's remove).
func (d *device) removeNodes(ctx context.Context) {
	st := d.dev.Store
	log := d.dev.logger()
	if err := st.Rm(ctx, d.dev.BackPath); err != nil && !errors.Is(err, xenstore.ErrNotExist) {
		log.Warn("xenbus: remove backend directory", "err", err)
	}
	errDir := strings.TrimSuffix(d.dev.ErrorPath(), "/error")
	if err := st.Rm(ctx, errDir); err != nil && !errors.Is(err, xenstore.ErrNotExist) {
		log.Debug("xenbus: remove error node", "err", err)
	}
	parent := path.Dir(d.dev.BackPath)
	err := st.Transaction(ctx, func(tx *xenstore.Tx) error {
		ents, err := tx.Directory(ctx, parent)
		if err != nil || len(ents) > 0 {
			return err
		}
		return tx.Rm(ctx, parent)
	})
	if err != nil && !errors.Is(err, xenstore.ErrNotExist) {
		log.Debug("xenbus: remove empty frontend-domain directory", "path", parent, "err", err)
	}
	log.Info("xenbus: removed")
}

// replaced reports whether the backend directory is no longer the one this
// device probed: its state node reads Initialising, which only a toolstack
// creating a device writes (the backend moves to InitWait at probe and
// never writes Initialising; libxl's detach writes Closing, not this).
func (d *device) replaced(ctx context.Context) bool {
	if d.state == Unknown || d.state == Initialising {
		return false // not probed yet: the directory is the one being probed
	}
	bs, err := d.dev.BackState(ctx)
	return err == nil && bs == Initialising
}

// step looks at xenstore as it is now (level-triggered: watch events may be
// coalesced) and moves the device. It reports whether the device is gone.
func (d *device) step(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	online, err := d.dev.Store.Read(ctx, d.dev.BackPath+"/online")
	if errors.Is(err, xenstore.ErrNotExist) {
		if _, derr := d.dev.Store.Directory(ctx, d.dev.BackPath); errors.Is(derr, xenstore.ErrNotExist) {
			d.dev.logger().Info("xenbus: backend directory removed")
			d.m.forget(d)
			d.teardown()
			return true
		}
		online = "0" // as xenbus_dev_is_online: unreadable is offline
	} else if err != nil {
		if ctx.Err() == nil {
			d.dev.logger().Warn("xenbus: read online", "err", err)
		}
		return false
	}
	isOnline := strings.TrimSpace(online) == "1"
	if d.replaced(ctx) {
		// Removed and written anew between two looks (a toolstack that
		// detaches and attaches the same device id at once): the new
		// directory may name another disk or frontend, so this instance
		// must not serve it. Leave its xenstore nodes alone (they are
		// the new device's) and let a new probe take it.
		d.dev.logger().Info("xenbus: backend directory replaced; probing afresh")
		d.m.forget(d)
		d.teardown()
		d.m.rescanSoon()
		return true
	}

	fs, ferr := d.dev.FrontState(ctx)
	unreadable := false
	if ferr != nil {
		if ctx.Err() != nil {
			return false
		}
		// A value the frontend wrote that is not a state is Unknown (as
		// Linux reads it). A read that failed (xenstored busy, a request
		// error) is not a state at all: it must never tear down a
		// connected device; only a vanished frontend directory counts.
		unreadable = !errors.Is(ferr, ErrBadState)
		if unreadable {
			d.dev.logger().Warn("xenbus: frontend state unreadable, keeping the device as it is", "err", ferr)
		} else {
			d.dev.logger().Debug("xenbus: frontend state not a XenbusState, taken as Unknown", "err", ferr)
		}
	}

	frontGone := false
	if fs == Unknown {
		// A removed frontend node reads as ENOENT, or as EACCES when its
		// parent (the guest's home, not readable by us) decides.
		_, derr := d.dev.Store.Directory(ctx, d.dev.FrontPath)
		frontGone = errors.Is(derr, xenstore.ErrNotExist) || errors.Is(derr, xenstore.ErrPermission)
		if !frontGone && unreadable {
			return false // the next kick (watch or resync) looks again
		}
	}
	d.dev.logger().Debug("xenbus: step", "front", fs.String(), "online", strings.TrimSpace(online), "back", d.state.String(), "connected", d.connected, "frontend_gone", frontGone)
	if !d.closedAt.IsZero() {
		// Closed for removal, waiting for dom0 to take the frontend away.
		if isOnline {
			// Brought back online: a new probe takes it from here.
			d.dev.logger().Info("xenbus: online again before removal; probing afresh")
			d.m.forget(d)
			d.m.rescanSoon()
			return true
		}
		if !frontGone && time.Since(d.closedAt) < d.m.RemoveGrace {
			if fs == Unknown {
				_, derr := d.dev.Store.Directory(ctx, d.dev.FrontPath)
				frontGone = errors.Is(derr, xenstore.ErrNotExist) || errors.Is(derr, xenstore.ErrPermission)
			}
			if !frontGone {
				d.rearm()
				return false
			}
		}
		d.m.forget(d)
		d.removeNodes(ctx)
		return true
	}
	if frontGone || !isOnline && (fs == Closing || fs == Closed || fs == Unknown || d.inst == nil) {
		d.dev.logger().Info("xenbus: removing", "front", fs.String(), "online", isOnline, "frontend_gone", frontGone)
		d.disconnect()
		d.switchState(ctx, Closed)
		if d.m.RemoveNodes && !frontGone && d.m.RemoveGrace > 0 {
			// Free the host side now; the directory goes later (see
			// RemoveGrace), so dom0 reads Closed before it vanishes.
			d.teardown()
			d.closedAt = time.Now()
			d.rearm()
			return false
		}
		d.m.forget(d)
		d.teardown()
		if d.m.RemoveNodes {
			d.removeNodes(ctx)
		}
		return true
	}
	if d.inst == nil { // probe failed: wait for removal
		return false
	}

	switch fs {
	case Initialising:
		if d.state == Closed {
			// Guest rebooted (or the frontend driver reloaded).
			d.switchState(ctx, InitWait)
		}
	case Initialised, Connected:
		if !connectsOn(d.drv, fs) || d.connected || d.state != InitWait {
			return false
		}
		if err := d.inst.Connect(ctx); err != nil {
			if ctx.Err() != nil {
				return false
			}
			d.failConnect(ctx, err)
			return false
		}
		d.connected = true
		d.dev.clearError()
		d.switchState(ctx, Connected)
		d.dev.logger().Info("xenbus: connected", "front", fs.String())
	case Closing:
		d.disconnect()
		if d.state != Closing && d.state != Closed {
			d.switchState(ctx, Closing)
		}
	case Closed, Unknown:
		d.disconnect()
		d.switchState(ctx, Closed)
	}
	return false
}
