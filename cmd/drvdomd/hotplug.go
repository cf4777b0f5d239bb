package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
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
	// waitLinkGone waits up to wait for the interface to disappear.
	waitLinkGone(ctx context.Context, ifname string, wait time.Duration) error
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
func (realHotplugOps) waitLinkGone(ctx context.Context, i string, w time.Duration) error {
	return waitLinkGone(ctx, i, w)
}

// kernelHotplug is drvdomd in kernel mode: a script-free `xl devd` for the
// kernel's xen-blkback and xen-netback. The kernel drives the xenbus states;
// this only does what /etc/xen/scripts/block and vif-bridge would: give a
// vbd its physical-device (a loop device for a file), put a vif in the
// bridge, and write hotplug-status.
type kernelHotplug struct {
	store       *xenstore.Client
	self        uint16
	bridge      string
	log         *slog.Logger
	ops         hotplugOps
	vifWait     time.Duration
	vifGoneWait time.Duration
	diskWait    time.Duration
	resync      time.Duration
	// removeGrace is how long a Closed, offline backend directory stays
	// before this removes it. The toolstack in dom0 waits for state 6 by a
	// watch and reads the node when the watch fires; removed before that
	// read, it fails the detach ("wanted state 6 but it was removed"). It
	// then waits LIBXL_DESTROY_TIMEOUT (10 s) for the removal, so the grace
	// must stay well below that.
	removeGrace time.Duration

	mu       sync.Mutex
	devs     map[string]*hpDev // by backend path
	removing map[string]bool   // gone backends waiting for their removal (grace, netdev)
	wg       sync.WaitGroup
}

type hpDev struct {
	typ    string
	loop   string             // loop device we attached, to detach on removal (guarded by kernelHotplug.mu)
	cancel context.CancelFunc // stops the device's setup goroutine
}

func newKernelHotplug(store *xenstore.Client, self uint16, bridge string, log *slog.Logger, ops hotplugOps) *kernelHotplug {
	return &kernelHotplug{
		store: store, self: self, bridge: bridge, log: log, ops: ops,
		vifWait: 30 * time.Second, vifGoneWait: 20 * time.Second, diskWait: 30 * time.Second,
		resync: 10 * time.Second, removeGrace: 2 * time.Second,
		devs: map[string]*hpDev{}, removing: map[string]bool{},
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

// check brings one backend directory's hotplug up to date. Like xl devd it
// also removes the directory when the device is gone (online=0 and the
// kernel backend Closed, or the frontend vanished): in a driver domain dom0
// removes only the frontend side.
func (h *kernelHotplug) check(ctx context.Context, typ, fd, id string) {
	bp := h.base() + "/" + typ + "/" + fd + "/" + id
	h.mu.Lock()
	d := h.devs[bp]
	h.mu.Unlock()

	if _, err := h.store.Directory(ctx, bp); errors.Is(err, xenstore.ErrNotExist) {
		if d != nil {
			h.log.Info("hotplug: backend removed", "backend", bp)
			h.release(bp, d)
		}
		return
	}
	read := h.backendReader(ctx, bp)
	online, state, hs := read("online"), read("state"), read("hotplug-status")
	gone := h.frontendGone(ctx, read)
	if isGone(online, state, gone) {
		h.mu.Lock()
		busy := h.removing[bp]
		h.removing[bp] = true
		h.mu.Unlock()
		if busy {
			return // released already; its removal is pending
		}
		h.log.Info("hotplug: device gone", "backend", bp, "online", online, "state", state, "frontend_gone", gone)
		if d == nil && typ == "vbd" && hs == "connected" {
			// Set up by a previous drvdomd: its loop device is ours.
			if pdp := read("physical-device-path"); strings.HasPrefix(pdp, "/dev/loop") {
				d = &hpDev{typ: typ, loop: pdp}
			}
		}
		if d != nil {
			h.release(bp, d)
		}
		name := ""
		if typ == "vif" {
			// netback frees vifF.N asynchronously; a vif re-attached with
			// the same id before it is gone fails to create its interface.
			if name = read("vifname"); name == "" {
				name = "vif" + fd + "." + id
			}
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.removeLater(ctx, bp, name)
			h.mu.Lock()
			delete(h.removing, bp)
			h.mu.Unlock()
		}()
		return
	}
	if d != nil || online != "1" || gone {
		return
	}
	switch typ {
	case "vbd":
		if hs == "connected" {
			// A previous drvdomd did it: adopt its loop device.
			d = &hpDev{typ: typ}
			if pdp := read("physical-device-path"); strings.HasPrefix(pdp, "/dev/loop") {
				d.loop = pdp
			}
			h.add(bp, d)
			return
		}
		if hs == "error" {
			return // reported already; the toolstack removes it
		}
		vctx, cancel := context.WithCancel(ctx)
		d = &hpDev{typ: typ, cancel: cancel}
		h.add(bp, d)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer cancel()
			h.setupVBD(vctx, bp, d)
		}()
	case "vif":
		name := read("vifname")
		if name == "" {
			name = "vif" + fd + "." + id
		}
		bridge := read("bridge")
		if bridge == "" {
			bridge = h.bridge
		}
		vctx, cancel := context.WithCancel(ctx)
		d = &hpDev{typ: typ, cancel: cancel}
		h.add(bp, d)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer cancel()
			h.setupVIF(vctx, bp, name, bridge)
		}()
	}
}

// backendReader reads keys of the backend directory bp, trimmed; "" for a
// missing key.
func (h *kernelHotplug) backendReader(ctx context.Context, bp string) func(string) string {
	return func(k string) string {
		v, _ := h.store.Read(ctx, bp+"/"+k)
		return strings.TrimSpace(v)
	}
}

// isGone says a backend directory's device is finished with: offline and
// Closed (a detach), or its frontend vanished (a destroyed guest) once set up.
func isGone(online, state string, frontendGone bool) bool {
	return online == "0" && state == "6" || frontendGone && state != "" && state != "1"
}

// frontendGone says the frontend named by the backend's frontend node no
// longer has a state node.
func (h *kernelHotplug) frontendGone(ctx context.Context, read func(string) string) bool {
	fp := read("frontend")
	if fp == "" {
		return false
	}
	_, err := h.store.Read(ctx, fp+"/state")
	return err != nil && ctx.Err() == nil
}

// removeLater removes a gone device's backend directory after the grace
// the toolstack needs to see its final state and, for a vif, once netback
// has freed the netdev. It removes nothing if the toolstack removed the
// directory itself or brought the device back meanwhile.
func (h *kernelHotplug) removeLater(ctx context.Context, bp, vifName string) {
	start := time.Now()
	if vifName != "" {
		if err := h.ops.waitLinkGone(ctx, vifName, h.vifGoneWait); err != nil && ctx.Err() == nil {
			h.log.Warn("hotplug: vif still there, removing its backend anyway", "vif", vifName, "err", err)
		}
	}
	if rest := h.removeGrace - time.Since(start); rest > 0 {
		t := time.NewTimer(rest)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	if ctx.Err() != nil {
		return
	}
	if _, err := h.store.Directory(ctx, bp); errors.Is(err, xenstore.ErrNotExist) {
		return
	}
	read := h.backendReader(ctx, bp)
	if !isGone(read("online"), read("state"), h.frontendGone(ctx, read)) {
		h.log.Info("hotplug: device back before its removal, keeping it", "backend", bp)
		return
	}
	h.removeNodes(ctx, bp)
}

// removeNodes deletes a gone device's backend directory and the frontend
// domain's directory if that is now empty.
func (h *kernelHotplug) removeNodes(ctx context.Context, bp string) {
	if err := h.store.Rm(ctx, bp); err != nil && !errors.Is(err, xenstore.ErrNotExist) {
		h.log.Warn("hotplug: remove backend directory", "backend", bp, "err", err)
	}
	parent := path.Dir(bp)
	err := h.store.Transaction(ctx, func(tx *xenstore.Tx) error {
		ents, err := tx.Directory(ctx, parent)
		if err != nil || len(ents) > 0 {
			return err
		}
		return tx.Rm(ctx, parent)
	})
	if err != nil && !errors.Is(err, xenstore.ErrNotExist) {
		h.log.Debug("hotplug: remove empty directory", "path", parent, "err", err)
	}
}

func (h *kernelHotplug) add(bp string, d *hpDev) {
	h.mu.Lock()
	h.devs[bp] = d
	h.mu.Unlock()
}

// release forgets the device and frees its host side (the vif waiter, the
// loop device).
func (h *kernelHotplug) release(bp string, d *hpDev) {
	h.mu.Lock()
	delete(h.devs, bp)
	h.mu.Unlock()
	if d.cancel != nil {
		d.cancel()
	}
	h.mu.Lock()
	loop := d.loop
	d.loop = ""
	h.mu.Unlock()
	if loop != "" {
		if err := h.ops.detachLoop(loop); err != nil {
			h.log.Warn("hotplug: detach loop", "backend", bp, "loop", loop, "err", err)
		} else {
			h.log.Info("hotplug: loop detached", "loop", loop)
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

// waitDisk waits up to h.diskWait for target to exist (a passed-through
// NVMe may still be probing when the first guest's disk appears).
func (h *kernelHotplug) waitDisk(ctx context.Context, target string) (major, minor uint32, isBlock bool, err error) {
	deadline := time.Now().Add(h.diskWait)
	for {
		major, minor, isBlock, err = h.ops.blockDevNumber(target)
		if err == nil || !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return major, minor, isBlock, err
		}
		select {
		case <-ctx.Done():
			return 0, 0, false, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// setupVBD gives the vbd its physical-device: the block device named by
// params, or a loop device over the file it names.
func (h *kernelHotplug) setupVBD(ctx context.Context, bp string, d *hpDev) {
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
	maj, min, isBlk, err := h.waitDisk(ctx, target)
	if err != nil {
		if ctx.Err() == nil {
			h.fail(ctx, bp, err)
		}
		return
	}
	dev, loop := target, ""
	if !isBlk {
		ld, err := h.ops.attachLoop(target, ro)
		if err != nil {
			h.fail(ctx, bp, err)
			return
		}
		maj, min, dev, loop = ld.Major, ld.Minor, ld.Path, ld.Path
		h.mu.Lock()
		mine := h.devs[bp] == d
		if mine {
			d.loop = loop
		}
		h.mu.Unlock()
		if !mine { // released while we attached: undo
			_ = h.ops.detachLoop(loop)
			return
		}
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
		if ctx.Err() == nil {
			h.log.Error("hotplug: publish physical-device", "backend", bp, "err", err)
		}
		return // the loop device, if any, goes when the device is released
	}
	h.log.Info("hotplug: vbd ready", "backend", bp, "disk", target, "device", dev, "physical-device", fmt.Sprintf("%x:%x", maj, min))
}

func (h *kernelHotplug) setupVIF(ctx context.Context, bp, name, bridge string) {
	if err := h.ops.enslave(ctx, name, bridge, h.vifWait); err != nil {
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
	h.log.Info("hotplug: vif ready", "backend", bp, "vif", name, "bridge", bridge)
}
