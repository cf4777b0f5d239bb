package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"drvdom/internal/xensim/blkfront"
	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
	"drvdom/xenstore/xenbus"
)

// TestSimMemoryTwoGuests measures what drvdomd's backends hold while they
// serve two guests, each with a vbd (a file, persistent grants, 1 MiB
// indirect transfers) and a vif (traffic both ways), in the simulator: the
// Go memory the process holds (heap in use, stacks, runtime metadata:
// runtime/metrics' /memory/classes/total minus released and free heap)
// after the manager started and after each guest. The figures include the
// simulated frontends, xenstored and hypervisor of the same process, so
// the per-guest increment is an upper bound of the backends' share.
// Issue 7's target is 64 MB resident for drvdomd serving two such guests;
// the test fails if the two guests' increment alone passes 32 MB.
func TestSimMemoryTwoGuests(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	const dd = 1
	mem := netback.NewMemHost()
	host, dom0, ddom, drivers := simDriverDomain(t, dd, mem, "", log)
	base, rss0 := goMemory(), vmRSS(t)
	store := ddom.Xenstore()
	defer store.Close()
	mctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { // owned here: stopped by stop() and waited for below
		defer close(done)
		xenbus.NewManager(store, dd, log, drivers...).Run(mctx)
	}()
	defer func() { stop(); <-done }()
	started := goMemory()
	var fronts []func()
	defer func() {
		for _, c := range fronts {
			c()
		}
	}()
	perGuest := []uint64{started}
	for g := uint16(2); g <= 3; g++ {
		gd := host.NewDomain(g)
		gstore := gd.Xenstore()
		fronts = append(fronts, func() { gstore.Close() })
		img := filepath.Join(t.TempDir(), "disk.img")
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 64<<20); err != nil {
			t.Fatal(err)
		}
		d := blkfront.Disk{BackDom: dd, FrontDom: g, DevID: 51712, Params: img}
		if err := blkfront.AddDisk(ctx, dom0, d); err != nil {
			t.Fatal(err)
		}
		bf, err := blkfront.Attach(ctx, gstore, gd.Sharer(), gd.Evtchn(), d.FrontPath(), blkfront.Config{Protocol: "x86_64-abi", Persistent: true})
		if err != nil {
			t.Fatalf("guest %d blkfront: %v", g, err)
		}
		fronts = append(fronts, func() { bf.Close(context.WithoutCancel(ctx)) })
		n := netfront.Nic{BackDom: dd, FrontDom: g, DevID: 0, MAC: fmt.Sprintf("00:16:3e:00:00:%02x", g)}
		if err := netfront.AddNic(ctx, dom0, n); err != nil {
			t.Fatal(err)
		}
		nf, err := netfront.Attach(ctx, gstore, gd.Sharer(), gd.Evtchn(), n.FrontPath(), netfront.Config{Split: true})
		if err != nil {
			t.Fatalf("guest %d netfront: %v", g, err)
		}
		fronts = append(fronts, func() { nf.Close(context.WithoutCancel(ctx)) })
		// Disk traffic: 1 MiB writes and reads (indirect, persistent
		// grants) and 4 KiB ones.
		buf := make([]byte, 1<<20)
		for i := 0; i < 16; i++ {
			sector := uint64(i) * 2048
			if err := bf.Write(ctx, 0, sector, buf); err != nil {
				t.Fatalf("guest %d write: %v", g, err)
			}
			if err := bf.Read(ctx, 0, sector, buf); err != nil {
				t.Fatalf("guest %d read: %v", g, err)
			}
			if err := bf.Read(ctx, 0, sector+8, buf[:4096]); err != nil {
				t.Fatalf("guest %d read: %v", g, err)
			}
		}
		// Network traffic both ways.
		tq := waitTap(t, mem, netback.TapName(g, 0)).MemQueue(0)
		fr := make([]byte, 1514) // unicast to the guest, IPv4 ethertype, no offloads
		copy(fr, []byte{0x00, 0x16, 0x3e, 0, 0, byte(g), 0x02, 0, 0, 0, 0, 1, 0x08, 0x00})
		pkt := make([]byte, netback.VnetHdrSize+len(fr))
		copy(pkt[netback.VnetHdrSize:], fr)
		for i := 0; i < 200; i++ {
			if err := nf.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
				t.Fatalf("guest %d send: %v", g, err)
			}
			f, err := tq.Recv(ctx)
			if err != nil {
				t.Fatalf("guest %d: tap: %v", g, err)
			}
			tq.Release(f)
			if err := tq.Inject(ctx, pkt); err != nil {
				t.Fatal(err)
			}
			if _, err := nf.Recv(ctx, 0); err != nil {
				t.Fatalf("guest %d recv: %v", g, err)
			}
		}
		perGuest = append(perGuest, goMemory())
	}
	rss := vmRSS(t)
	mb := func(b uint64) float64 { return float64(b) / (1 << 20) }
	t.Logf("Go memory: before the manager %.1f MB, manager running %.1f MB, guest 2 +%.1f MB, guest 3 +%.1f MB (frontends, xenstored and hypervisor included)",
		mb(base), mb(started), mb(perGuest[1]-perGuest[0]), mb(perGuest[2]-perGuest[1]))
	t.Logf("VmRSS of the whole test process: %.1f MB before the manager, %.1f MB with two guests (their simulated grant pages included)", mb(rss0), mb(rss))
	if two := perGuest[2] - perGuest[0]; two > 32<<20 {
		t.Errorf("two guests took %.1f MB of Go memory, more than half the 64 MB budget", mb(two))
	}
}

// goMemory returns the Go memory this process holds after a collection.
func goMemory() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Sys - m.HeapReleased - (m.HeapIdle - m.HeapReleased)
}

func waitTap(t *testing.T, h *netback.MemHost, name string) *netback.MemTap {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if tp := h.Tap(name); tp != nil {
			return tp
		}
	}
	t.Fatalf("no tap %s", name)
	return nil
}

// vmRSS reads this process's resident set size.
func vmRSS(t *testing.T) uint64 {
	t.Helper()
	s, err := readProcStats("/proc/self")
	if err != nil {
		t.Fatal(err)
	}
	return uint64(s.RSSKB) << 10
}
