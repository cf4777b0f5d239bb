//go:build linux

package netback_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"drvdom/internal/testnet"
	"drvdom/internal/testnet/nshost"
	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
)

// TestRealTapBackend runs the whole backend against a real TAP on a real
// bridge in a private network namespace, with the simulated netfront as the
// guest: a guest UDP datagram with a blank checksum reaches a host socket,
// a host datagram reaches the guest, and a 30 kB TCP GSO packet from the
// guest is accepted by the kernel (which answers it with a RST, as nothing
// listens).
func TestRealTapBackend(t *testing.T) {
	r := testnet.NewRunner(t)
	e := newEnv(t, func(d *netback.Driver) { d.Host = nshost.Host{R: r} })
	v := e.attach(t, 2, 0, netfront.Nic{Bridge: "xenbr5"}, netfront.Config{Queues: 2, Split: true})
	ctx := ctxT(t)
	r.WaitOperUp(t, "vif2.0")
	guestIP := net.IPv4(169, 254, 9, 2).To4()
	brMAC := hostBridge(t, r, "vif2.0", "xenbr5")
	conn := hostUDP(t, r, 5001)

	// Guest -> host, checksum left blank.
	fr := netback.BuildFrame(netback.FrameOpts{UDP: true, Payload: 300, PartialSum: true, Dst: brMAC, Seed: 5})
	if err := v.f.Send(ctx, 1, netfront.Packet{Frame: fr, Flags: netback.TxCsumBlank | netback.TxDataValidated}, 0); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	n, from, err := conn.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("host socket got nothing: %v", err)
	}
	if n != 300 || !bytes.Equal(buf[:n], fr[14+20+8:]) || !from.IP.Equal(guestIP) {
		t.Fatalf("host got %d bytes from %v", n, from)
	}

	// Host -> guest.
	payload := bytes.Repeat([]byte("drvdom"), 200)
	if _, err := conn.WriteToUDP(payload, &net.UDPAddr{IP: guestIP, Port: 7}); err != nil {
		t.Fatal(err)
	}
	p := waitGuestIPv4(t, v.f, 2, protoUDPNum)
	if !bytes.Equal(p.Frame[14+20+8:], payload) {
		t.Fatalf("guest got %d-byte UDP frame with other data", len(p.Frame))
	}
	if p.Flags&netback.RxCsumBlank != 0 {
		netback.CompleteCsum(p.Frame, 34, 6)
	}
	if !netback.L4CsumOK(p.Frame) {
		t.Fatalf("guest UDP frame checksum wrong (flags %#x)", p.Flags)
	}

	// Guest TSO: a 30 kB TCP GSO packet to a closed port gets a RST back.
	big := netback.BuildFrame(netback.FrameOpts{Payload: 30000, PartialSum: true, Dst: brMAC, Seed: 6})
	if err := v.f.Send(ctx, 0, netfront.Packet{Frame: big, Flags: netback.TxCsumBlank,
		GSOType: netback.GSOTypeTCPv4, GSOSize: 1448}, 0); err != nil {
		t.Fatal(err)
	}
	rst := waitGuestIPv4(t, v.f, 2, protoTCPNum)
	if rst.Frame[14+20+13]&0x04 == 0 {
		t.Fatalf("kernel answered the GSO packet with TCP flags %#x, want RST", rst.Frame[14+20+13])
	}
	e.drvStats(t, v, func(s netback.Stats) bool { return s.TxPackets == 2 && s.TxErrors+s.TxDropped == 0 })
}

// hostBridge readies the host side of a real-TAP test in r's network
// namespace: vif must be a port of bridge, which gets 169.254.9.1/24 and a
// permanent neighbour entry for the guest (169.254.9.2 at TestGuestMAC),
// so the host reaches the guest without ARP through the simulated
// netfront. It returns the bridge's MAC (a guest frame's destination).
func hostBridge(tb testing.TB, r *testnet.Runner, vif, bridge string) (brMAC [6]byte) {
	tb.Helper()
	var err error
	r.Do(func() {
		br, e1 := netlink.LinkByName(bridge)
		tap, e2 := netlink.LinkByName(vif)
		if e1 != nil || e2 != nil {
			err = errorsJoin(e1, e2)
			return
		}
		if tap.Attrs().MasterIndex != br.Attrs().Index {
			err = fmt.Errorf("%s not enslaved to %s", vif, bridge)
			return
		}
		addr, _ := netlink.ParseAddr("169.254.9.1/24")
		if err = netlink.AddrAdd(br, addr); err != nil {
			return
		}
		if err = netlink.NeighAdd(&netlink.Neigh{LinkIndex: br.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.IPv4(169, 254, 9, 2), HardwareAddr: net.HardwareAddr(netback.TestGuestMAC[:])}); err != nil {
			return
		}
		br, _ = netlink.LinkByName(bridge)
		copy(brMAC[:], br.Attrs().HardwareAddr)
	})
	if err != nil {
		tb.Fatalf("netns setup: %v", err)
	}
	return brMAC
}

// hostUDP is a UDP socket on 169.254.9.1:port in r's network namespace,
// closed when the test ends.
func hostUDP(tb testing.TB, r *testnet.Runner, port int) *net.UDPConn {
	tb.Helper()
	var conn *net.UDPConn
	var err error
	r.Do(func() { conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(169, 254, 9, 1), Port: port}) })
	if err != nil {
		tb.Fatalf("host socket: %v", err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

const (
	protoUDPNum = 17
	protoTCPNum = 6
)

// waitGuestIPv4 returns the next IPv4 frame of protocol proto received on
// any of the guest's queues, skipping the kernel's other chatter.
func waitGuestIPv4(t *testing.T, f *netfront.Front, queues int, proto byte) netfront.Packet {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		for q := 0; q < queues; q++ {
			select {
			case p := <-f.RecvChan(q):
				if len(p.Frame) > 34 && binary.BigEndian.Uint16(p.Frame[12:]) == 0x0800 && p.Frame[14+9] == proto {
					return p
				}
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatalf("guest got no IPv4 protocol %d frame", proto)
		case <-time.After(time.Millisecond):
		}
	}
}

// TestRealTapBackendTSOToGuest: a host TCP socket connects to the guest
// (the test answers the handshake through the simulated netfront) and
// writes; the kernel hands the TAP TSO super-packets, which reach the guest
// as one multi-slot packet with a GSO extra-info and a blank checksum.
func TestRealTapBackendTSOToGuest(t *testing.T) {
	r := testnet.NewRunner(t)
	e := newEnv(t, func(d *netback.Driver) { d.Host = nshost.Host{R: r} })
	v := e.attach(t, 2, 0, netfront.Nic{Bridge: "xenbr6"}, netfront.Config{})
	ctx := ctxT(t)
	r.WaitOperUp(t, "vif2.0")
	guestIP := net.IPv4(169, 254, 9, 2).To4()
	hostIP := net.IPv4(169, 254, 9, 1).To4()
	brMAC := hostBridge(t, r, "vif2.0", "xenbr6")
	dialed := make(chan error, 1)
	go r.Do(func() { // the socket must be made in the namespace
		c, err := net.DialTimeout("tcp4", "169.254.9.2:80", 5*time.Second)
		if err != nil {
			dialed <- err
			return
		}
		go func() {
			defer c.Close()
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.Write(make([]byte, 256<<10)) // blocks on the window; the deadline ends it
		}()
		dialed <- nil
	})
	syn := waitGuestIPv4(t, v.f, 1, protoTCPNum)
	tcp := syn.Frame[34:]
	if tcp[13]&0x02 == 0 {
		t.Fatalf("first TCP segment has flags %#x, want SYN", tcp[13])
	}
	sport := binary.BigEndian.Uint16(tcp[0:])
	seq := binary.BigEndian.Uint32(tcp[4:])
	synack := tcpSegment(netback.TestGuestMAC, brMAC, guestIP, hostIP, 80, sport, 1000, seq+1, 0x12)
	if err := v.f.Send(ctx, 0, netfront.Packet{Frame: synack, Flags: netback.TxCsumBlank | netback.TxDataValidated}, 0); err != nil {
		t.Fatal(err)
	}
	if err := <-dialed; err != nil {
		t.Fatalf("host could not connect to the guest: %v", err)
	}
	deadline := time.After(5 * time.Second)
	for {
		var p netfront.Packet
		select {
		case p = <-v.f.RecvChan(0):
		case <-deadline:
			t.Fatal("no TSO packet reached the guest")
		}
		if len(p.Frame) < 54 || binary.BigEndian.Uint16(p.Frame[12:]) != 0x0800 || p.Frame[23] != protoTCPNum {
			continue
		}
		if len(p.Frame) <= 1514 {
			continue // the handshake's ACK, a first small segment
		}
		if p.GSOType != netback.GSOTypeTCPv4 || p.GSOSize == 0 || p.GSOSize > 1460 || p.Flags&netback.RxExtraInfo == 0 ||
			p.Flags&netback.RxCsumBlank == 0 {
			t.Fatalf("%d-byte segment: gso %d/%d, flags %#x", len(p.Frame), p.GSOType, p.GSOSize, p.Flags)
		}
		if pay := len(p.Frame) - 54; pay <= int(p.GSOSize) {
			t.Fatalf("GSO packet of %d payload bytes with gso_size %d", pay, p.GSOSize)
		}
		return
	}
}

// tcpSegment builds a TCP segment (no payload, MSS option 1460) with its
// checksum left as the pseudo-header sum (csum_blank).
func tcpSegment(src, dst [6]byte, sip, dip net.IP, sport, dport uint16, seq, ack uint32, flags byte) []byte {
	f := make([]byte, 14+20+24)
	copy(f[0:], dst[:])
	copy(f[6:], src[:])
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 20+24)
	ip[6] = 0x40
	ip[8] = 64
	ip[9] = protoTCPNum
	copy(ip[12:], sip.To4())
	copy(ip[16:], dip.To4())
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	tcp := f[34:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = 6 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	tcp[20], tcp[21] = 2, 4 // MSS
	binary.BigEndian.PutUint16(tcp[22:], 1460)
	// Pseudo-header sum, not complemented: what csum_blank leaves.
	var sum uint32
	for i := 0; i < 8; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[12+i:]))
	}
	sum += protoTCPNum + uint32(len(tcp))
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(tcp[16:], uint16(sum))
	return f
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
