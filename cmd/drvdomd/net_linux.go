package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ensureBridge creates bridge (if missing) and sets it up.
func ensureBridge(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("bridge %s: create: %w", name, err)
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
	}
	if l.Type() != "bridge" {
		return fmt.Errorf("%s exists and is a %s, not a bridge", name, l.Type())
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bridge %s: up: %w", name, err)
	}
	return nil
}

// waitLink waits up to wait for the interface to exist.
func waitLink(ctx context.Context, name string, wait time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := netlink.LinkByName(name)
		if err == nil {
			return l, nil
		}
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("link %s: %w", name, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("link %s: not there after %v", name, wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitLinkGone waits up to wait for the interface to disappear.
func waitLinkGone(ctx context.Context, name string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		_, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("link %s: %w", name, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("link %s: still there after %v", name, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// enslave waits for ifname, puts it in bridge and sets it up.
func enslave(ctx context.Context, ifname, bridge string, wait time.Duration) error {
	l, err := waitLink(ctx, ifname, wait)
	if err != nil {
		return err
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("enslave %s to %s: %w", ifname, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s up: %w", ifname, err)
	}
	return nil
}

// setupNetwork brings up lo, the bridge and the passed-through NIC in it.
// A missing NIC is a log line: the guests can still talk to each other.
func setupNetwork(ctx context.Context, cfg Config, log *slog.Logger) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		if err := netlink.LinkSetUp(lo); err != nil {
			log.Warn("lo up", "err", err)
		}
	}
	if err := ensureBridge(cfg.Bridge); err != nil {
		log.Error("bridge setup failed: guests' network will not work", "bridge", cfg.Bridge, "err", err)
		return
	}
	log.Info("bridge up", "bridge", cfg.Bridge)
	if cfg.NIC == "" {
		log.Info("no NIC configured (drvdom.nic=none)")
		return
	}
	if err := enslave(ctx, cfg.NIC, cfg.Bridge, time.Duration(cfg.WaitNIC)*time.Second); err != nil {
		log.Error("NIC not in the bridge: guests get no outside network", "nic", cfg.NIC, "err", err)
		return
	}
	log.Info("NIC in bridge", "nic", cfg.NIC, "bridge", cfg.Bridge)
}
