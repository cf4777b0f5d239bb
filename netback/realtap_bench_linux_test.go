//go:build linux

package netback_test

import (
	"net"
	"testing"
	"time"

	"drvdom/internal/testnet"
	"drvdom/internal/testnet/nshost"
	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
)

// BenchmarkRealTapRxSparse: host datagrams to the guest one at a time
// (each sent when the guest got the previous one), through a real TAP on
// a real bridge: the pattern of TCP ACKs on the way back to a sending
// guest. Run it under `strace -f -c -e trace=read` to count the TAP reads
// per packet.
func BenchmarkRealTapRxSparse(b *testing.B) {
	r := testnet.NewRunner(b)
	e := newEnv(b, func(d *netback.Driver) { d.Host = nshost.Host{R: r} })
	v := e.attach(b, 2, 0, netfront.Nic{Bridge: "xenbr6"}, netfront.Config{Split: true})
	r.WaitOperUp(b, "vif2.0")
	guestIP := net.IPv4(169, 254, 9, 2).To4()
	hostBridge(b, r, "vif2.0", "xenbr6")
	conn := hostUDP(b, r, 5002)
	payload := make([]byte, 64)
	dst := &net.UDPAddr{IP: guestIP, Port: 9}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := conn.WriteToUDP(payload, dst); err != nil {
			b.Fatal(err)
		}
		for got := false; !got; {
			select {
			case p := <-v.f.RecvChan(0):
				got = len(p.Frame) >= 14+20+8+len(payload) && p.Frame[14+9] == protoUDPNum
			case <-time.After(5 * time.Second):
				b.Fatal("the guest got nothing")
			}
		}
	}
}
