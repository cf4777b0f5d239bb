//go:build linux

package netback

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"drvdom/internal/testnet"
)

// TestTunABI pins the /dev/net/tun numbers to the Linux uapi values.
func TestTunABI(t *testing.T) {
	pins := []struct {
		name      string
		got, want uint64
	}{
		{"TUNSETIFF", tunSetIff, unix.TUNSETIFF},
		{"TUNSETOFFLOAD", tunSetOffload, unix.TUNSETOFFLOAD},
		{"TUNSETVNETHDRSZ", tunSetVnetHdrSz, unix.TUNSETVNETHDRSZ},
		{"TUNSETVNETLE", tunSetVnetLE, unix.TUNSETVNETLE},
		{"TUNSETCARRIER", tunSetCarrier, unix.TUNSETCARRIER},
		{"TUNGETIFF", tunGetIff, unix.TUNGETIFF},
		{"IFF_TAP", iffTap, unix.IFF_TAP},
		{"IFF_NO_PI", iffNoPI, unix.IFF_NO_PI},
		{"IFF_VNET_HDR", iffVnetHdr, unix.IFF_VNET_HDR},
		{"IFF_MULTI_QUEUE", iffMultiQueue, unix.IFF_MULTI_QUEUE},
		{"IFF_TUN_EXCL", iffTunExcl, unix.IFF_TUN_EXCL},
		{"TUN_F_CSUM", uint64(TunFCsum), unix.TUN_F_CSUM},
		{"TUN_F_TSO4", uint64(TunFTSO4), unix.TUN_F_TSO4},
		{"TUN_F_TSO6", uint64(TunFTSO6), unix.TUN_F_TSO6},
		{"TUN_F_TSO_ECN", uint64(TunFTSOECN), unix.TUN_F_TSO_ECN},
		{"TUN_F_UFO", uint64(TunFUFO), unix.TUN_F_UFO},
		{"IFNAMSIZ", ifNameSize, unix.IFNAMSIZ},
		{"sizeof(struct ifreq)", ifreqSize, 40},
		{"ifreq.ifr_flags", offIfreqFlags, unix.IFNAMSIZ},
	}
	for _, p := range pins {
		if p.got != p.want {
			t.Errorf("%s = %#x, want %#x", p.name, p.got, p.want)
		}
	}
	if TunFCsum != 1 || tunSetIff != 0x400454ca {
		t.Error("literal uapi values changed")
	}
}

// inNetns runs fn in a fresh network namespace (testnet.Run) where it can
// create TAP devices.
func inNetns(t *testing.T, fn func()) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
	testnet.Run(t, fn)
}

// TestRealTap creates a real multi-queue TAP with a virtio-net header in a
// private network namespace, bridges it, and passes frames both ways
// through the kernel: a UDP datagram with a blank checksum (NEEDS_CSUM)
// written to the TAP reaches a socket; a datagram sent by a socket comes
// out of the TAP with a partial checksum once TUN_F_CSUM is on.
func TestRealTap(t *testing.T) {
	inNetns(t, func() {
		tap, err := LinuxHost{}.CreateTap("vif9.0", "xenbr9")
		if err != nil {
			t.Errorf("create tap: %v", err)
			return
		}
		defer tap.Close()
		link, err := netlink.LinkByName("vif9.0")
		if err != nil {
			t.Errorf("tap link: %v", err)
			return
		}
		br, err := netlink.LinkByName("xenbr9")
		if err != nil {
			t.Errorf("bridge: %v", err)
			return
		}
		if link.Attrs().MasterIndex != br.Attrs().Index || link.Attrs().HardwareAddr.String() != vifMAC || link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("tap attrs: master %d (bridge %d), mac %s, flags %v", link.Attrs().MasterIndex, br.Attrs().Index, link.Attrs().HardwareAddr, link.Attrs().Flags)
		}
		if link.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			t.Errorf("new tap has carrier before a guest connected (flags %#x)", link.Attrs().RawFlags)
		}
		if err := tap.SetCarrier(true); err != nil {
			t.Errorf("carrier on: %v", err)
			return
		}
		if l, _ := netlink.LinkByName("vif9.0"); l == nil || l.Attrs().RawFlags&unix.IFF_LOWER_UP == 0 {
			t.Errorf("carrier on did not raise IFF_LOWER_UP")
		}
		if _, err := (LinuxHost{}).CreateTap("vif9.0", "xenbr9"); err == nil {
			t.Error("a second TAP of the same name was created (it would share the first one's queues)")
		}
		if err := tap.SetQueues(2); err != nil {
			t.Errorf("2 queues: %v", err)
			return
		}
		if err := tap.SetOffload(TunFCsum | TunFTSO4 | TunFTSO6); err != nil {
			t.Errorf("offload: %v", err)
			return
		}
		brMAC, conn, ok := hostEnd(t, br)
		if !ok {
			return
		}
		defer conn.Close()

		// Guest -> host: partial checksum, as a csum_blank tx packet.
		f := BuildFrame(FrameOpts{UDP: true, Payload: 64, PartialSum: true, Dst: brMAC, Seed: 3})
		h, err := txVnetHdr(f, TxCsumBlank, nil)
		if err != nil {
			t.Errorf("vnet: %v", err)
			return
		}
		pkt := make([]byte, VnetHdrSize+len(f))
		h.Encode(pkt)
		copy(pkt[VnetHdrSize:], f)
		if _, err := tap.Queue(1).Write(pkt); err != nil {
			t.Errorf("tap write: %v", err)
			return
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			t.Errorf("socket did not get the guest's datagram: %v", err)
			return
		}
		if n != 64 || from.Port != 40000 || buf[0] != 3+8*7 {
			t.Errorf("got %d bytes from %v", n, from)
		}

		// Host -> guest.
		if _, err := conn.WriteToUDP(make([]byte, 100), &net.UDPAddr{IP: net.IP(testIP4Src[:]), Port: 7}); err != nil {
			t.Errorf("send: %v", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rb := make([]byte, 70000)
		for {
			got := false
			for q := 0; q < 2 && !got; q++ {
				qctx, qc := context.WithTimeout(ctx, 200*time.Millisecond)
				n, err := tap.Queue(q).Read(qctx, rb)
				qc()
				if err != nil {
					if ctx.Err() != nil {
						t.Errorf("no frame from the host: %v", err)
						return
					}
					continue
				}
				fr := rb[VnetHdrSize:n]
				if binary.BigEndian.Uint16(fr[12:]) != etherTypeIPv4 || fr[14+9] != protoUDP {
					continue // IPv6 router solicitations and such
				}
				hv := DecodeVnetHdr(rb)
				if hv.Flags&VnetFNeedsCsum != 0 {
					CompleteCsum(fr, int(hv.CsumStart), int(hv.CsumOffset))
				}
				if !L4CsumOK(fr) || len(fr) != 14+20+8+100 {
					t.Errorf("host frame: %d bytes, vnet %+v, checksum ok %v", len(fr), hv, L4CsumOK(fr))
				}
				got = true
			}
			if got {
				break
			}
		}
		// Reading is interruptible by its context.
		rctx, rc := context.WithCancel(context.Background())
		go func() { time.Sleep(50 * time.Millisecond); rc() }()
		for {
			if _, err := tap.Queue(0).Read(rctx, rb); err != nil {
				if err != context.Canceled {
					t.Errorf("interrupted read: %v", err)
				}
				break
			}
		}
		if err := tap.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if _, err := tap.Queue(0).Read(context.Background(), rb); !errors.Is(err, ErrTapClosed) {
			t.Errorf("read of a closed TAP: %v, want ErrTapClosed", err)
		}
		if _, err := netlink.LinkByName("vif9.0"); err == nil {
			t.Error("tap still exists after Close")
		}
		if err := EnsureBridge("xenbr9", "lo"); err == nil {
			t.Error("enslaving lo to a bridge should fail")
		}
	})
}

// hostEnd makes br the host's end of the test's guest link: it has
// testIP4Dst, a UDP socket listens there on port 5001, and the guest's
// address resolves to TestGuestMAC. It waits until the bridge is up (the
// kernel's link watch takes up to a second to see a port's new carrier,
// and the bridge forwards nothing from it before) and returns the
// bridge's MAC and the socket.
func hostEnd(t *testing.T, br netlink.Link) (brMAC [6]byte, conn *net.UDPConn, ok bool) {
	t.Helper()
	addr, _ := netlink.ParseAddr("169.254.9.1/24")
	if err := netlink.AddrAdd(br, addr); err != nil {
		t.Errorf("addr: %v", err)
		return brMAC, nil, false
	}
	lo, _ := netlink.LinkByName("lo")
	netlink.LinkSetUp(lo)
	if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: br.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: net.IP(testIP4Src[:]), HardwareAddr: net.HardwareAddr(TestGuestMAC[:])}); err != nil {
		t.Errorf("neigh: %v", err)
		return brMAC, nil, false
	}
	name := br.Attrs().Name
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		l, err := netlink.LinkByName(name)
		if err == nil && l.Attrs().OperState == netlink.OperUp {
			copy(brMAC[:], l.Attrs().HardwareAddr)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("bridge %s not up: %v", name, err)
			return brMAC, nil, false
		}
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IP(testIP4Dst[:]), Port: 5001})
	if err != nil {
		t.Errorf("listen: %v", err)
		return brMAC, nil, false
	}
	return brMAC, conn, true
}

// TestEnsureBridge creates a bridge with an uplink (a persistent TAP
// standing in for the passed-through NIC: it needs no module beyond tun),
// idempotently, and refuses a non-bridge or a missing uplink.
func TestEnsureBridge(t *testing.T) {
	inNetns(t, func() {
		if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "eth9"}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_DEFAULTS}); err != nil {
			t.Errorf("uplink: %v", err)
			return
		}
		for i := 0; i < 2; i++ {
			if err := EnsureBridge("xenbr0", "eth9"); err != nil {
				t.Errorf("EnsureBridge #%d: %v", i, err)
				return
			}
		}
		br, err := netlink.LinkByName("xenbr0")
		if err != nil || br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("bridge: %v %v", br, err)
			return
		}
		up, _ := netlink.LinkByName("eth9")
		if up.Attrs().MasterIndex != br.Attrs().Index || up.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("uplink master %d (bridge %d), flags %v", up.Attrs().MasterIndex, br.Attrs().Index, up.Attrs().Flags)
		}
		if err := EnsureBridge("eth9", ""); err == nil {
			t.Error("a NIC accepted as a bridge")
		}
		if err := EnsureBridge("xenbr1", "nope0"); err == nil {
			t.Error("a missing uplink accepted")
		}
	})
}

// memTapStore is a TapStore in this process: it keeps its own duplicate of
// every queue, as drvdomd's supervisor does in its own process.
type memTapStore struct {
	mu    sync.Mutex
	files map[string][]*os.File
}

func dupFile(f *os.File) *os.File {
	rc, err := f.SyscallConn()
	if err != nil {
		panic(err)
	}
	var nfd int
	var derr error
	rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if derr != nil {
		panic(derr)
	}
	return os.NewFile(uintptr(nfd), f.Name())
}

func (s *memTapStore) Take(name string) []*os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*os.File
	for _, f := range s.files[name] {
		out = append(out, dupFile(f))
	}
	return out
}

func (s *memTapStore) Keep(name string, q int, f *os.File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil {
		s.files = map[string][]*os.File{}
	}
	if q != len(s.files[name]) {
		panic(fmt.Sprintf("keep %s queue %d after %d queues", name, q, len(s.files[name])))
	}
	s.files[name] = append(s.files[name], dupFile(f))
}

func (s *memTapStore) Release(name string, from int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fs := s.files[name]
	for from < len(fs) {
		fs[len(fs)-1].Close()
		fs = fs[:len(fs)-1]
	}
	s.files[name] = fs
	if len(fs) == 0 {
		delete(s.files, name)
	}
}

func (s *memTapStore) queues(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.files[name])
}

// TestTapStoreSurvivesCrash: a worker that dies (its queue files closed,
// nothing released) leaves its TAP in the bridge with its carrier, the
// frames sent to it meanwhile queued; the next CreateTap of the name takes
// the stored queues back and reads those frames. Close then removes it.
func TestTapStoreSurvivesCrash(t *testing.T) {
	inNetns(t, func() {
		store := &memTapStore{}
		h := LinuxHost{Store: store}
		tap, err := h.CreateTap("vif9.0", "xenbr9")
		if err != nil {
			t.Errorf("create tap: %v", err)
			return
		}
		if err := tap.SetQueues(2); err != nil {
			t.Errorf("2 queues: %v", err)
			return
		}
		if err := tap.SetCarrier(true); err != nil {
			t.Errorf("carrier: %v", err)
			return
		}
		if n := store.queues("vif9.0"); n != 2 {
			t.Errorf("store holds %d queues, want 2", n)
		}
		br, _ := netlink.LinkByName("xenbr9")
		addr, _ := netlink.ParseAddr("169.254.9.1/24")
		netlink.AddrAdd(br, addr)
		netlink.NeighAdd(&netlink.Neigh{LinkIndex: br.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.IP(testIP4Src[:]), HardwareAddr: net.HardwareAddr(TestGuestMAC[:])})

		// The crash: the process's queues close, the store's stay.
		for _, q := range tap.(*linuxTap).queues {
			q.f.Close()
		}
		link, err := netlink.LinkByName("vif9.0")
		if err != nil {
			t.Errorf("TAP gone with the worker: %v", err)
			return
		}
		if link.Attrs().MasterIndex != br.Attrs().Index || link.Attrs().RawFlags&unix.IFF_LOWER_UP == 0 {
			t.Errorf("TAP after the crash: master %d (bridge %d), flags %#x", link.Attrs().MasterIndex, br.Attrs().Index, link.Attrs().RawFlags)
		}
		// Carrier changes reach the qdiscs through linkwatch, up to a
		// second late: until then the bridge and the TAP drop frames.
		for _, name := range []string{"xenbr9", "vif9.0"} {
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				if l, err := netlink.LinkByName(name); err == nil && l.Attrs().OperState == netlink.OperUp {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("%s never operationally up", name)
					return
				}
			}
		}
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IP(testIP4Dst[:])})
		if err != nil {
			t.Errorf("listen: %v", err)
			return
		}
		defer conn.Close()
		for i := 0; i < 3; i++ { // while no worker runs
			if _, err := conn.WriteToUDP(make([]byte, 100+i), &net.UDPAddr{IP: net.IP(testIP4Src[:]), Port: 7}); err != nil {
				t.Errorf("send: %v", err)
				return
			}
		}

		tap2, err := h.CreateTap("vif9.0", "xenbr9")
		if err != nil {
			t.Errorf("take the TAP back: %v", err)
			return
		}
		if err := tap2.SetQueues(2); err != nil {
			t.Errorf("2 queues again: %v", err)
		}
		if n := store.queues("vif9.0"); n != 2 {
			t.Errorf("store holds %d queues after the restart, want 2", n)
		}
		// The datagrams cross the bridge in softirq context: wait for them.
		got := map[int]bool{}
		rb := make([]byte, 70000)
		for deadline := time.Now().Add(5 * time.Second); len(got) < 3 && time.Now().Before(deadline); {
			for q := 0; q < 2; q++ {
				for {
					n, ok, err := tap2.Queue(q).(*linuxTapQueue).TryRead(rb)
					if err != nil || !ok {
						break
					}
					fr := rb[VnetHdrSize:n]
					if binary.BigEndian.Uint16(fr[12:]) == etherTypeIPv4 && fr[14+9] == protoUDP {
						got[len(fr)-14-20-8] = true
					}
				}
			}
			time.Sleep(time.Millisecond)
		}
		if len(got) != 3 || !got[100] || !got[101] || !got[102] {
			t.Errorf("datagrams sent while no worker ran, read after: %v, want 100, 101, 102 bytes", got)
		}
		if err := tap2.SetQueues(1); err != nil {
			t.Errorf("1 queue: %v", err)
		}
		if n := store.queues("vif9.0"); n != 1 {
			t.Errorf("store holds %d queues after SetQueues(1), want 1", n)
		}
		if err := tap2.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if _, err := netlink.LinkByName("vif9.0"); err == nil {
			t.Error("TAP still exists after Close")
		}
		if n := store.queues("vif9.0"); n != 0 {
			t.Errorf("store holds %d queues after Close", n)
		}

		// A stored file that is no queue of that name is dropped and a
		// new TAP made.
		other, err := h.CreateTap("vif9.1", "xenbr9")
		if err != nil {
			t.Errorf("create vif9.1: %v", err)
			return
		}
		defer other.Close()
		store.mu.Lock()
		store.files["vif9.0"] = []*os.File{dupFile(other.(*linuxTap).queues[0].f)}
		store.mu.Unlock()
		tap3, err := h.CreateTap("vif9.0", "xenbr9")
		if err != nil {
			t.Errorf("create after a bad stored entry: %v", err)
			return
		}
		defer tap3.Close()
		if got, _, err := tapIdentity(tap3.(*linuxTap).queues[0].f); err != nil || got != "vif9.0" {
			t.Errorf("new TAP is %q (%v), want vif9.0", got, err)
		}
	})
}

// connectedTap creates the TAP name on bridge xenbr9, with its carrier on,
// and the host's end of the link (hostEnd).
func connectedTap(t *testing.T, name string) (tap Tap, brMAC [6]byte, conn *net.UDPConn, ok bool) {
	t.Helper()
	tap, err := LinuxHost{}.CreateTap(name, "xenbr9")
	if err != nil {
		t.Errorf("create tap: %v", err)
		return nil, brMAC, nil, false
	}
	fail := func(format string, args ...any) (Tap, [6]byte, *net.UDPConn, bool) {
		t.Errorf(format, args...)
		tap.Close()
		return nil, brMAC, nil, false
	}
	if err := tap.SetCarrier(true); err != nil {
		return fail("carrier on: %v", err)
	}
	br, err := netlink.LinkByName("xenbr9")
	if err != nil {
		return fail("bridge: %v", err)
	}
	if brMAC, conn, ok = hostEnd(t, br); !ok {
		tap.Close()
		return nil, brMAC, nil, false
	}
	return tap, brMAC, conn, true
}

// TestRealTapWriteBatch sends 101 frames through a real TAP with one
// WriteBatch (two io_uring chunks): the 100 good ones reach a socket, in
// order, and the one the TAP refuses (shorter than an Ethernet header) is
// the only one with an error. After Close every frame reports the TAP
// closed.
func TestRealTapWriteBatch(t *testing.T) {
	inNetns(t, func() {
		tap, brMAC, conn, ok := connectedTap(t, "vif9.1")
		if !ok {
			return
		}
		defer tap.Close()
		defer conn.Close()

		const n, bad = 101, 50
		frames := make([][]byte, n)
		for i := range frames {
			if i == bad {
				frames[i] = make([]byte, VnetHdrSize+6) // no Ethernet header
				continue
			}
			f := BuildFrame(FrameOpts{UDP: true, Payload: 64, Dst: brMAC, Seed: byte(i)})
			h, err := txVnetHdr(f, 0, nil)
			if err != nil {
				t.Errorf("vnet: %v", err)
				return
			}
			frames[i] = make([]byte, VnetHdrSize+len(f))
			h.Encode(frames[i])
			copy(frames[i][VnetHdrSize:], f)
		}
		bw, ok := tap.Queue(0).(BatchWriter)
		if !ok {
			t.Error("the Linux TAP queue is not a BatchWriter")
			return
		}
		errs := make([]error, n)
		bw.WriteBatch(frames, errs)
		for i, err := range errs {
			if (err != nil) != (i == bad) {
				t.Errorf("frame %d: error %v", i, err)
			}
		}
		if !errors.Is(errs[bad], unix.EINVAL) {
			t.Errorf("short frame: %v, want EINVAL", errs[bad])
		}
		buf := make([]byte, 2048)
		for i := 0; i < n; i++ {
			if i == bad {
				continue
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			m, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				t.Errorf("datagram of frame %d: %v", i, err)
				return
			}
			if m != 64 || buf[0] != byte(i)+8*7 {
				t.Errorf("datagram %d bytes starting %d, want frame %d's", m, buf[0], i)
				return
			}
		}
		if a := testing.AllocsPerRun(5, func() { bw.WriteBatch(frames[:10], errs) }); a != 0 {
			t.Errorf("WriteBatch: %v allocs per batch, want 0", a)
		}
		if err := tap.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		bw.WriteBatch(frames[:3], errs)
		for i, err := range errs[:3] {
			if !errors.Is(err, ErrTapClosed) {
				t.Errorf("frame %d after Close: %v, want ErrTapClosed", i, err)
			}
		}
	})
}

// TestRealTapReadBatch: frames the host sends to the guest are read from a
// real TAP in batches through io_uring, in order; a batch's reads that
// found the queue empty leave nothing queued in the kernel (their buffers
// stay untouched when more frames come); reading allocates nothing, ends
// with its context, and reports ErrTapClosed after Close.
func TestRealTapReadBatch(t *testing.T) {
	inNetns(t, func() {
		// No IPv6 in the namespace: its solicitations would reach the
		// TAP at any time, and the test needs a queue that stays empty.
		for _, c := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+c+"/disable_ipv6", []byte("1"), 0); err != nil && !os.IsNotExist(err) {
				t.Errorf("disable IPv6: %v", err)
				return
			}
		}
		tap, _, conn, ok := connectedTap(t, "vif9.2")
		if !ok {
			return
		}
		defer tap.Close()
		defer conn.Close()
		q := tap.Queue(0).(*linuxTapQueue)
		send := func(seq byte) bool {
			p := make([]byte, 100)
			p[0] = seq
			if _, err := conn.WriteToUDP(p, &net.UDPAddr{IP: net.IP(testIP4Src[:]), Port: 7}); err != nil {
				t.Errorf("send %d: %v", seq, err)
				return false
			}
			return true
		}
		// seqOf is the sequence number of one of send's frames, -1 for
		// anything else (the bridge's IPv6 solicitations and such).
		seqOf := func(b []byte) int {
			fr := b[VnetHdrSize:]
			if len(fr) != 14+20+8+100 || binary.BigEndian.Uint16(fr[12:]) != etherTypeIPv4 || fr[14+9] != protoUDP {
				return -1
			}
			return int(fr[14+20+8])
		}
		bufs := make([][]byte, 16)
		for i := range bufs {
			bufs[i] = make([]byte, rxBufSize)
		}
		ns := make([]int, len(bufs))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()

		// Ten frames waiting: one batch reads them all, in order.
		for i := range 10 {
			if !send(byte(i)) {
				return
			}
		}
		var got []int
		for len(got) < 10 {
			k, err := q.ReadBatch(ctx, bufs, ns)
			if err != nil {
				t.Errorf("read batch: %v (frames so far %v)", err, got)
				return
			}
			var seqs []int
			for i := range k {
				if s := seqOf(bufs[i][:ns[i]]); s >= 0 {
					seqs = append(seqs, s)
				}
			}
			if len(seqs) > 0 && len(seqs) < 10 {
				t.Errorf("a batch read frames %v of the 10 waiting", seqs)
			}
			got = append(got, seqs...)
		}
		for i, s := range got {
			if s != i {
				t.Fatalf("frames read in the order %v", got)
			}
		}
		if q.rRing == nil {
			t.Fatalf("batched reads fell back to read(2): %v", q.rRingErr)
		}

		// Reads that found the queue empty are not left in the kernel: a
		// frame sent after the batch lands in none of its buffers. (The
		// bridge's IGMP reports may still come: a batch that reads one
		// is done again.)
		for {
			for _, b := range bufs {
				for j := range b[:200] {
					b[j] = 0xa5
				}
			}
			qc, qcancel := context.WithTimeout(ctx, 100*time.Millisecond)
			k, err := q.ReadBatch(qc, bufs, ns)
			qcancel()
			if errors.Is(err, context.DeadlineExceeded) {
				break
			}
			if err != nil {
				t.Errorf("read of an empty queue: %v, want the context's end", err)
				return
			}
			for i := range k {
				if s := seqOf(bufs[i][:ns[i]]); s >= 0 {
					t.Errorf("frame %d read twice", s)
				}
			}
		}
		if !send(42) {
			return
		}
		time.Sleep(100 * time.Millisecond)
		for i, b := range bufs {
			if b[VnetHdrSize] != 0xa5 {
				t.Errorf("buffer %d was written after its batch returned", i)
			}
		}
		k, err := q.ReadBatch(ctx, bufs, ns)
		found := false
		for i := range k {
			found = found || seqOf(bufs[i][:ns[i]]) == 42
		}
		if err != nil || !found {
			t.Errorf("frame after the empty batch: not among %d frames (%v)", k, err)
		}

		// Allocation-free with frames waiting: 6 runs of 3 frames.
		for i := range 18 {
			if !send(byte(i)) {
				return
			}
		}
		if a := testing.AllocsPerRun(5, func() { q.ReadBatch(ctx, bufs[:3], ns) }); a != 0 {
			t.Errorf("ReadBatch: %v allocs per batch, want 0", a)
		}

		// Without io_uring (refused by the kernel): read(2) per frame,
		// the same frames in the same order.
		q.rRing.Close()
		q.rRing, q.rRingErr = nil, unix.EOPNOTSUPP
		for i := range 5 {
			if !send(100 + byte(i)) {
				return
			}
		}
		got = got[:0]
		for len(got) < 5 {
			k, err := q.ReadBatch(ctx, bufs, ns)
			if err != nil {
				t.Errorf("read batch without io_uring: %v (frames so far %v)", err, got)
				return
			}
			for i := range k {
				if s := seqOf(bufs[i][:ns[i]]); s >= 100 {
					got = append(got, s)
				}
			}
		}
		if fmt.Sprint(got) != "[100 101 102 103 104]" {
			t.Errorf("frames read one by one in the order %v", got)
		}

		if err := tap.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if _, err := q.ReadBatch(ctx, bufs, ns); !errors.Is(err, ErrTapClosed) {
			t.Errorf("read batch after Close: %v, want ErrTapClosed", err)
		}
	})
}
