package hostile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/internal/xensim"
	"drvdom/internal/xensim/blkfront"
	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

// Domains of the rig.
const (
	dd1       = 1 // driver domain: blkback (mapped and persistent grants) and netback
	dd2       = 4 // driver domain: blkback in grant-copy mode
	honestID  = 2 // the guest that must keep being served
	hostileID = 3 // the guest that attacks
	otherID   = 5 // a bystander the hostile guest grants pages to
	dd3       = 6 // driver domain: blkback in grant-copy mode with its default engine (io_uring on O_DIRECT files)
)

// maxQueues is multi-queue-max-queues of both backends (an over-limit
// frontend asks for more).
const maxQueues = 2

// caseTimeout bounds one case's waits; nothing in a passing run comes near it.
const caseTimeout = 15 * time.Second

// rig is one simulated host with two driver domains, an honest guest doing
// verified I/O throughout and a hostile guest.
type rig struct {
	t       *testing.T
	host    *xensim.Host
	d0      *xenstore.Client
	logs    *logSink
	mem     *netback.MemHost
	hostile *xensim.Domain
	hstore  *xenstore.Client // the hostile guest's xenstore connection
	dir     string

	mu      sync.Mutex
	windows map[string]*window
	guards  []guarded // every window and file disk, checked after each case

	honest  *honestGuest
	nextDev atomic.Uint32
	watchN  atomic.Uint64
}

// newRig builds the host, starts both driver domains and the honest guest's
// I/O loop. Everything stops in t.Cleanup.
func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{t: t, host: xensim.New(), logs: &logSink{}, mem: netback.NewMemHost(), dir: t.TempDir(),
		windows: map[string]*window{}}
	r.nextDev.Store(100)
	if testing.Verbose() {
		r.logs.out = os.Stderr
	}
	dom0 := r.host.NewDomain(0)
	r.d0 = dom0.Xenstore()
	for _, id := range []uint16{dd1, dd2, dd3, honestID, hostileID, otherID} {
		r.host.NewDomain(id)
	}
	r.hostile = r.host.Domain(hostileID)
	r.hstore = r.hostile.Xenstore()
	log := slog.New(&sinkHandler{s: r.logs})

	d1 := r.host.Domain(dd1)
	blk1 := &blkback.Driver{
		Grants: d1.Mapper(), Events: func() (evtchn.Handle, error) { return d1.Evtchn(), nil }, Log: log,
		MaxQueues: maxQueues, Workers: 4, ResizeInterval: -1, StatsInterval: -1, Open: r.open,
	}
	net1 := &netback.Driver{
		Host: r.mem, Mapper: d1.Mapper(), Events: func() (evtchn.Handle, error) { return d1.Evtchn(), nil },
		MaxQueues: maxQueues, Log: log,
	}
	d2 := r.host.Domain(dd2)
	blk2 := &blkback.Driver{
		Grants: d2.Mapper(), Events: func() (evtchn.Handle, error) { return d2.Evtchn(), nil }, Log: log,
		MaxQueues: maxQueues, Workers: 2, ResizeInterval: -1, StatsInterval: -1, Open: r.open,
		GrantCopy: true, CopyPoolPages: 256,
	}
	d3 := r.host.Domain(dd3)
	blk3 := &blkback.Driver{
		Grants: d3.Mapper(), Events: func() (evtchn.Handle, error) { return d3.Evtchn(), nil }, Log: log,
		MaxQueues: maxQueues, Workers: 2, ResizeInterval: -1, StatsInterval: -1,
		GrantCopy: true, CopyPoolPages: 256,
	}
	stop1 := r.startDriverDomain(dd1, log, blk1, net1)
	stop2 := r.startDriverDomain(dd2, log, blk2)
	stop3 := r.startDriverDomain(dd3, log, blk3)
	start := time.Now()
	t.Cleanup(func() {
		if r.honest != nil {
			t.Logf("honest guest: %d verified operations (block write+read, frame each way) in %v",
				r.honest.ops.Load(), time.Since(start).Round(time.Millisecond))
		}
		r.honest.stop()
		stop1()
		stop2()
		stop3()
		r.hstore.Close()
		r.d0.Close()
		r.host.Close()
		r.mu.Lock()
		for _, g := range r.guards {
			g.close()
		}
		r.mu.Unlock()
		if t.Failed() && !testing.Verbose() {
			t.Logf("backend log (warnings and errors):\n%s", r.logs.dump(slog.LevelWarn))
		}
	})
	r.honest = r.startHonest()
	return r
}

// startDriverDomain runs a xenbus Manager with the drivers in domain id, as
// drvdomd does; the returned func stops it.
func (r *rig) startDriverDomain(id uint16, log *slog.Logger, drivers ...xenbus.Driver) func() {
	store := r.host.Domain(id).Xenstore()
	mgr := xenbus.NewManager(store, id, log, drivers...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Run(ctx); err != nil {
			r.t.Errorf("driver domain %d: manager: %v", id, err)
		}
	}()
	return sync.OnceFunc(func() {
		cancel()
		<-done
		store.Close()
	})
}

// open is both blkback drivers' Open: "win:<name>" is a window of a guarded
// file, anything else the real thing.
func (r *rig) open(params string, o blkback.OpenOptions) (blkback.Backing, error) {
	if name, ok := strings.CutPrefix(params, "win:"); ok {
		r.mu.Lock()
		w := r.windows[name]
		r.mu.Unlock()
		if w == nil {
			return nil, fmt.Errorf("no window %q", name)
		}
		return w, nil
	}
	return blkback.OpenTarget(params, o)
}

func (r *rig) devID() uint32 { return r.nextDev.Add(1) }

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	t.Cleanup(cancel)
	return ctx
}

// await waits, on a dom0 watch, until cond holds for the node at path.
func (r *rig) await(t testing.TB, path, what string, cond func(v string, err error) bool) string {
	t.Helper()
	ctx := ctxFor(t)
	w, err := r.d0.Watch(ctx, path, "await-"+strconv.FormatUint(r.watchN.Add(1), 10))
	if err != nil {
		t.Fatalf("watch %s: %v", path, err)
	}
	defer w.Close()
	for {
		v, err := r.d0.Read(ctx, path)
		if cond(v, err) {
			return v
		}
		select {
		case <-w.Events():
		case <-ctx.Done():
			t.Fatalf("waiting for %s (%s): now %q, %v", what, path, v, err)
		}
	}
}

func errorPath(backDom uint16, typ string, front uint16, devid uint32) string {
	return fmt.Sprintf("/local/domain/%d/error/backend/%s/%d/%d/error", backDom, typ, front, devid)
}

// removeNodes removes a closed device's directories and error node, as
// the toolstack does after a detach (the suite makes hundreds of devices;
// xenstored's per-domain node quota would run out otherwise).
func (r *rig) removeNodes(ctx context.Context, backDom uint16, typ string, devid uint32, back, front string) {
	r.d0.Rm(ctx, back)
	r.d0.Rm(ctx, front)
	r.d0.Rm(ctx, strings.TrimSuffix(errorPath(backDom, typ, hostileID, devid), "/error"))
}

// awaitError waits for the device's error node and returns it.
func (r *rig) awaitError(t testing.TB, backDom uint16, typ string, front uint16, devid uint32) string {
	t.Helper()
	return r.await(t, errorPath(backDom, typ, front, devid), "an error node", func(v string, err error) bool {
		return err == nil && v != ""
	})
}

// noError checks the device has no error node.
func (r *rig) noError(t testing.TB, backDom uint16, typ string, front uint16, devid uint32) {
	t.Helper()
	if v, err := r.d0.Read(ctxFor(t), errorPath(backDom, typ, front, devid)); err == nil && v != "" {
		t.Fatalf("unexpected error node: %q", v)
	}
}

// quiesced runs fn while the honest guest is between two operations, so
// that counts of mapped pages and bound ports are stable.
func (r *rig) quiesced(fn func()) {
	r.honest.gate.Lock()
	defer r.honest.gate.Unlock()
	fn()
}

// resources are what a driver domain holds: mapped pages and bound ports.
type resources struct{ mapped, ports [2]int }

func (r *rig) resources() (res resources) {
	r.quiesced(func() {
		for i, d := range []uint16{dd1, dd2} {
			res.mapped[i] = r.host.Grants.Mapped(d)
			res.ports[i] = r.host.Events.BoundPorts(d)
		}
	})
	return res
}

// checkCase is what every case ends with: the honest guest kept being
// served (it completes more verified operations now), every guard is intact
// and no backing was asked for I/O outside its device.
func (r *rig) checkCase(t testing.TB) {
	t.Helper()
	r.honest.progress(t, 1)
	r.checkGuards(t)
}

// ---- logs ----

type logRec struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// logSink keeps the backends' log records of level Info and above.
type logSink struct {
	mu   sync.Mutex
	recs []logRec
	out  io.Writer
}

func (s *logSink) add(rec logRec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, rec)
	if s.out != nil {
		fmt.Fprintf(s.out, "%v %s %v\n", rec.level, rec.msg, rec.attrs)
	}
}

// count returns how many records at level or above match.
func (s *logSink) count(level slog.Level, match func(logRec) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.recs {
		if r.level >= level && match(r) {
			n++
		}
	}
	return n
}

func (s *logSink) dump(level slog.Level) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, r := range s.recs {
		if r.level >= level {
			fmt.Fprintf(&b, "%v %s %v\n", r.level, r.msg, r.attrs)
		}
	}
	return b.String()
}

type sinkHandler struct {
	s     *logSink
	attrs []slog.Attr
}

func (h *sinkHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *sinkHandler) Handle(_ context.Context, r slog.Record) error {
	m := make(map[string]string, len(h.attrs)+r.NumAttrs())
	for _, a := range h.attrs {
		m[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	h.s.add(logRec{level: r.Level, msg: r.Message, attrs: m})
	return nil
}

func (h *sinkHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &sinkHandler{s: h.s, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *sinkHandler) WithGroup(string) slog.Handler { return h }

// ---- guarded disks ----

// guarded is a disk whose surroundings are checked after every case.
type guarded interface {
	// sum is the checksum of the device's bytes.
	sum(t testing.TB) [32]byte
	// at returns n bytes of the device at sector, read behind the backend.
	at(t testing.TB, sector uint64, n int) []byte
	// check fails t if anything outside the device changed.
	check(t testing.TB)
	close()
}

// guardSize is the guard region on each side of a window.
const guardSize = 16 << 10

// window is a blkback.Backing serving bytes [base, base+size) of a larger
// file whose other bytes are guards with known checksums. It does not clamp:
// I/O the backend asks for outside the device is recorded as a violation
// and, where it falls inside the file, performed, so a guard takes the hit
// and its checksum shows it.
type window struct {
	name       string
	f          *os.File
	base, size int64
	fileSize   int64
	guards     [2][32]byte

	violations atomic.Int64
	lastViol   atomic.Pointer[string]
	// hook runs at the start of every ReadV/WriteV (rewritten-request tests).
	hook atomic.Pointer[func(write bool, io *blkback.IO)]
}

var _ blkback.Backing = (*window)(nil)

// newWindow creates a guarded device of sectors 512-byte sectors, filled
// (guards and device) with a seeded pattern.
func (r *rig) newWindow(t testing.TB, name string, sectors int64) *window {
	t.Helper()
	size := sectors * blkback.SectorSize
	w := &window{name: name, base: guardSize, size: size, fileSize: size + 2*guardSize}
	f, err := os.OpenFile(filepath.Join(r.dir, name+".img"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	w.f = f
	if _, err := f.WriteAt(pattern(int(w.fileSize), uint64(len(name))*7919+uint64(sectors)), 0); err != nil {
		t.Fatal(err)
	}
	w.guards = w.guardSums(t)
	r.mu.Lock()
	r.windows[name] = w
	r.guards = append(r.guards, w)
	r.mu.Unlock()
	return w
}

func (w *window) guardSums(t testing.TB) (s [2][32]byte) {
	t.Helper()
	lo := make([]byte, w.base)
	hi := make([]byte, w.fileSize-w.base-w.size)
	if _, err := w.f.ReadAt(lo, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := w.f.ReadAt(hi, w.base+w.size); err != nil {
		t.Fatal(err)
	}
	return [2][32]byte{sha256.Sum256(lo), sha256.Sum256(hi)}
}

// sum is the checksum of the device's bytes.
func (w *window) sum(t testing.TB) [32]byte {
	t.Helper()
	b := make([]byte, w.size)
	if _, err := w.f.ReadAt(b, w.base); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// at returns n bytes of the device at sector (read behind the backend).
func (w *window) at(t testing.TB, sector uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := w.f.ReadAt(b, w.base+int64(sector)*blkback.SectorSize); err != nil {
		t.Fatal(err)
	}
	return b
}

func (w *window) check(t testing.TB) {
	t.Helper()
	if n := w.violations.Load(); n != 0 {
		t.Fatalf("disk %s: backend asked for %d transfers outside the device, last: %s", w.name, n, *w.lastViol.Load())
	}
	if w.guardSums(t) != w.guards {
		t.Fatalf("disk %s: a guard region next to the device changed", w.name)
	}
	st, err := w.f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != w.fileSize {
		t.Fatalf("disk %s: file size %d, want %d", w.name, st.Size(), w.fileSize)
	}
}

// retire checks a device's disk one last time and stops checking it (its
// device is gone).
func (r *rig) retire(t testing.TB, g guarded) {
	t.Helper()
	g.check(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, x := range r.guards {
		if x == g {
			r.guards = append(r.guards[:i], r.guards[i+1:]...)
			x.close()
			return
		}
	}
}

func (r *rig) checkGuards(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	gs := append([]guarded(nil), r.guards...)
	r.mu.Unlock()
	for _, g := range gs {
		g.check(t)
	}
}

// place maps a device transfer to the file: ok is false if it is outside
// the device (a violation); fileOK says whether it still lies in the file.
func (w *window) place(what string, off, n int64) (fileOff int64, fileOK bool) {
	if off >= 0 && n >= 0 && off <= w.size && n <= w.size-off {
		return w.base + off, true
	}
	msg := fmt.Sprintf("%s at byte %d, %d bytes, device of %d", what, off, n, w.size)
	w.lastViol.Store(&msg)
	w.violations.Add(1)
	if off >= -w.base && off <= w.fileSize-w.base && n >= 0 && n <= w.fileSize-(w.base+off) {
		return w.base + off, true
	}
	return 0, false
}

func bufsLen(bufs [][]byte) int64 {
	n := int64(0)
	for _, b := range bufs {
		n += int64(len(b))
	}
	return n
}

var errOutside = errors.New("window: transfer outside the file")

func (w *window) Size() (int64, error)              { return w.size, nil }
func (w *window) LogicalBlockSize() uint32          { return blkback.SectorSize }
func (w *window) PhysicalBlockSize() uint32         { return blkback.SectorSize }
func (w *window) DiscardInfo() (bool, bool, uint32) { return true, true, blkback.SectorSize }
func (w *window) Flush() error                      { return nil }
func (w *window) Inline() bool                      { return false }
func (w *window) Close() error                      { return nil }
func (w *window) close()                            { w.f.Close() }
func (w *window) runHook(write bool, io *blkback.IO) {
	if h := w.hook.Load(); h != nil {
		(*h)(write, io)
	}
}

func (w *window) ReadV(io *blkback.IO) error {
	w.runHook(false, io)
	off, ok := w.place("read", io.Off, bufsLen(io.Bufs))
	if !ok {
		return errOutside
	}
	for _, b := range io.Bufs {
		if _, err := w.f.ReadAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

func (w *window) WriteV(io *blkback.IO) error {
	w.runHook(true, io)
	off, ok := w.place("write", io.Off, bufsLen(io.Bufs))
	if !ok {
		return errOutside
	}
	for _, b := range io.Bufs {
		if _, err := w.f.WriteAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

// Discard zeroes the range, so a discard outside the device would wipe a guard.
func (w *window) Discard(off, n int64, secure bool) error {
	fo, ok := w.place("discard", off, n)
	if !ok {
		return errOutside
	}
	_, err := w.f.WriteAt(make([]byte, n), fo)
	return err
}

func pattern(n int, seed uint64) []byte {
	rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rnd.Uint32())
	}
	return b
}

// ---- the honest guest ----

// honestGuest has a disk (served by dd1 from a guarded window) and a vif
// (dd1's netback): its loop writes, reads back and compares a block, sends
// a frame to the host and receives one, over and over, until the rig stops.
type honestGuest struct {
	blk   *blkfront.Front
	vif   *netfront.Front
	tap   *netback.MemTap
	disk  blkfront.Disk
	nic   netfront.Nic
	store *xenstore.Client

	ops  atomic.Int64
	gate sync.RWMutex // held for reading around each operation

	mu   sync.Mutex
	tick chan struct{} // closed and replaced after each operation
	err  error

	cancel context.CancelFunc
	done   chan struct{}
}

const honestSectors = 4096 // 2 MiB

func (r *rig) startHonest() *honestGuest {
	t := r.t
	r.newWindow(t, "honest", honestSectors)
	ctx := ctxFor(t)
	g := r.host.Domain(honestID)
	h := &honestGuest{store: g.Xenstore(), tick: make(chan struct{}), done: make(chan struct{})}
	h.disk = blkfront.Disk{BackDom: dd1, FrontDom: honestID, DevID: 51712, Params: "win:honest", Mode: "w"}
	if err := blkfront.AddDisk(ctx, r.d0, h.disk); err != nil {
		t.Fatal(err)
	}
	var err error
	h.blk, err = blkfront.Attach(ctx, h.store, g.Sharer(), g.Evtchn(), h.disk.FrontPath(), blkfront.Config{Protocol: blkback.ProtoX86_64})
	if err != nil {
		t.Fatalf("honest disk: %v", err)
	}
	h.nic = netfront.Nic{BackDom: dd1, FrontDom: honestID, DevID: 0, MAC: "00:16:3e:00:00:02"}
	if err := netfront.AddNic(ctx, r.d0, h.nic); err != nil {
		t.Fatal(err)
	}
	h.vif, err = netfront.Attach(ctx, h.store, g.Sharer(), g.Evtchn(), h.nic.FrontPath(), netfront.Config{})
	if err != nil {
		t.Fatalf("honest vif: %v", err)
	}
	h.tap = r.mem.Tap(netback.TapName(honestID, 0))
	if h.tap == nil {
		t.Fatal("no tap for the honest vif")
	}
	lctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go h.run(lctx)
	h.progress(t, 1)
	return h
}

func (h *honestGuest) run(ctx context.Context) {
	defer close(h.done)
	for i := 0; ctx.Err() == nil; i++ {
		h.gate.RLock()
		err := h.once(ctx, i)
		h.gate.RUnlock()
		h.mu.Lock()
		if err != nil && ctx.Err() == nil && h.err == nil {
			h.err = fmt.Errorf("honest guest, operation %d: %w", i, err)
		}
		if err == nil {
			h.ops.Add(1)
		}
		close(h.tick)
		h.tick = make(chan struct{})
		failed := h.err != nil
		h.mu.Unlock()
		if failed {
			return
		}
		// Leave the (two, shared) CPUs mostly to the cases: this is pacing,
		// nothing waits for it.
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// once is one verified block write+read and one frame each way.
func (h *honestGuest) once(ctx context.Context, i int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n := 4096
	if i%4 == 3 {
		n = 64 << 10 // 16 segments: indirect
	}
	sector := uint64(i%32) * 128
	data := pattern(n, uint64(i)+1)
	if err := h.blk.Write(ctx, 0, sector, data); err != nil {
		return fmt.Errorf("write sector %d: %w", sector, err)
	}
	got := make([]byte, n)
	if err := h.blk.Read(ctx, 0, sector, got); err != nil {
		return fmt.Errorf("read sector %d: %w", sector, err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("sector %d: read back differs", sector)
	}
	fr := frame(60+(i*97)%1400, uint64(i))
	if err := h.vif.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	out, err := h.tap.MemQueue(0).Recv(ctx)
	if err != nil {
		return fmt.Errorf("host receive: %w", err)
	}
	ok := bytes.Equal(out[netback.VnetHdrSize:], fr)
	h.tap.MemQueue(0).Release(out)
	if !ok {
		return errors.New("host received a different frame")
	}
	in := make([]byte, netback.VnetHdrSize+len(fr))
	copy(in[netback.VnetHdrSize:], fr)
	if err := h.tap.MemQueue(0).Inject(ctx, in); err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	p, err := h.vif.Recv(ctx, 0)
	if err != nil {
		return fmt.Errorf("guest receive: %w", err)
	}
	if !bytes.Equal(p.Frame, fr) {
		return errors.New("guest received a different frame")
	}
	return nil
}

// progress waits until the honest guest completed n more operations than
// now, failing on any error it met.
func (h *honestGuest) progress(t testing.TB, n int64) {
	t.Helper()
	want := h.ops.Load() + n
	deadline := time.NewTimer(caseTimeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		err, tick := h.err, h.tick
		h.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if h.ops.Load() >= want {
			return
		}
		select {
		case <-tick:
		case <-deadline.C:
			t.Fatalf("honest guest stalled at %d operations (want %d)", h.ops.Load(), want)
		}
	}
}

func (h *honestGuest) stop() {
	if h == nil {
		return
	}
	h.cancel()
	<-h.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.blk.Close(ctx)
	h.vif.Close(ctx)
	h.store.Close()
}

// frame is an Ethernet frame of n bytes (n >= 14) to the host, of a local
// experimental ethertype, with a seeded payload.
func frame(n int, seed uint64) []byte {
	b := pattern(n, seed+12345)
	copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 1})
	copy(b[6:12], []byte{0x00, 0x16, 0x3e, 0, 0, 2})
	b[12], b[13] = 0x88, 0xb5
	return b
}
