package netback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"sync"
	"time"

	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

// StatsKey is the backend key the vif's Stats are published in, as JSON,
// every Driver.StatsInterval and at disconnect.
const StatsKey = "drvdom-stats"

// DefaultBridge is the bridge a vif without a bridge key joins.
const DefaultBridge = "xenbr0"

// Driver is the xenbus driver of "vif" devices.
type Driver struct {
	Host   Host                          // TAP factory (LinuxHost{} or a MemHost)
	Mapper grant.Mapper                  // maps rings, copies packets
	Events func() (evtchn.Handle, error) // opens an event channel handle (one per queue)
	// Bridge is the bridge of a vif whose backend has no bridge key
	// (DefaultBridge if empty).
	Bridge string
	// MaxQueues is published as multi-queue-max-queues (runtime.NumCPU() if 0).
	MaxQueues int
	// StatsInterval is how often drvdom-stats is rewritten (5 s if 0; never
	// periodically if negative).
	StatsInterval time.Duration
	// RxDrainTimeout is how long a packet for the guest waits for rx
	// buffers before it is dropped (DefaultRxDrainTimeout if 0).
	RxDrainTimeout time.Duration
	Log            *slog.Logger
}

var _ xenbus.Driver = (*Driver)(nil)

// Type implements xenbus.Driver.
func (d *Driver) Type() string { return "vif" }

func (d *Driver) maxQueues() int {
	if d.MaxQueues > 0 {
		return d.MaxQueues
	}
	return runtime.NumCPU()
}

// Probe implements xenbus.Driver: it reads mac, bridge, rate and online,
// creates the TAP on the bridge, publishes the backend features and
// hotplug-status=connected.
func (d *Driver) Probe(ctx context.Context, dev *xenbus.Dev) (xenbus.Instance, error) {
	log := d.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("dev", dev.Name())
	// Every key at once: a restarted worker probes every vif again, and
	// each round trip to dom0's xenstored counts while the guest waits.
	vals, errs := dev.ReadBackMany(ctx, "online", "mac", "bridge", "rate")
	if on, err := vals[0], errs[0]; err == nil && on != "1" {
		return nil, fmt.Errorf("%s: online is %q", dev.Name(), on)
	}
	v := &Vif{drv: d, dev: dev, log: log, bridge: DefaultBridge}
	if d.Bridge != "" {
		v.bridge = d.Bridge
	}
	if m, err := vals[1], errs[1]; err == nil {
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 {
			return nil, fmt.Errorf("%s: bad mac %q", dev.Name(), m)
		}
		copy(v.mac[:], hw)
	} else if !errors.Is(err, xenstore.ErrNotExist) {
		return nil, err
	}
	if b, err := vals[2], errs[2]; err == nil && b != "" {
		v.bridge = b
	} else if err != nil && !errors.Is(err, xenstore.ErrNotExist) {
		return nil, err
	}
	if r, err := vals[3], errs[3]; err == nil {
		if v.rateCfg, err = parseRate(r); err != nil {
			return nil, fmt.Errorf("%s: %w", dev.Name(), err)
		}
	} else if !errors.Is(err, xenstore.ErrNotExist) {
		return nil, err
	}
	tap, err := d.Host.CreateTap(TapName(dev.FrontDom, dev.DevID), v.bridge)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dev.Name(), err)
	}
	v.tap = tap
	kvs := make([]xenstore.KV, 0, len(backendFeatures)+2)
	for _, f := range backendFeatures {
		kvs = append(kvs, xenstore.KV{Key: dev.BackPath + "/" + f.key, Value: f.val})
	}
	kvs = append(kvs, xenstore.KV{Key: dev.BackPath + "/multi-queue-max-queues", Value: strconv.Itoa(d.maxQueues())},
		xenstore.KV{Key: dev.BackPath + "/hotplug-status", Value: "connected"})
	err = dev.Store.Transaction(ctx, func(tx *xenstore.Tx) error { return tx.WriteMany(ctx, kvs) })
	if err != nil {
		tap.Close()
		return nil, fmt.Errorf("%s: publish features: %w", dev.Name(), err)
	}
	log.Info("vif probed", "tap", tap.Name(), "bridge", v.bridge, "rate", v.rateCfg != nil)
	return v, nil
}

// Vif is one probed vif device (a xenbus.Instance).
type Vif struct {
	drv     *Driver
	dev     *xenbus.Dev
	log     *slog.Logger
	mac     [6]byte
	bridge  string
	rateCfg *rateLimit
	tap     Tap

	mu      sync.Mutex
	queues  []*queue
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	failed  error // first serving failure
	retired Stats // counters of earlier connections
	closed  bool
}

// Tap returns the vif's host device.
func (v *Vif) Tap() Tap { return v.tap }

// MAC returns the guest MAC from the backend's mac key (zero if none).
func (v *Vif) MAC() [6]byte { return v.mac }

// Stats returns the vif's counters since probe.
func (v *Vif) Stats() Stats {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.statsLocked()
}

func (v *Vif) statsLocked() Stats {
	s := v.retired
	for _, q := range v.queues {
		s.add(q.stats.snapshot())
	}
	return s
}

// Connect implements xenbus.Instance: read the frontend's rings, event
// channels and features, map, bind, and serve each queue with a goroutine
// pair until Disconnect.
func (v *Vif) Connect(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return fmt.Errorf("%s: connect after close", v.dev.Name())
	}
	if v.cancel != nil {
		v.disconnectLocked()
	}
	cfgs, feat, err := v.readFront(ctx)
	if err != nil {
		return err
	}
	if err := v.tap.SetQueues(len(cfgs)); err != nil {
		return fmt.Errorf("%s: %w", v.dev.Name(), err)
	}
	if err := v.tap.SetOffload(offloadFor(feat)); err != nil {
		return fmt.Errorf("%s: %w", v.dev.Name(), err)
	}

	var mcast *mcastList
	if feat.mcastControl {
		mcast = &mcastList{}
	}
	for i := range cfgs {
		c := &cfgs[i]
		c.feat, c.mcast, c.mapper, c.log = feat, mcast, v.drv.Mapper, v.log
		c.tap = v.tap.Queue(i)
		c.stats = &counters{}
		c.rxDrain = v.drv.RxDrainTimeout
		if v.rateCfg != nil {
			r := *v.rateCfg
			c.rate = &r
		}
		if c.events, err = v.drv.Events(); err != nil {
			err = fmt.Errorf("%s: queue %d: open event channels: %w", v.dev.Name(), i, err)
		} else {
			var q *queue
			if q, err = newQueue(*c); err != nil {
				err = fmt.Errorf("%s: %w", v.dev.Name(), err)
			} else {
				v.queues = append(v.queues, q)
			}
		}
		if err != nil {
			v.releaseLocked()
			return err
		}
	}
	if err := v.tap.SetCarrier(true); err != nil {
		v.releaseLocked()
		return fmt.Errorf("%s: %w", v.dev.Name(), err)
	}
	sctx, cancel := context.WithCancel(ctx)
	v.cancel = cancel
	v.failed = nil
	for _, q := range v.queues {
		v.wg.Add(1)
		go func() {
			defer v.wg.Done()
			if err := q.serve(sctx); err != nil {
				v.fail(sctx, err)
			}
		}()
	}
	if iv := v.statsInterval(); iv > 0 {
		v.wg.Add(1)
		go v.publishStats(sctx, iv)
	}
	v.log.Info("vif connected", "queues", len(v.queues), "split", cfgs[0].split, "sg", feat.sg,
		"gso4", feat.gsoTCPv4, "gso6", feat.gsoTCPv6, "mcast", feat.mcastControl)
	return nil
}

func (v *Vif) statsInterval() time.Duration {
	if v.drv.StatsInterval == 0 {
		return 5 * time.Second
	}
	return v.drv.StatsInterval
}

// fail stops the whole vif after a queue failed (the frontend corrupted a
// ring), as Linux's xenvif_fatal_tx_err disables the vif; other vifs are
// unaffected.
func (v *Vif) fail(ctx context.Context, err error) {
	// WriteError logs it, once per distinct error, with the vif's name.
	v.log.Debug("vif disabled", "err", err)
	v.dev.WriteError(context.WithoutCancel(ctx), err)
	v.mu.Lock()
	if v.failed == nil {
		v.failed = err
	}
	cancel := v.cancel
	v.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Failed returns the error that disabled the vif, if any.
func (v *Vif) Failed() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.failed
}

func (v *Vif) publishStats(ctx context.Context, iv time.Duration) {
	defer v.wg.Done()
	t := time.NewTicker(iv)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s := v.Stats().JSON()
			if s == last {
				continue // an idle vif costs xenstore nothing
			}
			if err := v.dev.WriteBackIfPresent(ctx, StatsKey, s); err != nil {
				if ctx.Err() == nil {
					v.log.Debug("publish stats", "err", err)
				}
				continue
			}
			last = s
		}
	}
}

// Disconnect implements xenbus.Instance: stop serving, unbind, unmap.
func (v *Vif) Disconnect() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.disconnectLocked()
}

func (v *Vif) disconnectLocked() error {
	if v.cancel == nil {
		return nil
	}
	v.cancel()
	v.mu.Unlock() // a failing queue takes v.mu in fail
	v.wg.Wait()
	v.mu.Lock()
	v.cancel = nil
	s := v.statsLocked()
	err := v.releaseLocked()
	if cerr := v.tap.SetCarrier(false); cerr != nil {
		err = errors.Join(err, fmt.Errorf("%s: %w", v.dev.Name(), cerr))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if werr := v.dev.WriteBackIfPresent(ctx, StatsKey, s.JSON()); werr != nil {
		v.log.Debug("publish stats", "err", werr)
	}
	v.log.Info("vif disconnected", "stats", s.JSON())
	return err
}

// releaseLocked frees every queue's rings and event channels and keeps
// their counters.
func (v *Vif) releaseLocked() error {
	var errs []error
	for _, q := range v.queues {
		v.retired.add(q.stats.snapshot())
		errs = append(errs, q.release())
	}
	v.queues = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: release: %w", v.dev.Name(), err)
	}
	return nil
}

// Close implements xenbus.Instance: disconnect and remove the TAP.
func (v *Vif) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	err := v.disconnectLocked()
	v.closed = true
	return errors.Join(err, v.tap.Close())
}

// readFront reads what the frontend published (all of it hostile).
func (v *Vif) readFront(ctx context.Context) ([]queueConfig, frontFeatures, error) {
	dev := v.dev
	var f frontFeatures
	flags := [...]struct {
		key string
		dst *bool
	}{
		{"request-rx-copy", &f.rxCopy},
		{"feature-sg", &f.sg},
		{"feature-gso-tcpv4", &f.gsoTCPv4},
		{"feature-gso-tcpv6", &f.gsoTCPv6},
		{"feature-ipv6-csum-offload", &f.ipv6Csum},
		{"feature-no-csum-offload", &f.noCsumOffload},
		{"request-multicast-control", &f.mcastControl},
	}
	// One batch of reads for the flags, the queue count and a single
	// queue's keys (in the frontend's directory itself); a second for
	// multi-queue frontends' queue-N directories.
	queueKeys := [...]string{"tx-ring-ref", "rx-ring-ref", "event-channel-tx", "event-channel-rx", "event-channel"}
	keys := make([]string, 0, len(flags)+1+len(queueKeys))
	for _, ff := range flags {
		keys = append(keys, ff.key)
	}
	keys = append(keys, "multi-queue-num-queues")
	keys = append(keys, queueKeys[:]...)
	vals, errs := dev.ReadFrontMany(ctx, keys...)
	var err error
	for i, ff := range flags {
		var n uint64
		if n, err = v.parseFrontUint(keys[i], vals[i], errs[i], 0); err != nil {
			return nil, f, err
		}
		*ff.dst = n != 0
	}
	if !f.rxCopy {
		return nil, f, fmt.Errorf("%s: frontend does not support rx-copy (flip is not implemented)", dev.Name())
	}
	nqAt := len(flags)
	nq, err := v.parseFrontUint(keys[nqAt], vals[nqAt], errs[nqAt], 1)
	if err != nil {
		return nil, f, err
	}
	if nq < 1 || nq > uint64(v.drv.maxQueues()) {
		return nil, f, fmt.Errorf("%s: frontend asked for %d queues, max %d", dev.Name(), nq, v.drv.maxQueues())
	}
	qkeys, qvals, qerrs := keys[nqAt+1:], vals[nqAt+1:], errs[nqAt+1:]
	if nq > 1 {
		qkeys = make([]string, 0, int(nq)*len(queueKeys))
		for i := range int(nq) {
			for _, k := range queueKeys {
				qkeys = append(qkeys, "queue-"+strconv.Itoa(i)+"/"+k)
			}
		}
		qvals, qerrs = dev.ReadFrontMany(ctx, qkeys...)
	}
	cfgs := make([]queueConfig, nq)
	for i := range cfgs {
		c := &cfgs[i]
		c.id, c.front = i, dev.FrontDom
		at := i * len(queueKeys)
		key := func(j int, def int64) (uint64, error) {
			return v.parseFrontUint(qkeys[at+j], qvals[at+j], qerrs[at+j], def)
		}
		tx, err := key(0, -1)
		if err != nil {
			return nil, f, err
		}
		rx, err := key(1, -1)
		if err != nil {
			return nil, f, err
		}
		c.txRef, c.rxRef = grant.Ref(tx), grant.Ref(rx)
		etx, errTx := key(2, -1)
		erx, errRx := key(3, -1)
		if errTx == nil && errRx == nil {
			c.split = true
			c.txPort, c.rxPort = evtchn.Port(etx), evtchn.Port(erx)
		} else {
			e, err := key(4, -1)
			if err != nil {
				return nil, f, err
			}
			c.txPort, c.rxPort = evtchn.Port(e), evtchn.Port(e)
		}
	}
	return cfgs, f, nil
}

// parseFrontUint parses frontend key (relative to FrontPath), read as s,
// err by xenbus.Dev.ReadFrontMany, as an unsigned 32-bit number. A missing
// key is def, or an error if def < 0 (required). Read errors come back as
// ReadFrontMany wrapped them (device and key named).
func (v *Vif) parseFrontUint(key, s string, err error, def int64) (uint64, error) {
	if err != nil {
		if errors.Is(err, xenstore.ErrNotExist) && def >= 0 {
			return uint64(def), nil
		}
		return 0, err
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s: frontend %s = %q: %w", v.dev.Name(), key, s, err)
	}
	return n, nil
}
