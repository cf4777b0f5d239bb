//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/internal/testnet"
	"drvdom/internal/testnet/nshost"
	"drvdom/internal/xensim"
	"drvdom/internal/xensim/blkfront"
	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

// TestWorkerTeardownBackToBaseline is issue 8's soak check without the
// lab: the worker's composition (blkback on a file with a journal, netback
// on real TAPs in a private network namespace, the Manager set up as
// `drvdomd worker` sets it, the process-stats publisher) serves a guest
// that does disk and network I/O and is then destroyed (`xl destroy`: the
// domain vanishes without closing, dom0 removes the frontend and takes the
// backend offline), then a guest whose devices are detached cleanly
// (online=0, the frontends close, dom0 removes them). After each, the
// goroutines and open fds of the process go back to what the worker had
// before the Manager ran, as the lab's soak-goroutines-baseline and
// soak-fds-baseline checks require: the worker publishes its first stats
// sample before Run has started anything, so whatever Run keeps for the
// driver's lifetime beyond the caller's goroutine would count as a leak.
// blkback runs with each engine: io_uring (an O_DIRECT file, here) and the
// worker pool (a file on tmpfs, as the lab's /run/soak).
func TestWorkerTeardownBackToBaseline(t *testing.T) {
	for _, engine := range []string{blkback.EngineURing, blkback.EnginePool} {
		t.Run(engine, func(t *testing.T) { testWorkerTeardown(t, engine) })
	}
}

func testWorkerTeardown(t *testing.T, engine string) {
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
	ns := testnet.NewRunner(t) // skips when not root
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	const dd = 1
	// As buildDrivers, with the simulator's grant mappers (one per
	// backend) in place of /dev/xen/gntdev.
	host, dom0, ddom, drivers := simDriverDomain(t, dd, nshost.Host{R: ns}, engine, log)
	store := ddom.Xenstore()
	defer store.Close()
	const bridge = "xenbr9"
	brIP := net.IPv4(169, 254, 9, 1).To4()
	ns.Do(func() {
		if err := netback.EnsureBridge(bridge, ""); err != nil {
			t.Errorf("bridge: %v", err)
			return
		}
		br, err := netlink.LinkByName(bridge)
		if err == nil {
			addr, _ := netlink.ParseAddr("169.254.9.1/24")
			err = netlink.AddrAdd(br, addr)
		}
		if err != nil {
			t.Errorf("bridge address: %v", err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	// Made once, at their first use, by what is not the worker: the Go
	// poller's fds (epoll and its wake-up eventfd, at the first pollable
	// file, which a TAP would otherwise be) and the simulator's physical
	// memory (a memfd, at the first grant).
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	if sh, err := host.Domain(0).Sharer().Share(dd, 1, true); err != nil {
		t.Fatal(err)
	} else {
		sh.Close()
	}

	// The worker: the stats publisher, then Run on the worker's own
	// goroutine (main there, runner here). The baseline is taken before
	// Run starts, as the worker's first published sample was in the lab.
	mctx, stopManager := context.WithCancel(ctx)
	statsKey := fmt.Sprintf("/local/domain/%d/%sworker", dd, StatsKeyPrefix)
	statsDone := make(chan struct{})
	go func() { // owned here: stopManager ends it, waited for below
		defer close(statsDone)
		publishProcStats(mctx, store, statsKey, 20*time.Millisecond, log)
	}()
	m := xenbus.NewManager(store, dd, log, drivers...)
	m.RemoveNodes = true
	m.RemoveGrace = 2 * time.Second
	m.ProbeWait = 30 * time.Second
	startRun := make(chan struct{})
	runDone := make(chan error, 1)
	go func() { // owned here: stopManager ends Run, waited for below
		<-startRun
		runDone <- m.Run(mctx)
	}()
	defer func() {
		stopManager()
		if err := <-runDone; err != nil {
			t.Errorf("manager: %v", err)
		}
		<-statsDone
	}()
	waitStats(t, ctx, dom0, statsKey)
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)
	t.Logf("baseline before Run: %d goroutines, %d fds", baseG, baseFD)
	close(startRun)

	// Guest 2: vbd and vif, I/O, then destroyed.
	g2 := attachGuest(t, ctx, host, dom0, ns, dd, 2, bridge)
	g2.io(t, ctx, ns, bridge, brIP)
	if n := runtime.NumGoroutine(); n <= baseG {
		t.Fatalf("serving a vbd and a vif with %d goroutines, no more than the baseline %d", n, baseG)
	} else {
		t.Logf("serving guest 2: %d goroutines, %d fds", n, openFDs(t))
	}
	host.Destroy(2) // as xl destroy: the frontends never close
	for _, p := range []string{g2.disk.FrontPath(), g2.nic.FrontPath()} {
		if err := dom0.Rm(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{g2.disk.BackPath(), g2.nic.BackPath()} {
		if err := dom0.Transaction(ctx, func(tx *xenstore.Tx) error {
			if err := tx.Write(ctx, b+"/online", "0"); err != nil {
				return err
			}
			return tx.Write(ctx, b+"/state", strconv.Itoa(int(xenbus.Closing)))
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitGone(t, ctx, dom0, g2.disk.BackPath(), g2.nic.BackPath())
	if err := dom0.Rm(ctx, "/local/domain/2"); err != nil {
		t.Fatal(err)
	}
	// The dead guest's frontend objects: their handles are closed already
	// and Close's xenstore writes fail; it stops their receivers.
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	g2.bf.Close(cctx)
	g2.nf.Close(cctx)
	ccancel()
	g2.closeHandles()
	checkBaseline(t, "guest destroyed", host, dd, baseG, baseFD)

	// Guest 3: vbd and vif, I/O, then detached cleanly.
	g3 := attachGuest(t, ctx, host, dom0, ns, dd, 3, bridge)
	g3.io(t, ctx, ns, bridge, brIP)
	if err := blkfront.RemoveDisk(ctx, dom0, g3.disk); err != nil {
		t.Fatal(err)
	}
	if err := netfront.RemoveNic(ctx, dom0, g3.nic); err != nil {
		t.Fatal(err)
	}
	if err := g3.bf.Close(ctx); err != nil {
		t.Fatalf("blkfront close: %v", err)
	}
	if err := g3.nf.Close(ctx); err != nil {
		t.Fatalf("netfront close: %v", err)
	}
	// dom0's libxl saw Closed: it removes the frontends; the driver
	// domain removes its backend directories.
	for _, p := range []string{g3.disk.FrontPath(), g3.nic.FrontPath()} {
		if err := dom0.Rm(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	waitGone(t, ctx, dom0, g3.disk.BackPath(), g3.nic.BackPath())
	g3.closeHandles()
	host.Destroy(3)
	if err := dom0.Rm(ctx, "/local/domain/3"); err != nil {
		t.Fatal(err)
	}
	checkBaseline(t, "devices detached", host, dd, baseG, baseFD)
	if n := m.Devices(); n != 0 {
		t.Errorf("manager still runs %d devices", n)
	}
	// What dom0's soak reads: the published figures are the baseline too.
	var last string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		v, err := dom0.Read(ctx, statsKey)
		var s ProcStats
		if err == nil && json.Unmarshal([]byte(v), &s) == nil && s.Goroutines == baseG && s.FDs == baseFD {
			break
		}
		last = v
		if time.Now().After(deadline) {
			t.Fatalf("published stats %s, want %d goroutines and %d fds", last, baseG, baseFD)
		}
	}
}

// guest is one simulated guest with a disk and a NIC.
type guest struct {
	id     uint16
	store  *xenstore.Client
	blkEvh evtchn.Handle
	disk   blkfront.Disk
	nic    netfront.Nic
	bf     *blkfront.Front
	nf     *netfront.Front
	ip     net.IP
	mac    net.HardwareAddr
}

func attachGuest(t *testing.T, ctx context.Context, host *xensim.Host, dom0 *xenstore.Client, ns *testnet.Runner,
	dd, id uint16, bridge string) *guest {
	t.Helper()
	gd := host.NewDomain(id)
	g := &guest{id: id, store: gd.Xenstore(), blkEvh: gd.Evtchn(), ip: net.IPv4(169, 254, 9, byte(id)).To4()}
	g.mac = net.HardwareAddr{0x00, 0x16, 0x3e, 0, 0, byte(id)}
	img := t.TempDir() + "/disk.img"
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	g.disk = blkfront.Disk{BackDom: dd, FrontDom: id, DevID: 51712, Params: img}
	if err := blkfront.AddDisk(ctx, dom0, g.disk); err != nil {
		t.Fatal(err)
	}
	var err error
	g.bf, err = blkfront.Attach(ctx, g.store, gd.Sharer(), g.blkEvh, g.disk.FrontPath(),
		blkfront.Config{Protocol: blkback.ProtoX86_64, Persistent: true, Queues: 2, RingPageOrder: 1})
	if err != nil {
		t.Fatalf("guest %d blkfront: %v", id, err)
	}
	g.nic = netfront.Nic{BackDom: dd, FrontDom: id, DevID: 0, MAC: g.mac.String(), Bridge: bridge}
	if err := netfront.AddNic(ctx, dom0, g.nic); err != nil {
		t.Fatal(err)
	}
	g.nf, err = netfront.Attach(ctx, g.store, gd.Sharer(), gd.Evtchn(), g.nic.FrontPath(), netfront.Config{Split: true, Queues: 1})
	if err != nil {
		t.Fatalf("guest %d netfront: %v", id, err)
	}
	ns.Do(func() {
		br, err := netlink.LinkByName(bridge)
		if err == nil {
			err = netlink.NeighSet(&netlink.Neigh{LinkIndex: br.Attrs().Index, State: netlink.NUD_PERMANENT,
				IP: g.ip, HardwareAddr: g.mac})
		}
		if err != nil {
			t.Errorf("guest %d neighbour: %v", id, err)
		}
	})
	ns.WaitOperUp(t, netback.TapName(id, 0))
	return g
}

// io writes and reads the disk (direct and indirect, both rings) and sends
// a UDP datagram each way between the guest and a host socket on the
// bridge.
func (g *guest) io(t *testing.T, ctx context.Context, ns *testnet.Runner, bridge string, brIP net.IP) {
	t.Helper()
	for i, n := range []int{4096, 256 << 10} {
		data := bytes.Repeat([]byte{byte(g.id), byte(i), 0x5a, 0xa5}, n/4)
		got := make([]byte, n)
		q := i % g.bf.Queues()
		if err := g.bf.Write(ctx, q, uint64(i)*2048, data); err != nil {
			t.Fatalf("guest %d write: %v", g.id, err)
		}
		if err := g.bf.Read(ctx, q, uint64(i)*2048, got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("guest %d read back: %v (equal %v)", g.id, err, bytes.Equal(got, data))
		}
	}
	var conn *net.UDPConn
	var brMAC net.HardwareAddr
	var err error
	ns.Do(func() {
		// A bridge takes the lowest address of its ports: look it up now.
		br, lerr := netlink.LinkByName(bridge)
		if lerr != nil {
			err = lerr
			return
		}
		brMAC = br.Attrs().HardwareAddr
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: brIP, Port: 5001})
	})
	if err != nil {
		t.Fatalf("host socket: %v", err)
	}
	defer conn.Close()
	payload := []byte(fmt.Sprintf("from guest %d", g.id))
	if err := g.nf.Send(ctx, 0, netfront.Packet{Frame: udpFrame(g.mac, brMAC, g.ip, brIP, 4000, 5001, payload)}, 0); err != nil {
		t.Fatalf("guest %d send: %v", g.id, err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := conn.ReadFromUDP(buf)
	if err != nil || !bytes.Equal(buf[:n], payload) || !from.IP.Equal(g.ip) {
		t.Fatalf("host socket: %q from %v, %v", buf[:n], from, err)
	}
	back := []byte(fmt.Sprintf("to guest %d", g.id))
	if _, err := conn.WriteToUDP(back, &net.UDPAddr{IP: g.ip, Port: 4000}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case p := <-g.nf.RecvChan(0):
			if len(p.Frame) > 42 && binary.BigEndian.Uint16(p.Frame[12:]) == 0x0800 && p.Frame[23] == 17 &&
				bytes.Equal(p.Frame[42:], back) {
				return
			}
		case <-deadline:
			t.Fatalf("guest %d got no datagram from the host", g.id)
		}
	}
}

// closeHandles closes what the test opened for the guest and its
// frontends do not own.
func (g *guest) closeHandles() {
	g.blkEvh.Close()
	g.store.Close()
}

// udpFrame is an Ethernet/IPv4/UDP frame without a UDP checksum (0 is
// valid for IPv4).
func udpFrame(src, dst net.HardwareAddr, sip, dip net.IP, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8], ip[9] = 64, 17
	copy(ip[12:16], sip.To4())
	copy(ip[16:20], dip.To4())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(f[42:], payload)
	return f
}

func waitStats(t *testing.T, ctx context.Context, store *xenstore.Client, key string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := store.Read(ctx, key); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stats at %s", key)
		}
	}
}

// waitGone waits until the driver domain removed the backend directories.
func waitGone(t *testing.T, ctx context.Context, store *xenstore.Client, paths ...string) {
	t.Helper()
	for _, p := range paths {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, err := store.Directory(ctx, p); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("backend %s still there", p)
			}
		}
	}
}

// checkBaseline polls until the process has base goroutines and fds again
// and nothing of the driver domain is mapped or bound; on failure it dumps
// every goroutine's stack, naming what stayed.
func checkBaseline(t *testing.T, phase string, host *xensim.Host, dd uint16, baseG, baseFD int) {
	t.Helper()
	var g, fds, mapped, bound int
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		g, fds = runtime.NumGoroutine(), openFDs(t)
		mapped, bound = host.Grants.Mapped(dd), host.Events.BoundPorts(dd)
		if g == baseG && fds == baseFD && mapped == 0 && bound == 0 {
			t.Logf("%s: back to %d goroutines, %d fds", phase, g, fds)
			return
		}
		if time.Now().After(deadline) {
			break
		}
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	t.Errorf("%s: %d goroutines (baseline %d), %d fds (baseline %d), %d pages mapped, %d ports bound; goroutines:\n%s",
		phase, g, baseG, fds, baseFD, mapped, bound, buf)
	if fds != baseFD {
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, e := range ents {
			l, _ := os.Readlink("/proc/self/fd/" + e.Name())
			t.Logf("fd %s -> %s", e.Name(), l)
		}
	}
}

// openFDs counts the process's open files: the fewest of a few reads of
// /proc/self/fd a few milliseconds apart. A single read can count a file
// that is open only for a moment, such as the stats publisher's own read
// of /proc/self (every 20 ms here): a baseline inflated by one would never
// match the publisher's figures again (CI saw 11 published against a
// baseline of 12).
func openFDs(t *testing.T) int {
	t.Helper()
	least := -1
	for i := range 5 {
		if i > 0 {
			time.Sleep(3 * time.Millisecond)
		}
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		n := len(ents) - 1 // the directory's own fd while it was read
		if least < 0 || n < least {
			least = n
		}
	}
	return least
}
