// Package netback is a userspace Xen netif backend: it serves the
// paravirtual network device of xen/include/public/io/netif.h to a guest's
// netfront, moving packets between the guest's tx/rx shared rings (by
// batched grant copy) and a host TAP device (with a virtio-net header that
// carries GSO and checksum offload), bridged to the driver domain's uplink.
//
// A packet's path, one file per layer: doc.go (this), proto.go (wire
// layouts), chain.go (tx chain rules), tx.go (event channel wake, tx ring,
// batched grant copy, TAP write, then per-slot responses), vnet.go (virtio-net
// header and checksum/GSO mapping), rx.go (TAP read, rx ring, responses in
// the slots of the requests they consume, multicast filter), queue.go (a
// ring pair and its two goroutines), driver.go (xenbus lifecycle), host.go /
// tap_linux.go / memhost.go (the host side).
//
// Use from drvdomd:
//
//	drv := &netback.Driver{
//		Host:   netback.LinuxHost{},
//		Mapper: gntdev,                   // grant.OpenGntdev()
//		Events: evtchn.Open,              // one handle per queue
//		Log:    log,
//	}
//	netback.EnsureBridge("xenbr0", "eth0") // the passed-through NIC
//	xenbus.NewManager(store, self, log, drv).Run(ctx)
//
// Backend keys read at probe: mac, bridge (default Driver.Bridge, else
// xenbr0), rate
// ("<bytes>,<usec>", Linux's tx credit), online. Published: feature-sg,
// feature-gso-tcpv4, feature-gso-tcpv6, feature-ipv6-csum-offload,
// feature-rx-copy=1, feature-rx-flip=0, feature-multicast-control,
// feature-dynamic-multicast-control, feature-split-event-channels,
// multi-queue-max-queues, hotplug-status=connected. The vif's Stats are
// kept as JSON in the backend key drvdom-stats (StatsKey).
//
// Everything read from a ring is hostile: requests are copied out of the
// shared page before they are looked at, malformed chains are answered with
// NETIF_RSP_ERROR and dropped (the vif keeps working), and nothing a
// frontend writes can make the backend panic or touch memory outside the
// bounds it validated. Only a corrupted ring index disables a vif (as Linux
// does), with the reason in xenstore; other vifs are unaffected.
//
// The TAP's carrier is on only while a guest is connected (as Linux netback
// turns its vif's carrier off), so the bridge queues nothing for an absent
// guest.
//
// Restarts are crash-only: a new process resumes each ring from its shared
// rsp_prod, so a guest that stayed Connected loses nothing (a tx packet is
// answered after its TAP write, so one the old process wrote but never
// answered may go out twice).
package netback
