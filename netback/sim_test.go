package netback_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"drvdom/evtchn"
	"drvdom/internal/xensim"
	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

const ddID = 1

type env struct {
	t     testing.TB
	host  *xensim.Host
	dd    *xensim.Domain
	d0    *xenstore.Client
	mem   *netback.MemHost
	drv   *netback.Driver
	stop  func()
	close func()
}

func quietLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newEnv builds a host with dom0 and a driver domain running the vif
// Manager with netback over an in-memory host.
func newEnv(t testing.TB, tune func(*netback.Driver)) *env {
	t.Helper()
	host := xensim.New()
	dom0 := host.NewDomain(0)
	dd := host.NewDomain(ddID)
	e := &env{t: t, host: host, dd: dd, d0: dom0.Xenstore(), mem: netback.NewMemHost()}
	e.drv = &netback.Driver{
		Host:          e.mem,
		Mapper:        dd.Mapper(),
		Events:        func() (evtchn.Handle, error) { return dd.Evtchn(), nil },
		MaxQueues:     4,
		StatsInterval: 20 * time.Millisecond,
		Log:           quietLog(),
	}
	if tune != nil {
		tune(e.drv)
	}
	e.stop = e.startManager()
	e.close = sync.OnceFunc(func() {
		e.stop()
		e.d0.Close()
		host.Close()
	})
	t.Cleanup(e.close)
	return e
}

// startManager runs a vif Manager with e.drv in the driver domain, as one
// drvdomd process would; the returned func stops it (a clean shutdown or a
// crash: the manager leaves xenstore as it is).
func (e *env) startManager() func() {
	ddStore := e.dd.Xenstore()
	mgr := xenbus.NewManager(ddStore, ddID, quietLog(), e.drv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		mgr.Run(ctx)
	}()
	return sync.OnceFunc(func() {
		cancel()
		<-done
		ddStore.Close()
	})
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type vif struct {
	f    *netfront.Front
	nic  netfront.Nic
	tap  *netback.MemTap
	dom  *xensim.Domain
	gsto *xenstore.Client
}

func (e *env) attach(t testing.TB, guest uint16, devid uint32, nic netfront.Nic, cfg netfront.Config) *vif {
	t.Helper()
	ctx := ctxT(t)
	g := e.host.Domain(guest)
	if g == nil {
		g = e.host.NewDomain(guest)
	}
	nic.BackDom, nic.FrontDom, nic.DevID = ddID, guest, devid
	if nic.MAC == "" {
		nic.MAC = "00:16:3e:00:00:02"
	}
	if err := netfront.AddNic(ctx, e.d0, nic); err != nil {
		t.Fatal(err)
	}
	gs := g.Xenstore()
	t.Cleanup(func() { gs.Close() })
	f, err := netfront.Attach(ctx, gs, g.Sharer(), g.Evtchn(), nic.FrontPath(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		f.Close(ctx)
	})
	tap := e.mem.Tap(netback.TapName(guest, devid))
	if tap == nil && e.drv.Host == netback.Host(e.mem) {
		t.Fatalf("no tap %s", netback.TapName(guest, devid))
	}
	return &vif{f: f, nic: nic, tap: tap, dom: g, gsto: gs}
}

// recvHost waits for the next frame the guest sent on TAP queue q.
func recvHost(t testing.TB, tap *netback.MemTap, q int) (netback.VnetHdr, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := tap.MemQueue(q).Recv(ctx)
	if err != nil {
		t.Fatalf("host got nothing on queue %d: %v", q, err)
	}
	return netback.DecodeVnetHdr(f), append([]byte(nil), f[netback.VnetHdrSize:]...)
}

// noHost checks nothing arrives on TAP queue q for a while.
func noHost(t testing.TB, tap *netback.MemTap, q int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if f, err := tap.MemQueue(q).Recv(ctx); err == nil {
		t.Fatalf("host got an unexpected %d-byte frame", len(f))
	}
}

func inject(t testing.TB, tap *netback.MemTap, q int, h netback.VnetHdr, frame []byte) {
	t.Helper()
	b := make([]byte, netback.VnetHdrSize+len(frame))
	h.Encode(b)
	copy(b[netback.VnetHdrSize:], frame)
	if err := tap.MemQueue(q).Inject(ctxT(t), b); err != nil {
		t.Fatal(err)
	}
}

func recvGuest(t testing.TB, f *netfront.Front, q int) netfront.Packet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := f.Recv(ctx, q)
	if err != nil {
		t.Fatalf("guest got nothing on queue %d: %v", q, err)
	}
	return p
}

func TestSimPacketsBothWays(t *testing.T) {
	e := newEnv(t, nil)
	v := e.attach(t, 2, 0, netfront.Nic{Bridge: "xenbr7"}, netfront.Config{})
	ctx := ctxT(t)
	if got := e.mem.Bridge("xenbr7"); len(got) != 1 || got[0] != "vif2.0" {
		t.Fatalf("bridge xenbr7 = %v", got)
	}
	if o := v.tap.Offload(); o != netback.TunFCsum|netback.TunFTSO4|netback.TunFTSO6|netback.TunFTSOECN {
		t.Fatalf("tap offload = %#x", o)
	}

	t.Run("tx", func(t *testing.T) {
		cases := []struct {
			name string
			o    netback.FrameOpts
			gso  uint16
			off  int
		}{
			{"small", netback.FrameOpts{UDP: true, Payload: 18, PartialSum: true}, 0, 0},
			{"1500", netback.FrameOpts{Payload: 1460, PartialSum: true, Seed: 1}, 0, 3000},
			{"gso64k-v4", netback.FrameOpts{Payload: 65535 - 54, PartialSum: true, Seed: 2}, 1448, 100},
			{"gso-v6", netback.FrameOpts{IPv6: true, Payload: 30000, PartialSum: true, Seed: 3}, 1440, 0},
		}
		for _, c := range cases {
			frame := netback.BuildFrame(c.o)
			p := netfront.Packet{Frame: frame, Flags: netback.TxCsumBlank | netback.TxDataValidated}
			if c.gso != 0 {
				p.GSOSize, p.GSOType = c.gso, netback.GSOTypeTCPv4
				if c.o.IPv6 {
					p.GSOType = netback.GSOTypeTCPv6
				}
			}
			if err := v.f.Send(ctx, 0, p, c.off); err != nil {
				t.Fatal(err)
			}
			h, got := recvHost(t, v.tap, 0)
			if !bytes.Equal(got, frame) {
				t.Fatalf("%s: host frame differs (%d vs %d bytes)", c.name, len(got), len(frame))
			}
			if h.Flags != netback.VnetFNeedsCsum || h.GSOSize != c.gso {
				t.Fatalf("%s: vnet hdr %+v", c.name, h)
			}
			netback.CompleteCsum(got, int(h.CsumStart), int(h.CsumOffset))
			if !netback.L4CsumOK(got) {
				t.Fatalf("%s: csum_start/offset %d/%d do not complete the checksum", c.name, h.CsumStart, h.CsumOffset)
			}
		}
		if err := v.f.WaitTxIdle(ctx, 0); err != nil {
			t.Fatal(err)
		}
		c := v.f.Counters(0)
		// 1 + 2 (crosses into a second page at offset 3000) + 17 + 8 requests, 2 GSO extras.
		if c.TxOkay != 28 || c.TxNull != 2 || c.TxError+c.TxDropped+c.TxBad != 0 {
			t.Fatalf("tx responses %+v", c)
		}
		// A packet with full checksum and data_validated maps to DATA_VALID.
		frame := netback.BuildFrame(netback.FrameOpts{Payload: 100})
		if err := v.f.Send(ctx, 0, netfront.Packet{Frame: frame, Flags: netback.TxDataValidated}, 0); err != nil {
			t.Fatal(err)
		}
		if h, _ := recvHost(t, v.tap, 0); h != (netback.VnetHdr{Flags: netback.VnetFDataValid}) {
			t.Fatalf("data_validated: vnet %+v", h)
		}
	})

	t.Run("rx", func(t *testing.T) {
		cases := []struct {
			name      string
			frame     []byte
			h         netback.VnetHdr
			wantFlags uint16
			wantGSO   uint8
		}{
			{"small", netback.BuildFrame(netback.FrameOpts{UDP: true, Payload: 10}), netback.VnetHdr{}, 0, 0},
			{"1500 partial", netback.BuildFrame(netback.FrameOpts{Payload: 1460, PartialSum: true}),
				netback.VnetHdr{Flags: netback.VnetFNeedsCsum, CsumStart: 34, CsumOffset: 16},
				netback.RxCsumBlank | netback.RxDataValidated, 0},
			{"validated", netback.BuildFrame(netback.FrameOpts{Payload: 200}), netback.VnetHdr{Flags: netback.VnetFDataValid},
				netback.RxDataValidated, 0},
			{"tso4 64k", netback.BuildFrame(netback.FrameOpts{Payload: 65000, PartialSum: true, Seed: 9}),
				netback.VnetHdr{Flags: netback.VnetFNeedsCsum, GSOType: netback.VnetGSOTCPv4, GSOSize: 1448, HdrLen: 54, CsumStart: 34, CsumOffset: 16},
				netback.RxCsumBlank | netback.RxDataValidated | netback.RxExtraInfo, netback.GSOTypeTCPv4},
			{"tso6", netback.BuildFrame(netback.FrameOpts{IPv6: true, Payload: 9000, PartialSum: true, Seed: 5}),
				netback.VnetHdr{Flags: netback.VnetFNeedsCsum, GSOType: netback.VnetGSOTCPv6, GSOSize: 1428, HdrLen: 74, CsumStart: 54, CsumOffset: 16},
				netback.RxCsumBlank | netback.RxDataValidated | netback.RxExtraInfo, netback.GSOTypeTCPv6},
		}
		for _, c := range cases {
			inject(t, v.tap, 0, c.h, c.frame)
			p := recvGuest(t, v.f, 0)
			if !bytes.Equal(p.Frame, c.frame) {
				t.Fatalf("%s: guest frame differs (%d vs %d bytes)", c.name, len(p.Frame), len(c.frame))
			}
			if p.Flags != c.wantFlags || p.GSOType != c.wantGSO || p.GSOSize != c.h.GSOSize {
				t.Fatalf("%s: flags %#x gso %d/%d, want %#x %d/%d", c.name, p.Flags, p.GSOType, p.GSOSize, c.wantFlags, c.wantGSO, c.h.GSOSize)
			}
		}
		// UFO cannot be expressed in netif: dropped and counted.
		inject(t, v.tap, 0, netback.VnetHdr{GSOType: netback.VnetGSOUDP, GSOSize: 1000}, netback.BuildFrame(netback.FrameOpts{UDP: true, Payload: 3000}))
		small := netback.BuildFrame(netback.FrameOpts{UDP: true, Payload: 1, Seed: 77})
		inject(t, v.tap, 0, netback.VnetHdr{}, small)
		if p := recvGuest(t, v.f, 0); !bytes.Equal(p.Frame, small) {
			t.Fatal("frame after a dropped UFO frame differs")
		}
		if c := v.f.Counters(0); c.RxPackets != 6 || c.RxErrors != 0 {
			t.Fatalf("guest rx counters %+v", c)
		}
	})

	// Stats are published in xenstore.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := e.d0.Read(ctx, v.nic.BackPath()+"/"+netback.StatsKey)
		var st netback.Stats
		if err == nil && json.Unmarshal([]byte(s), &st) == nil && st.TxPackets == 5 && st.RxPackets == 6 && st.RxDropped == 1 {
			if st.TxBytes == 0 || st.RxBytes == 0 {
				t.Fatalf("stats %+v", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drvdom-stats = %q (%v)", s, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func errorsJoin(errs ...error) error { return errors.Join(errs...) }

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// drvStats waits for the vif's drvdom-stats key to satisfy want.
func (e *env) drvStats(t *testing.T, v *vif, want func(netback.Stats) bool) netback.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		s, err := e.d0.Read(ctx, v.nic.BackPath()+"/"+netback.StatsKey)
		var st netback.Stats
		if err == nil && jsonUnmarshal(s, &st) == nil && want(st) {
			return st
		}
		if ctx.Err() != nil {
			t.Fatalf("stats %q: %v", s, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
