package main

import (
	"context"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"drvdom/internal/testnet"
)

func TestBridgeAndEnslave(t *testing.T) {
	testnet.Run(t, func() {
		if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "nic0"}}); err != nil {
			t.Logf("no dummy links in this kernel (%v); using a veth pair", err)
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "nic0"}, PeerName: "nic0p"}); err != nil {
				t.Errorf("cannot create a test link: %v", err)
				return
			}
		}
		if err := ensureBridge("brtest"); err != nil {
			t.Errorf("ensureBridge: %v", err)
			return
		}
		if err := ensureBridge("brtest"); err != nil { // idempotent
			t.Errorf("ensureBridge again: %v", err)
		}
		if err := ensureBridge("nic0"); err == nil {
			t.Error("ensureBridge accepted a non-bridge link")
		}
		ctx := context.Background()
		if err := enslave(ctx, "nic0", "brtest", time.Second); err != nil {
			t.Errorf("enslave: %v", err)
			return
		}
		br, _ := netlink.LinkByName("brtest")
		nic, _ := netlink.LinkByName("nic0")
		if nic.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("nic0 master = %d, want bridge %d", nic.Attrs().MasterIndex, br.Attrs().Index)
		}
		if nic.Attrs().Flags&1 == 0 || br.Attrs().Flags&1 == 0 { // net.FlagUp
			t.Errorf("links not up: nic %v br %v", nic.Attrs().Flags, br.Attrs().Flags)
		}
		start := time.Now()
		if err := enslave(ctx, "absent0", "brtest", 200*time.Millisecond); err == nil {
			t.Error("enslave of a missing link succeeded")
		}
		if time.Since(start) > 2*time.Second {
			t.Error("waiting for a missing link did not respect its timeout")
		}
	})
}

func TestWaitLinkGone(t *testing.T) {
	testnet.Run(t, func() {
		ctx := context.Background()
		if err := waitLinkGone(ctx, "absent0", time.Second); err != nil {
			t.Errorf("missing link: %v", err)
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "brgone"}}); err != nil {
			t.Errorf("create: %v", err)
			return
		}
		if err := waitLinkGone(ctx, "brgone", 150*time.Millisecond); err == nil {
			t.Error("waitLinkGone returned nil for a link that stays")
		}
		l, _ := netlink.LinkByName("brgone")
		// Another goroutine runs on another thread, in the host's netns:
		// give it a handle on this namespace.
		ns, err := netns.Get()
		if err != nil {
			t.Errorf("netns.Get: %v", err)
			return
		}
		defer ns.Close()
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			t.Errorf("handle: %v", err)
			return
		}
		defer h.Close()
		done := make(chan error, 1)
		go func() {
			time.Sleep(100 * time.Millisecond)
			done <- h.LinkDel(l)
		}()
		if err := waitLinkGone(ctx, "brgone", 3*time.Second); err != nil {
			t.Errorf("after delete: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("delete: %v", err)
		}
	})
}
