package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"drvdom/xenstore"
)

// hotplugOps is the host side of kernel-mode hotplug; tests fake it.
type hotplugOps interface {
	attachLoop(file string, readOnly bool) (*loopDevice, error)
	detachLoop(path string) error
	blockDevNumber(path string) (major, minor uint32, isBlock bool, err error)
	enslave(ctx context.Context, ifname, bridge string, wait time.Duration) error
}

type realHotplugOps struct{}

func (realHotplugOps) attachLoop(f string, ro bool) (*loopDevice, error) { return attachLoop(f, ro) }
func (realHotplugOps) detachLoop(p string) error                         { return detachLoop(p) }
func (realHotplugOps) blockDevNumber(p string) (uint32, uint32, bool, error) {
	return blockDevNumber(p)
}
func (realHotplugOps) enslave(ctx context.Context, i, b string, w time.Duration) error {
	return enslave(ctx, i, b, w)
}

// kernelHotplug is drvdomd in kernel mode: a script-free `xl devd` for the
// kernel's xen-blkback and xen-netback. The kernel drives the xenbus states;
// this only does what /etc/xen/scripts/block and vif-bridge would: give a
// vbd its physical-device (a loop device for a file), put a vif in the
// bridge, and write hotplug-status.
type kernelHotplug struct {
	store   *xenstore.Client
	self    uint16
	bridge  string
	log     *slog.Logger
	ops     hotplugOps
	vifWait time.Duration
	resync  time.Duration

	mu   sync.Mutex
	devs map[string]*hpDev // by backend path
	wg   sync.WaitGroup
}

type hpDev struct {
	typ    string
	loop   string             // loop device we attached, to detach on removal
	cancel context.CancelFunc // a vif's setup goroutine
}

func newKernelHotplug(store *xenstore.Client, self uint16, bridge string, log *slog.Logger, ops hotplugOps) *kernelHotplug {
	return &kernelHotplug{
		store: store, self: self, bridge: bridge, log: log, ops: ops,
		vifWait: 30 * time.Second, resync: 10 * time.Second,
		devs: map[string]*hpDev{},
	}
}

func (h *kernelHotplug) base() string {
	return "/local/domain/" + strconv.Itoa(int(h.self)) + "/backend"
}

// Run serves until ctx ends; loop devices stay attached across a restart of
// drvdomd (the next one adopts them from physical-device-path).
func (h *kernelHotplug) Run(ctx context.Context) error {
	w, err := h.store.Watch(ctx, h.base(), "drvdomd/hotplug")
	if err != nil {
		return fmt.Errorf("hotplug: watch %s: %w", h.base(), err)
	}
	defer w.Close()
	h.log.Info("kernel-mode hotplug: watching", "path", h.base())
	h.scan(ctx)
	tick := time.NewTicker(h.resync)
	defer tick.Stop()
	defer h.stopAll()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events():
			if !ok {
				return errors.New("hotplug: watch ended")
			}
			h.event(ctx, ev.Path)
		case <-tick.C:
			h.scan(ctx)
		}
	}
}

func (h *kernelHotplug) stopAll() {
	h.mu.Lock()
	for _, d := range h.devs {
		if d.cancel != nil {
			d.cancel()
		}
	}
	h.mu.Unlock()
	h.wg.Wait()
}

func (h *kernelHotplug) event(ctx context.Context, path string) {
	rel, ok := strings.CutPrefix(path, h.base()+"/")
	if !ok {
		h.scan(ctx)
		return
	}
	parts := strings.SplitN(rel, "/", 4)
	if parts[0] != "vbd" && parts[0] != "vif" {
		return
	}
	if len(parts) < 3 {
		h.scan(ctx)
		return
	}
	if !isDecimal(parts[1]) || !isDecimal(parts[2]) {
		return
	}
	h.check(ctx, parts[0], parts[1], parts[2])
}

func isDecimal(s string) bool {
	if s == "" || len(s) > 10 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func (h *kernelHotplug) scan(ctx context.Context) {
	for _, typ := range []string{"vbd", "vif"} {
		fds, _ := h.store.Directory(ctx, h.base()+"/"+typ)
		for _, fd := range fds {
			ids, _ := h.store.Directory(ctx, h.base()+"/"+typ+"/"+fd)
			for _, id := range ids {
				if isDecimal(fd) && isDecimal(id) {
					h.check(ctx, typ, fd, id)
				}
			}
		}
	}
	h.mu.Lock()
	known := make([]string, 0, len(h.devs))
	for bp := range h.devs {
		known = append(known, bp)
	}
	h.mu.Unlock()
	for _, bp := range known {
		parts := strings.Split(strings.TrimPrefix(bp, h.base()+"/"), "/")
		if len(parts) == 3 {
			h.check(ctx, parts[0], parts[1], parts[2])
		}
	}
}

// check brings one backend directory's hotplug up to date.
func (h *kernelHotplug) check(ctx context.Context, typ, fd, id string) {
	bp := h.base() + "/" + typ + "/" + fd + "/" + id
	h.mu.Lock()
	d := h.devs[bp]
	h.mu.Unlock()

	if _, err := h.store.Directory(ctx, bp); errors.Is(err, xenstore.ErrNotExist) {
		if d != nil {
			h.log.Info("hotplug: backend removed", "backend", bp)
			h.remove(bp, d)
		}
		return
	}
	online, _ := h.store.Read(ctx, bp+"/online")
	online = strings.TrimSpace(online)
	if d != nil {
		if online != "1" {
			st, _ := h.store.Read(ctx, bp+"/state")
			if strings.TrimSpace(st) == "6" { // Closed: the kernel let go
				h.log.Info("hotplug: backend offline and closed", "backend", bp)
				h.remove(bp, d)
			}
		}
		return
	}
	if online != "1" {
		return
	}
	hs, _ := h.store.Read(ctx, bp+"/hotplug-status")
	switch typ {
	case "vbd":
		if strings.TrimSpace(hs) == "connected" {
			// A previous drvdomd did it: adopt its loop device.
			pdp, _ := h.store.Read(ctx, bp+"/physical-device-path")
			d = &hpDev{typ: typ}
			if strings.HasPrefix(pdp, "/dev/loop") {
				d.loop = pdp
			}
			h.add(bp, d)
			return
		}
		if strings.TrimSpace(hs) == "error" {
			return // reported already; the toolstack removes it
		}
		h.setupVBD(ctx, bp)
	case "vif":
		name, err := h.store.Read(ctx, bp+"/vifname")
		if err != nil || strings.TrimSpace(name) == "" {
			name = "vif" + fd + "." + id
		}
		vctx, cancel := context.WithCancel(ctx)
		d = &hpDev{typ: typ, cancel: cancel}
		h.add(bp, d)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer cancel()
			h.setupVIF(vctx, bp, strings.TrimSpace(name))
		}()
	}
}

func (h *kernelHotplug) add(bp string, d *hpDev) {
	h.mu.Lock()
	h.devs[bp] = d
	h.mu.Unlock()
}

func (h *kernelHotplug) remove(bp string, d *hpDev) {
	h.mu.Lock()
	delete(h.devs, bp)
	h.mu.Unlock()
	if d.cancel != nil {
		d.cancel()
	}
	if d.loop != "" {
		if err := h.ops.detachLoop(d.loop); err != nil {
			h.log.Warn("hotplug: detach loop", "backend", bp, "loop", d.loop, "err", err)
		} else {
			h.log.Info("hotplug: loop detached", "loop", d.loop)
		}
	}
}

// diskTarget is the backing path named by params (or target), without the
// prefixes older toolstacks put there ("phy:", "file:", "aio:").
func diskTarget(params string) string {
	p := strings.TrimSpace(params)
	for _, pre := range []string{"phy:", "file:", "aio:", "raw:"} {
		p = strings.TrimPrefix(p, pre)
	}
	return p
}

func (h *kernelHotplug) fail(ctx context.Context, bp string, err error) {
	h.log.Error("hotplug failed", "backend", bp, "err", err)
	_ = h.store.Write(ctx, bp+"/hotplug-error", err.Error())
	_ = h.store.Write(ctx, bp+"/hotplug-status", "error")
}

func (h *kernelHotplug) setupVBD(ctx context.Context, bp string) {
	params, err := h.store.Read(ctx, bp+"/params")
	if err != nil || strings.TrimSpace(params) == "" {
		params, err = h.store.Read(ctx, bp+"/target")
	}
	if err != nil {
		h.fail(ctx, bp, fmt.Errorf("no params or target: %w", err))
		return
	}
	target := diskTarget(params)
	if !filepath.IsAbs(target) {
		h.fail(ctx, bp, fmt.Errorf("disk %q is not an absolute path", target))
		return
	}
	mode, _ := h.store.Read(ctx, bp+"/mode")
	ro := strings.TrimSpace(mode) == "r"
	maj, min, isBlk, err := h.ops.blockDevNumber(target)
	if err != nil {
		h.fail(ctx, bp, err)
		return
	}
	d := &hpDev{typ: "vbd"}
	dev := target
	if !isBlk {
		ld, err := h.ops.attachLoop(target, ro)
		if err != nil {
			h.fail(ctx, bp, err)
			return
		}
		maj, min, dev, d.loop = ld.Major, ld.Minor, ld.Path, ld.Path
	}
	err = h.store.Transaction(ctx, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, bp+"/online"); err != nil {
			return err // removed meanwhile
		}
		if err := tx.Write(ctx, bp+"/physical-device", fmt.Sprintf("%x:%x", maj, min)); err != nil {
			return err
		}
		if err := tx.Write(ctx, bp+"/physical-device-path", dev); err != nil {
			return err
		}
		return tx.Write(ctx, bp+"/hotplug-status", "connected")
	})
	if err != nil {
		h.log.Error("hotplug: publish physical-device", "backend", bp, "err", err)
		if d.loop != "" {
			_ = h.ops.detachLoop(d.loop)
		}
		return
	}
	h.add(bp, d)
	h.log.Info("hotplug: vbd ready", "backend", bp, "disk", target, "device", dev, "physical-device", fmt.Sprintf("%x:%x", maj, min))
}

func (h *kernelHotplug) setupVIF(ctx context.Context, bp, name string) {
	if err := h.ops.enslave(ctx, name, h.bridge, h.vifWait); err != nil {
		if ctx.Err() == nil {
			h.fail(ctx, bp, err)
		}
		return
	}
	err := h.store.Transaction(ctx, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, bp+"/online"); err != nil {
			return err // removed meanwhile: do not recreate it
		}
		return tx.Write(ctx, bp+"/hotplug-status", "connected")
	})
	if err != nil {
		h.log.Error("hotplug: write hotplug-status", "backend", bp, "err", err)
		return
	}
	h.log.Info("hotplug: vif ready", "backend", bp, "vif", name, "bridge", h.bridge)
}
