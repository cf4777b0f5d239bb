//go:build linux

package testnet

import (
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestRunIsolates(t *testing.T) {
	host, err := netns.Get()
	if err != nil {
		t.Fatalf("host netns: %v", err)
	}
	defer host.Close()
	ran := false
	Run(t, func() {
		ran = true
		ns, err := netns.Get()
		if err != nil {
			t.Errorf("netns: %v", err)
			return
		}
		defer ns.Close()
		if ns.Equal(host) {
			t.Error("fn runs in the host's network namespace")
		}
		links, err := netlink.LinkList()
		if err != nil {
			t.Errorf("links: %v", err)
			return
		}
		if len(links) != 1 || links[0].Attrs().Name != "lo" {
			t.Errorf("a fresh namespace holds only lo, got %d links", len(links))
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "testnet0"}}); err != nil {
			t.Errorf("create a bridge: %v", err)
		}
		if _, err := netlink.LinkByName("testnet0"); err != nil {
			t.Errorf("bridge not in the namespace: %v", err)
		}
	})
	if !ran {
		t.Fatal("fn did not run")
	}
	if _, err := netlink.LinkByName("testnet0"); err == nil {
		t.Error("a link made in the test namespace appeared on the host")
	}
}
