package blkback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

// Driver is the vbd backend: a xenbus.Driver. Set Grants and Events; the
// rest has defaults.
type Driver struct {
	// Grants maps the frontends' rings and data pages.
	Grants grant.Mapper
	// Events opens an event channel handle; every ring gets its own.
	Events func() (evtchn.Handle, error)
	Log    *slog.Logger

	// MaxQueues is multi-queue-max-queues (runtime.NumCPU() if 0).
	MaxQueues int
	// MaxRingPageOrder is max-ring-page-order (4 if 0; at most ring.MaxOrder).
	MaxRingPageOrder int
	// MaxPersistentGrants bounds each ring's persistent grants
	// (DefaultMaxPersistentGrants if 0).
	MaxPersistentGrants int
	// NoPersistent turns feature-persistent off.
	NoPersistent bool
	// GrantCopy moves data with grant copy through local bounce pages
	// instead of mapping the frontend's pages (no mapping ever outlives a
	// hypercall; persistent grants are then not offered).
	GrantCopy bool
	// CopyPoolPages is the bounce memory per device in grant-copy mode
	// (DefaultCopyPoolPages if 0; at least 256).
	CopyPoolPages int
	// Engine is EngineURing or EnginePool; empty picks io_uring for
	// O_DIRECT backings (3.9 times the pool's 4 KiB reads on this machine's
	// disk in BenchmarkFileRead) and the pool for buffered ones (2.5 times
	// io_uring's on tmpfs, where preadv never waits). Without io_uring the
	// pool is used, with a log line saying why.
	Engine string
	// RingThreads serves each ring of an io_uring device from a locked
	// OS thread with an io_uring of its own, which waits for its event
	// channel and its completions in one place (ringLoop); it needs an
	// event channel handle that can be polled and no GrantCopy. Off: one
	// io_uring and one reaping goroutine per device, the rings waiting
	// for their event channels in Go's poller. Measured in the lab (see
	// ringLoop) it trades 4 KiB QD1 latency for 1 MiB throughput, so it
	// is not the default.
	RingThreads bool
	// FixedBuffers is the number of 128 KiB bounce buffers per device
	// registered with its io_uring (shared reaper engine, mapped grants,
	// an O_DIRECT backing):
	// reads and writes of 32 KiB to 128 KiB go through one, with a copy
	// from or to the frontend's pages, instead of having the kernel pin
	// those pages for every transfer (fixedMinBytes has the lab's
	// figures). 0: none. Other requests, and requests finding every
	// buffer busy, use the frontend's pages.
	FixedBuffers int
	// JournalDir keeps each ring's crash-only journal (a memory file per
	// ring; put it on tmpfs, e.g. /run/drvdom/journal). Empty: no journal,
	// a restarted process resumes from the published rsp_prod.
	JournalDir string
	// Workers is the number of I/O goroutines per device (16 if 0).
	Workers int
	// Open opens the backing named by params (OpenTarget if nil).
	Open func(params string, o OpenOptions) (Backing, error)
	// NoDirect disables O_DIRECT on files and devices.
	NoDirect bool
	// ResizeInterval is how often the backing's size is polled for online
	// resize (2 s if 0; negative disables).
	ResizeInterval time.Duration
	// qmu guards queues: every connected ring, for Stalled and kill.
	qmu    sync.Mutex
	queues map[*queue]struct{}

	// StatsInterval is how often the statistics are written to the
	// backend's drvdom-stats key when they changed (5 s if 0; negative
	// disables; they are always written at disconnect).
	StatsInterval time.Duration
}

// Engines of StatsSnapshot.Engine (Device.engine).
const (
	engineNone = iota // never connected
	engineInline
	enginePool
	engineShared
	engineRings
)

var engineNames = [...]string{"", "inline", "pool", "uring", "uring-rings"}

// StatsKey is the backend key holding the device statistics as JSON.
const StatsKey = "drvdom-stats"

// Type implements xenbus.Driver.
func (drv *Driver) Type() string { return "vbd" }

func (drv *Driver) maxPgrants() int {
	if drv.MaxPersistentGrants > 0 {
		return drv.MaxPersistentGrants
	}
	return DefaultMaxPersistentGrants
}

func (drv *Driver) persistent() bool { return !drv.NoPersistent && !drv.GrantCopy }

func (drv *Driver) maxQueues() int {
	if drv.MaxQueues > 0 {
		return drv.MaxQueues
	}
	return runtime.NumCPU()
}

func (drv *Driver) maxOrder() int {
	if drv.MaxRingPageOrder > 0 && drv.MaxRingPageOrder <= 4 {
		return drv.MaxRingPageOrder
	}
	return 4
}

// Stats are a device's counters. Read them with Device.Stats.
type Stats struct {
	Reads, Writes, Flushes, Barriers, Discards, Indirect atomic.Uint64
	BytesRead, BytesWritten                              atomic.Uint64
	Errors, NotSupported                                 atomic.Uint64
	InFlight                                             atomic.Int64
	PersistentHits, PersistentMisses                     atomic.Uint64
	PersistentPurged, PersistentOverflow                 atomic.Uint64
	// Retries counts backing I/O retried after a transient error.
	Retries atomic.Uint64
	// Bounced counts transfers through a registered bounce buffer
	// (Driver.FixedBuffers).
	Bounced atomic.Uint64
}

// StatsSnapshot is Stats at one moment, as written to drvdom-stats.
type StatsSnapshot struct {
	Reads              uint64 `json:"reads"`
	Writes             uint64 `json:"writes"`
	Flushes            uint64 `json:"flushes"`
	Barriers           uint64 `json:"barriers"`
	Discards           uint64 `json:"discards"`
	Indirect           uint64 `json:"indirect"`
	BytesRead          uint64 `json:"bytes_read"`
	BytesWritten       uint64 `json:"bytes_written"`
	Errors             uint64 `json:"errors"`
	NotSupported       uint64 `json:"not_supported"`
	InFlight           int64  `json:"in_flight"`
	PersistentHits     uint64 `json:"persistent_hits"`
	PersistentMisses   uint64 `json:"persistent_misses"`
	PersistentPurged   uint64 `json:"persistent_purged"`
	PersistentOverflow uint64 `json:"persistent_overflow"`
	Retries            uint64 `json:"retries"`
	Bounced            uint64 `json:"bounced,omitempty"`
	Sectors            uint64 `json:"sectors"`
	Queues             int    `json:"queues"`
	// Engine runs the I/O: "inline" (the null disk), "pool" (worker
	// goroutines), "uring" (one io_uring and reaper for the device) or
	// "uring-rings" (a thread and an io_uring per ring, ringLoop).
	Engine string `json:"engine,omitempty"`
	// AllocatedBytes is what a file backing occupies on its filesystem
	// (st_blocks*512): discards that punch holes make it shrink. 0 for
	// block devices.
	AllocatedBytes int64 `json:"allocated_bytes"`
}

// Device is one probed vbd: a xenbus.Instance.
type Device struct {
	drv     *Driver
	dev     *xenbus.Dev
	log     *slog.Logger
	backing Backing

	frontDom uint16
	readOnly bool
	cdrom    bool
	remov    bool
	logical  uint32
	physical uint32
	discard  bool
	secure   bool
	gran     uint32
	sectors  atomic.Uint64
	// published is the sectors value in xenstore (monitor goroutine only,
	// set by Connect before the monitor starts).
	published uint64

	// file is the backing's path when it is a regular file (for
	// AllocatedBytes), else "".
	file string

	pool    *bouncePool // grant-copy mode, per connection
	stats   Stats
	nqueues atomic.Int32
	engine  atomic.Int32 // engine* of the connection

	mu     sync.Mutex // connection state below
	conn   *connection
	closed bool
	// resuming is set by Connect when the frontend is already Connected:
	// a restarted process takes over a live ring, whose journals are
	// replayed (otherwise they are reset: a new ring).
	resuming bool
}

// connection is one Connect..Disconnect: the rings and their goroutines.
type connection struct {
	cancel  context.CancelFunc
	queues  []*queue
	handles []evtchn.Handle
	qwg     sync.WaitGroup // queue goroutines
	wwg     sync.WaitGroup // the monitor
	exec    executor       // nil for an inline backing
	loops   []ringRunner   // or each ring's own (exec is then nil)
}

var _ xenbus.Driver = (*Driver)(nil)
var _ xenbus.Instance = (*Device)(nil)

// Probe reads the backend keys, opens the backing and publishes the features.
func (drv *Driver) Probe(ctx context.Context, d *xenbus.Dev) (xenbus.Instance, error) {
	if drv.Grants == nil || drv.Events == nil {
		return nil, fmt.Errorf("%s: blkback driver without Grants or Events", d.Name())
	}
	log := drv.Log
	if log == nil {
		log = d.Log
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("dev", d.Name())
	// Every key at once: a restarted worker probes every vbd again, and
	// each round trip to dom0's xenstored counts while the guest waits.
	vals, errs := d.ReadBackMany(ctx, "params", "target", "mode", "online", "type", "device-type", "removable", "discard-enable")
	back := func(i int) (string, error) { return vals[i], errs[i] }
	params, err := back(0)
	if errors.Is(err, xenstore.ErrNotExist) || (err == nil && params == "") {
		params, err = back(1)
	}
	if err != nil {
		return nil, err
	}
	params = strings.TrimSpace(params)
	mode, err := back(2)
	if err != nil {
		return nil, err
	}
	dev := &Device{drv: drv, dev: d, log: log, frontDom: d.FrontDom}
	switch strings.TrimSpace(mode) {
	case "r", "ro":
		dev.readOnly = true
	case "w", "w!", "rw":
	default:
		return nil, fmt.Errorf("%s: mode %q is neither r nor w", d.Name(), mode)
	}
	// The Manager probes only online devices; a toolstack that raced us
	// to online=0 gets nothing opened.
	if v, err := back(3); err == nil && strings.TrimSpace(v) != "1" {
		return nil, fmt.Errorf("%s: device is not online (online=%q)", d.Name(), truncate(v, 8))
	}
	// type (phy, file, ...) only says how libxl found the target: both are
	// opened the same way here.
	typ, _ := back(4)
	if v, err := back(5); err == nil && strings.TrimSpace(v) == "cdrom" {
		dev.cdrom = true
	}
	if v, err := back(6); err == nil && strings.TrimSpace(v) == "1" {
		dev.remov = true
	}
	discardEnable := true
	if v, err := back(7); err == nil && strings.TrimSpace(v) == "0" {
		discardEnable = false
	}
	open := drv.Open
	if open == nil {
		open = OpenTarget
	}
	b, err := open(params, OpenOptions{ReadOnly: dev.readOnly, NoDirect: drv.NoDirect})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.Name(), err)
	}
	dev.backing = b
	if st, err := os.Stat(params); err == nil && st.Mode().IsRegular() {
		dev.file = params
	}
	size, err := b.Size()
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("%s: %w", d.Name(), err)
	}
	dev.sectors.Store(uint64(size) / SectorSize)
	dev.logical, dev.physical = b.LogicalBlockSize(), b.PhysicalBlockSize()
	dok, dsec, gran := b.DiscardInfo()
	dev.discard = dok && discardEnable && !dev.readOnly
	dev.secure = dev.discard && dsec
	dev.gran = gran

	err = d.Store.Transaction(ctx, func(tx *xenstore.Tx) error {
		kv := [][2]string{
			{"feature-flush-cache", "1"},
			{"feature-barrier", "1"},
			{"feature-persistent", boolKey(drv.persistent())},
			{"feature-max-indirect-segments", strconv.Itoa(MaxIndirectSegments)},
			{"max-ring-page-order", strconv.Itoa(drv.maxOrder())},
			{"multi-queue-max-queues", strconv.Itoa(drv.maxQueues())},
			{"feature-discard", boolKey(dev.discard)},
		}
		if dev.discard {
			kv = append(kv, [2]string{"discard-granularity", strconv.FormatUint(uint64(dev.gran), 10)},
				[2]string{"discard-alignment", "0"}, [2]string{"discard-secure", boolKey(dev.secure)})
		}
		kvs := make([]xenstore.KV, len(kv))
		for i, e := range kv {
			kvs[i] = xenstore.KV{Key: d.BackPath + "/" + e[0], Value: e[1]}
		}
		return tx.WriteMany(ctx, kvs)
	})
	if err == nil {
		err = d.WriteBack(ctx, "hotplug-status", "connected")
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("%s: publish features: %w", d.Name(), err)
	}
	log.Info("blkback: probed", "params", params, "type", typ, "ro", dev.readOnly, "sectors", dev.sectors.Load(),
		"sector-size", dev.logical, "discard", dev.discard)
	return dev, nil
}

func boolKey(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func (dev *Device) devID() uint32 {
	if dev.dev == nil {
		return 0
	}
	return dev.dev.DevID
}

// frontKeys holds frontend keys read in batches (ReadMany: one round trip
// to dom0's xenstored for a batch, where a restarted worker would otherwise
// pay one per key); get reads a key no batch had.
type frontKeys struct {
	d    *xenbus.Dev
	vals map[string]string
	errs map[string]error
}

func newFrontKeys(d *xenbus.Dev) *frontKeys {
	return &frontKeys{d: d, vals: map[string]string{}, errs: map[string]error{}}
}

// fetch reads keys at once.
func (f *frontKeys) fetch(ctx context.Context, keys ...string) {
	vals, errs := f.d.ReadFrontMany(ctx, keys...)
	for i, k := range keys {
		f.vals[k], f.errs[k] = vals[i], errs[i]
	}
}

// get returns key as fetched, else reads it; errors as xenbus.Dev.ReadFront.
func (f *frontKeys) get(ctx context.Context, key string) (string, error) {
	v, ok := f.vals[key]
	if !ok {
		return f.d.ReadFront(ctx, key)
	}
	return v, f.errs[key]
}

// readFrontUint reads an optional unsigned frontend key; absent is def.
func (dev *Device) readFrontUint(ctx context.Context, fk *frontKeys, key string, def, limit uint64) (uint64, error) {
	v, err := fk.get(ctx, key)
	if errors.Is(err, xenstore.ErrNotExist) {
		return def, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil || n > limit {
		return 0, fmt.Errorf("%s: frontend %s=%q invalid (limit %d)", dev.dev.Name(), key, truncate(v, 16), limit)
	}
	return n, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// Connect maps the frontend's rings, binds its event channels, publishes
// the disk's size and starts serving.
func (dev *Device) Connect(ctx context.Context) (err error) {
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.closed {
		return fmt.Errorf("%s: connect after close", dev.dev.Name())
	}
	if dev.conn != nil {
		dev.stopLocked()
	}
	d := dev.dev
	fk := newFrontKeys(d)
	fk.fetch(ctx, "multi-queue-num-queues", "ring-page-order", "protocol", "feature-persistent", "state")
	nq, err := dev.readFrontUint(ctx, fk, "multi-queue-num-queues", 1, uint64(dev.drv.maxQueues()))
	if err != nil {
		return err
	}
	if nq == 0 {
		return fmt.Errorf("%s: frontend multi-queue-num-queues=0", d.Name())
	}
	order, err := dev.readFrontUint(ctx, fk, "ring-page-order", 0, uint64(dev.drv.maxOrder()))
	if err != nil {
		return err
	}
	_, orderErr := fk.get(ctx, "ring-page-order")
	hasOrder := orderErr == nil
	proto, err := fk.get(ctx, "protocol")
	if err != nil && !errors.Is(err, xenstore.ErrNotExist) {
		return err
	}
	abi, err := ParseProtocol(strings.TrimSpace(proto))
	if err != nil {
		return fmt.Errorf("%s: %w", d.Name(), err)
	}
	fp, err := dev.readFrontUint(ctx, fk, "feature-persistent", 0, 1)
	if err != nil {
		return err
	}
	persistent := fp == 1 && dev.drv.persistent()
	if dev.drv.GrantCopy {
		n := dev.drv.CopyPoolPages
		if n == 0 {
			n = DefaultCopyPoolPages
		}
		if dev.pool, err = newBouncePool(n); err != nil {
			return fmt.Errorf("%s: %w", d.Name(), err)
		}
	}

	if v, err := fk.get(ctx, "state"); err == nil {
		fs, ok := xenbus.ParseState(v)
		dev.resuming = ok && fs == xenbus.Connected
	}
	// Every queue's ring references and event channel in one batch.
	var qkeys []string
	for i := 0; i < int(nq); i++ {
		dir := ""
		if nq > 1 {
			dir = "queue-" + strconv.Itoa(i) + "/"
		}
		for p := 0; p < 1<<order; p++ {
			if hasOrder {
				qkeys = append(qkeys, dir+"ring-ref"+strconv.Itoa(p))
			} else {
				qkeys = append(qkeys, dir+"ring-ref")
			}
		}
		qkeys = append(qkeys, dir+"event-channel")
	}
	fk.fetch(ctx, qkeys...)
	c := &connection{}
	defer func() {
		if err != nil {
			c.teardown(dev)
		}
	}()
	for i := 0; i < int(nq); i++ {
		dir := ""
		if nq > 1 {
			dir = "queue-" + strconv.Itoa(i) + "/"
		}
		q, err := dev.connectQueue(ctx, fk, i, dir, abi, int(order), hasOrder, persistent, c)
		if err != nil {
			return err
		}
		c.queues = append(c.queues, q)
	}
	size, err := dev.backing.Size()
	if err != nil {
		return fmt.Errorf("%s: %w", d.Name(), err)
	}
	dev.sectors.Store(uint64(size) / SectorSize)
	dev.published = dev.sectors.Load()
	info := 0
	if dev.readOnly {
		info |= VDiskReadOnly
	}
	if dev.cdrom {
		info |= VDiskCDROM
	}
	if dev.remov {
		info |= VDiskRemovable
	}
	err = d.Store.Transaction(ctx, func(tx *xenstore.Tx) error {
		return tx.WriteMany(ctx, []xenstore.KV{
			{Key: d.BackPath + "/sectors", Value: strconv.FormatUint(dev.sectors.Load(), 10)},
			{Key: d.BackPath + "/info", Value: strconv.Itoa(info)},
			{Key: d.BackPath + "/sector-size", Value: strconv.FormatUint(uint64(dev.logical), 10)},
			{Key: d.BackPath + "/physical-sector-size", Value: strconv.FormatUint(uint64(dev.physical), 10)},
		})
	})
	if err != nil {
		return fmt.Errorf("%s: publish disk: %w", d.Name(), err)
	}
	dev.start(ctx, c)
	dev.conn = c
	dev.log.Info("blkback: connected", "queues", nq, "ring-page-order", order, "protocol", abi.String(), "persistent", persistent)
	return nil
}

func (dev *Device) connectQueue(ctx context.Context, fk *frontKeys, i int, dir string, abi ABI, order int, hasOrder, persistent bool, c *connection) (*queue, error) {
	d := dev.dev
	pages := 1 << order
	refs := make([]grant.Ref, pages)
	for p := 0; p < pages; p++ {
		key := dir + "ring-ref"
		if hasOrder {
			key += strconv.Itoa(p)
		}
		v, err := fk.get(ctx, key)
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%s: frontend %s=%q is not a grant reference", d.Name(), key, truncate(v, 16))
		}
		refs[p] = grant.Ref(n)
	}
	v, err := fk.get(ctx, dir+"event-channel")
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%s: frontend %sevent-channel=%q invalid", d.Name(), dir, truncate(v, 16))
	}
	m, err := dev.drv.Grants.Map(dev.frontDom, refs, true)
	if err != nil {
		return nil, fmt.Errorf("%s: map ring %d: %w", d.Name(), i, err)
	}
	h, err := dev.drv.Events()
	if err != nil {
		m.Unmap()
		return nil, fmt.Errorf("%s: open event channels: %w", d.Name(), err)
	}
	c.handles = append(c.handles, h)
	local, err := h.BindInterdomain(dev.frontDom, evtchn.Port(port))
	if err != nil {
		m.Unmap()
		return nil, fmt.Errorf("%s: bind event channel %d of queue %d: %w", d.Name(), port, i, err)
	}
	q, err := newQueue(dev, i, abi, m, h, local, persistent, journalIdentity{ringRef: uint32(refs[0]), port: uint32(port)})
	if err != nil {
		m.Unmap()
		return nil, fmt.Errorf("%s: ring %d: %w", d.Name(), i, err)
	}
	return q, nil
}

func (dev *Device) workers() int {
	if dev.drv.Workers > 0 {
		return dev.drv.Workers
	}
	return 16
}

// start launches the queue goroutines, the I/O workers and the monitor.
func (dev *Device) start(parent context.Context, c *connection) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	c.cancel = cancel
	total := 0
	for _, q := range c.queues {
		total += len(q.slots)
	}
	engine := int32(engineInline)
	if !dev.backing.Inline() {
		var slots []*slot
		for _, q := range c.queues {
			for i := range q.slots {
				slots = append(slots, &q.slots[i])
			}
		}
		uring := dev.drv.Engine == EngineURing || dev.drv.Engine == "" && preferURing(dev.backing)
		if uring && dev.drv.RingThreads {
			loops, err := newRingLoops(dev, c.queues)
			if err != nil {
				dev.log.Debug("blkback: no ring threads, io_uring with a shared reaper", "err", err)
			} else {
				c.loops = loops
				engine, uring = engineRings, false
			}
		}
		if uring {
			x, err := newURingExec(dev, c.queues, slots)
			if err != nil {
				dev.log.Warn("blkback: io_uring unavailable, using the worker pool", "err", err)
			} else {
				c.exec, engine = x, engineShared
			}
		}
		if c.exec == nil && c.loops == nil {
			c.exec, engine = newPoolExec(dev, dev.workers(), total), enginePool
		}
	}
	dev.engine.Store(engine)
	for i, q := range c.queues {
		q.exec, q.loop = c.exec, nil
		if c.loops != nil {
			q.exec, q.loop = c.loops[i], c.loops[i]
		}
	}
	dev.nqueues.Store(int32(len(c.queues)))
	dev.drv.register(c.queues, true)
	for _, q := range c.queues {
		c.qwg.Add(1)
		go func() {
			defer c.qwg.Done()
			if err := q.run(ctx); err != nil {
				// WriteError logs it, once per distinct error, with the
				// device's name: a hostile frontend gets one line.
				dev.log.Debug("blkback: ring stopped", "queue", q.idx, "err", err)
				dev.dev.WriteError(context.WithoutCancel(ctx), err)
			}
		}()
	}
	c.wwg.Add(1)
	go func() {
		defer c.wwg.Done()
		dev.monitor(ctx)
	}()
}

// monitor polls the backing's size (online resize) and writes statistics.
func (dev *Device) monitor(ctx context.Context) {
	ri, si := dev.drv.ResizeInterval, dev.drv.StatsInterval
	if ri == 0 {
		ri = 2 * time.Second
	}
	if si == 0 {
		si = 5 * time.Second
	}
	var rt, st <-chan time.Time
	if ri > 0 {
		t := time.NewTicker(ri)
		defer t.Stop()
		rt = t.C
	}
	if si > 0 {
		t := time.NewTicker(si)
		defer t.Stop()
		st = t.C
	}
	var last StatsSnapshot
	for {
		select {
		case <-ctx.Done():
			return
		case <-rt:
			dev.checkResize(ctx)
		case <-st:
			if s := dev.Stats(); s != last {
				last = s
				dev.writeStats(ctx, s)
			}
		}
	}
}

// checkResize publishes a changed backing size: sectors, then state
// rewritten as Connected so the frontend rereads it (as Linux's
// xen_blkbk_resize).
func (dev *Device) checkResize(ctx context.Context) {
	size, err := dev.backing.Size()
	if err != nil {
		dev.log.Warn("blkback: size", "err", err)
		return
	}
	n := uint64(size) / SectorSize
	old := dev.published
	if n == old {
		return
	}
	// Accept requests in the new range before the frontend hears of it.
	dev.sectors.Store(n)
	d := dev.dev
	err = d.Store.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, d.BackPath+"/sectors", strconv.FormatUint(n, 10)); err != nil {
			return err
		}
		return tx.Write(ctx, d.BackPath+"/state", strconv.Itoa(int(xenbus.Connected)))
	})
	if err != nil {
		dev.log.Warn("blkback: publish resize", "err", err)
		return
	}
	dev.published = n
	dev.log.Info("blkback: resized", "old-sectors", old, "sectors", n)
}

func (dev *Device) writeStats(ctx context.Context, s StatsSnapshot) {
	b, err := json.Marshal(s)
	if err == nil {
		err = dev.dev.WriteBackIfPresent(ctx, StatsKey, string(b))
	}
	if err != nil && ctx.Err() == nil {
		dev.log.Debug("blkback: write stats", "err", err)
	}
}

// Stats returns the device's counters now.
func (dev *Device) Stats() StatsSnapshot {
	s := &dev.stats
	nq := int(dev.nqueues.Load())
	return StatsSnapshot{
		Reads: s.Reads.Load(), Writes: s.Writes.Load(), Flushes: s.Flushes.Load(), Barriers: s.Barriers.Load(),
		Discards: s.Discards.Load(), Indirect: s.Indirect.Load(), BytesRead: s.BytesRead.Load(),
		BytesWritten: s.BytesWritten.Load(), Errors: s.Errors.Load(), NotSupported: s.NotSupported.Load(),
		InFlight: s.InFlight.Load(), PersistentHits: s.PersistentHits.Load(), PersistentMisses: s.PersistentMisses.Load(),
		PersistentPurged: s.PersistentPurged.Load(), PersistentOverflow: s.PersistentOverflow.Load(), Retries: s.Retries.Load(), Bounced: s.Bounced.Load(),
		Sectors: dev.sectors.Load(), Queues: nq, AllocatedBytes: allocatedBytes(dev.file),
		Engine: engineNames[dev.engine.Load()],
	}
}

// allocatedBytes is st_blocks*512 of path, 0 if path is "" or cannot be
// stat'ed.
func allocatedBytes(path string) int64 {
	if path == "" {
		return 0
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return 0
}

// account counts a finished request.
func (dev *Device) account(s *slot) {
	st := &dev.stats
	switch s.status {
	case StatusOkay:
	case StatusEOPNOTSUPP:
		st.NotSupported.Add(1)
	default:
		st.Errors.Add(1)
	}
	if s.req.Operation == OpIndirect {
		st.Indirect.Add(1)
	}
	ok := s.status == StatusOkay
	switch s.req.Operation {
	case OpDiscard:
		st.Discards.Add(1)
		return
	case OpWriteBarrier:
		st.Barriers.Add(1)
	case OpFlushDiskcache:
		st.Flushes.Add(1)
	}
	switch s.op {
	case OpRead:
		st.Reads.Add(1)
		if ok {
			st.BytesRead.Add(s.bytes)
		}
	case OpWrite, OpWriteBarrier, OpFlushDiskcache:
		if s.op == OpWrite {
			st.Writes.Add(1)
		}
		if ok {
			st.BytesWritten.Add(s.bytes)
		}
	}
}

// Transient backing errors (ENOMEM, EAGAIN, ENOBUFS: in the lab, the
// driver domain's NVMe write path returned ENOMEM under load with a 4 MB
// software IO TLB) are retried transientRetries times in all, waiting
// attempt*transientBackoff before each new attempt (about 0.5 s in all),
// before the guest gets an error.
const (
	transientRetries = 8
	transientBackoff = 20 * time.Millisecond
)

func transientIOError(err error) bool {
	return errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.ENOBUFS)
}

// execute performs a validated, mapped request on the backing.
func (dev *Device) execute(s *slot) error {
	r := &s.req
	dev.stats.InFlight.Add(1)
	defer dev.stats.InFlight.Add(-1)
	var err error
	if r.Operation == OpDiscard {
		err = dev.backing.Discard(int64(r.Sector)*SectorSize, int64(r.NrSectors)*SectorSize, r.Flag&DiscardSecure != 0)
		if err != nil {
			dev.log.Warn("blkback: discard", "err", err)
			return ErrIO
		}
		return nil
	}
	for attempt := 1; ; attempt++ {
		s.io.Bufs, s.io.Off = s.bufs, int64(r.Sector)*SectorSize
		switch s.op {
		case OpRead:
			err = dev.backing.ReadV(&s.io)
		case OpWrite:
			err = dev.backing.WriteV(&s.io)
		case OpWriteBarrier, OpFlushDiskcache:
			if len(s.bufs) > 0 {
				err = dev.backing.WriteV(&s.io)
			}
			if err == nil {
				err = dev.backing.Flush()
			}
		}
		if err == nil || !transientIOError(err) || attempt >= transientRetries {
			break
		}
		// The whole transfer again: reads and writes of the same range are
		// idempotent, and the guest must not see a passing shortage.
		dev.stats.Retries.Add(1)
		dev.log.Debug("blkback: transient I/O error, retrying", "op", s.op, "sector", r.Sector, "attempt", attempt, "err", err)
		time.Sleep(time.Duration(attempt) * transientBackoff)
	}
	if err == nil && s.op == OpRead && dev.pool != nil {
		s.io.Bufs = nil
		return s.q.copyOut(s)
	}
	s.io.Bufs = nil
	if err != nil {
		dev.log.Warn("blkback: I/O error", "op", s.op, "sector", r.Sector, "err", err)
		return ErrIO
	}
	return nil
}

// Disconnect stops serving and unmaps every ring and grant.
func (dev *Device) Disconnect() error {
	dev.mu.Lock()
	defer dev.mu.Unlock()
	return dev.stopLocked()
}

func (dev *Device) stopLocked() error {
	c := dev.conn
	if c == nil {
		return nil
	}
	dev.conn = nil
	dev.drv.register(c.queues, false)
	c.cancel()
	for _, q := range c.queues {
		q.stop()
	}
	c.qwg.Wait()
	if c.exec != nil {
		c.exec.stop()
	}
	for _, l := range c.loops {
		l.stop()
	}
	c.wwg.Wait()
	dev.nqueues.Store(0)
	if !c.dead() {
		dev.writeStats(context.Background(), dev.Stats())
	}
	err := c.teardown(dev)
	dev.log.Info("blkback: disconnected", "err", err)
	return err
}

// teardown releases what a (possibly partial) connection holds.
func (c *connection) teardown(dev *Device) error {
	var errs []error
	for _, q := range c.queues {
		if q.pg != nil {
			if err := q.pg.close(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := q.evh.Unbind(q.port); err != nil && !errors.Is(err, evtchn.ErrClosed) {
			errs = append(errs, err)
		}
		if err := q.rmap.Unmap(); err != nil {
			errs = append(errs, err)
		}
		if q.jrn != nil {
			if err := q.jrn.Close(); err != nil {
				errs = append(errs, err)
			}
			// Stopped cleanly: every request taken was answered and
			// pushed. A killed backend leaves its journal to the next.
			if !q.isDead() {
				if err := os.Remove(q.jrnPath); err != nil {
					errs = append(errs, err)
				}
			}
			q.jrn = nil
		}
	}
	for _, h := range c.handles {
		if err := h.Close(); err != nil && !errors.Is(err, evtchn.ErrClosed) {
			errs = append(errs, err)
		}
	}
	c.queues, c.handles = nil, nil
	if dev.pool != nil {
		if err := dev.pool.close(); err != nil {
			errs = append(errs, err)
		}
		dev.pool = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: teardown: %w", dev.dev.Name(), err)
	}
	return nil
}

// Close disconnects and closes the backing.
func (dev *Device) Close() error {
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.closed {
		return nil
	}
	dev.closed = true
	err := dev.stopLocked()
	if e := dev.backing.Close(); e != nil && err == nil {
		err = e
	}
	return err
}

func (q *queue) isDead() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dead
}

func (c *connection) dead() bool {
	return len(c.queues) > 0 && c.queues[0].isDead()
}

// register adds or removes a connection's rings from the driver's set.
func (drv *Driver) register(qs []*queue, add bool) {
	drv.qmu.Lock()
	defer drv.qmu.Unlock()
	if drv.queues == nil {
		drv.queues = make(map[*queue]struct{})
	}
	for _, q := range qs {
		if add {
			drv.queues[q] = struct{}{}
		} else {
			delete(drv.queues, q)
		}
	}
}

// Stalled reports a ring that has requests in flight and has neither taken
// nor completed one for longer than after (a hung disk or a stuck
// goroutine). drvdomd's worker withholds its heartbeat then, so that the
// watchdog restarts the driver domain. An idle ring is never stalled.
// Progress is seen by comparing counts between calls: call it regularly.
func (drv *Driver) Stalled(after time.Duration) error {
	drv.qmu.Lock()
	defer drv.qmu.Unlock()
	now := time.Now().UnixNano()
	for q := range drv.queues {
		// The ring's progress count is compared with the last look's:
		// idle time is measured from the first look that saw the
		// current count, so a stall shows after `after` plus at most
		// one interval between calls.
		if p := q.progress.Load(); p != q.stallSeen || q.stallSince == 0 {
			q.stallSeen, q.stallSince = p, now
		}
		if n := q.busy.Load(); n > 0 {
			if idle := time.Duration(now - q.stallSince); idle > after {
				return fmt.Errorf("%s queue %d: %d requests in flight, no progress for %v",
					q.dev.dev.Name(), q.idx, n, idle.Round(time.Millisecond))
			}
		}
	}
	return nil
}

// kill models the backend process dying now, for tests of the crash-only
// restart: every ring stops writing to shared memory and to its journal at
// once (in-flight I/O may still finish, as the kernel finishes a dead
// process's I/O, but answers nothing). Stopping the killed devices
// afterwards frees the host side and keeps the journals.
func (drv *Driver) kill() {
	drv.qmu.Lock()
	defer drv.qmu.Unlock()
	for q := range drv.queues {
		q.mu.Lock()
		q.dead = true
		q.killed.Store(true)
		q.mu.Unlock()
	}
}
