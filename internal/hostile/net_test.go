package hostile

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"

	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
)

// hvif is a vif of the hostile guest driven by the Go netfront (whose
// SendRaw puts arbitrary chains on the tx ring).
type hvif struct {
	f     *netfront.Front
	tap   *netback.MemTap
	nic   netfront.Nic
	close func()
}

func (r *rig) hostileVif(t testing.TB, cfg netfront.Config) *hvif {
	t.Helper()
	ctx := ctxFor(t)
	v := &hvif{nic: netfront.Nic{BackDom: dd1, FrontDom: hostileID, DevID: r.devID(), MAC: "00:16:3e:00:00:03"}}
	if err := netfront.AddNic(ctx, r.d0, v.nic); err != nil {
		t.Fatal(err)
	}
	store := r.hostile.Xenstore()
	v.close = sync.OnceFunc(func() {
		ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
		defer cancel()
		if v.f != nil {
			v.f.Close(ctx) // also after the guest removed its directory: it ends the grants and ports
		}
		netfront.RemoveNic(ctx, r.d0, v.nic)
		r.await(t, v.nic.BackPath()+"/state", "Closed", func(s string, err error) bool { return s == "6" || err != nil })
		r.removeNodes(ctx, dd1, "vif", v.nic.DevID, v.nic.BackPath(), v.nic.FrontPath())
		store.Close()
	})
	t.Cleanup(v.close)
	f, err := netfront.Attach(ctx, store, r.hostile.Sharer(), r.hostile.Evtchn(), v.nic.FrontPath(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	v.f = f
	v.tap = r.mem.Tap(netback.TapName(hostileID, v.nic.DevID))
	if v.tap == nil {
		t.Fatal("no tap")
	}
	return v
}

// marker sends a frame and checks it is the next frame the host gets.
func (v *hvif) marker(t testing.TB, seed uint64) {
	t.Helper()
	ctx := ctxFor(t)
	fr := frame(200, seed)
	if err := v.f.Send(ctx, 0, netfront.Packet{Frame: fr}, 0); err != nil {
		t.Fatal(err)
	}
	v.expect(t, fr)
}

// expect checks the next frame the host gets from the vif.
func (v *hvif) expect(t testing.TB, fr []byte) {
	t.Helper()
	got, err := v.tap.MemQueue(0).Recv(ctxFor(t))
	if err != nil {
		t.Fatalf("host got nothing: %v", err)
	}
	if !bytes.Equal(got[netback.VnetHdrSize:], fr) {
		t.Fatalf("host got a %d-byte frame, want the %d-byte one sent", len(got)-netback.VnetHdrSize, len(fr))
	}
}

// chainCase is one tx chain and the responses it must get.
type chainCase struct {
	name                       string
	chain                      func(k *chainKit) []any
	errs, nulls, okay, dropped uint64
	frames                     int // of the okay packets, how many reach the host (in chain order)
}

// chainKit builds chains: page data and foreign grants.
type chainKit struct {
	r      *rig
	data   []byte
	frames [][]byte // frames expected at the host
	t      testing.TB
}

func (k *chainKit) foreign(to uint16, writable bool) uint32 {
	sh, err := k.r.hostile.Sharer().Share(to, 1, writable)
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() { sh.Close() })
	copy(sh.Bytes(), k.data)
	return uint32(sh.Refs()[0])
}

func more(size uint16) netback.TxRequest {
	return netback.TxRequest{Flags: netback.TxMoreData, Size: size}
}

func long(n int, first, each uint16) []any {
	c := []any{netfront.Slot{Req: netback.TxRequest{Flags: netback.TxMoreData, Size: first}}}
	for i := 1; i < n; i++ {
		r := netback.TxRequest{Flags: netback.TxMoreData, Size: each}
		if i == n-1 {
			r.Flags = 0
		}
		c = append(c, r)
	}
	return c
}

func gsoExtra(typ uint8, size uint16) netback.ExtraInfo {
	return netback.ExtraInfo{Type: netback.ExtraTypeGSO, GSOType: typ, GSOSize: size}
}

var chainCases = []chainCase{
	{name: "19 slots (max 18)", errs: 19, chain: func(k *chainKit) []any { return long(19, 19*100, 100) }},
	{name: "40 slots", errs: 40, chain: func(k *chainKit) []any { return long(40, 4000, 100) }},
	{name: "first slot of size 0", errs: 1, chain: func(k *chainKit) []any { return []any{netback.TxRequest{Size: 0}} }},
	{name: "first slot shorter than an Ethernet header", errs: 1, chain: func(k *chainKit) []any {
		return []any{netfront.Slot{Req: netback.TxRequest{Size: 13}, Data: k.data}}
	}},
	{name: "first slot's own part shorter than a header", errs: 2, chain: func(k *chainKit) []any {
		return []any{netfront.Slot{Req: more(100), Data: k.data}, netback.TxRequest{Size: 90}}
	}},
	{name: "slot crossing its page", errs: 1, chain: func(k *chainKit) []any {
		return []any{netfront.Slot{Req: netback.TxRequest{Offset: 4000, Size: 200}, Data: k.data}}
	}},
	{name: "first slot at offset 4096", errs: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Offset: 4096, Size: 60}}
	}},
	{name: "follower at offset 65535", errs: 2, chain: func(k *chainKit) []any {
		return []any{netfront.Slot{Req: more(100), Data: k.data}, netback.TxRequest{Offset: 65535, Size: 1}}
	}},
	{name: "follower crossing its page", errs: 2, chain: func(k *chainKit) []any {
		return []any{netfront.Slot{Req: more(160), Data: k.data}, netback.TxRequest{Offset: 4090, Size: 100}}
	}},
	{name: "one slot of 65535 bytes", errs: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Size: 65535}}
	}},
	{name: "65535 bytes claimed, 17 full pages follow", errs: 18, chain: func(k *chainKit) []any {
		return long(18, 65535, 4096)
	}},
	{name: "follower bigger than the packet", errs: 2, chain: func(k *chainKit) []any {
		return []any{more(100), netback.TxRequest{Size: 200}}
	}},
	{name: "grant never made", errs: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Gref: 0xdead, Size: 60}}
	}},
	{name: "grant never made in a follower", errs: 2, chain: func(k *chainKit) []any {
		return []any{netfront.Slot{Req: more(160), Data: k.data}, netback.TxRequest{Gref: 0xbeef, Size: 100}}
	}},
	{name: "page granted to another domain", errs: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Gref: k.foreign(otherID, true), Size: 60}}
	}},
	{name: "page granted to the other driver domain", errs: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Gref: k.foreign(dd2, true), Size: 60}}
	}},
	{name: "control: a read-only grant of another page", okay: 1, frames: 1, chain: func(k *chainKit) []any {
		k.data = frame(300, 9)
		k.frames = [][]byte{k.data}
		return []any{netback.TxRequest{Gref: k.foreign(dd1, false), Size: 300}}
	}},
	{name: "chain of 100 slots that ends", errs: 100, chain: func(k *chainKit) []any {
		c := make([]any, 100)
		for i := range c {
			c[i] = more(60)
		}
		c[99] = netback.TxRequest{Size: 60}
		return c
	}},
	{name: "extra-info type 0", errs: 1, nulls: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60}, netback.ExtraInfo{Type: 0}}
	}},
	{name: "extra-info type 6", errs: 1, nulls: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60}, netback.ExtraInfo{Type: 6}}
	}},
	{name: "extra-info type 255", errs: 1, nulls: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60}, netback.ExtraInfo{Type: 255}}
	}},
	{name: "7 extra-infos", errs: 1, nulls: 7, chain: func(k *chainKit) []any {
		c := []any{netfront.Slot{Req: netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60}, Data: k.data}}
		for i := 0; i < 7; i++ {
			e := gsoExtra(netback.GSOTypeTCPv4, 1000)
			if i < 6 {
				e.Flags = netback.ExtraFlagMore
			}
			c = append(c, e)
		}
		return c
	}},
	{name: "GSO size 0", errs: 1, nulls: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60}, gsoExtra(netback.GSOTypeTCPv4, 0)}
	}},
	{name: "GSO type 7", errs: 1, nulls: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60}, gsoExtra(7, 1000)}
	}},
	{name: "GSO on a frame that is not TCP", dropped: 1, nulls: 1, chain: func(k *chainKit) []any {
		return []any{netfront.Slot{Req: netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60}, Data: frame(60, 1)},
			gsoExtra(netback.GSOTypeTCPv4, 1000)}
	}},
	{name: "checksum offload on a frame that is not IP", dropped: 1, chain: func(k *chainKit) []any {
		return []any{netfront.Slot{Req: netback.TxRequest{Flags: netback.TxCsumBlank, Size: 60}, Data: frame(60, 2)}}
	}},
	{name: "multicast add without multicast control", okay: 1, nulls: 1, chain: func(k *chainKit) []any {
		return []any{netback.TxRequest{Flags: netback.TxExtraInfo, Size: 60},
			netback.ExtraInfo{Type: netback.ExtraTypeMcastAdd, Mcast: [6]byte{1, 0, 0x5e, 0, 0, 1}}}
	}},
	{name: "control: unknown flag bits", okay: 1, frames: 1, chain: func(k *chainKit) []any {
		fr := frame(100, 3)
		k.frames = [][]byte{fr}
		return []any{netfront.Slot{Req: netback.TxRequest{Flags: 0xffc0, Size: 100}, Data: fr}}
	}},
}

// TestVifTxChains puts hostile tx chains on the hostile guest's vif: each
// slot is answered (error, or NULL for an extra-info), nothing malformed
// reaches the host, the vif keeps working, and the honest guest's vif
// passes traffic throughout.
func TestVifTxChains(t *testing.T) {
	r := newRig(t)
	v := r.hostileVif(t, netfront.Config{})
	for i, c := range chainCases {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxFor(t)
			k := &chainKit{r: r, data: frame(4096, uint64(i)), t: t}
			chain := c.chain(k)
			before := v.f.Counters(0)
			if err := v.f.SendRaw(ctx, 0, chain...); err != nil {
				t.Fatal(err)
			}
			if err := v.f.WaitTxIdle(ctx, 0); err != nil {
				t.Fatal(err)
			}
			after := v.f.Counters(0)
			d := netfront.Counters{TxOkay: after.TxOkay - before.TxOkay, TxError: after.TxError - before.TxError,
				TxDropped: after.TxDropped - before.TxDropped, TxNull: after.TxNull - before.TxNull, TxBad: after.TxBad - before.TxBad}
			want := netfront.Counters{TxOkay: c.okay, TxError: c.errs, TxDropped: c.dropped, TxNull: c.nulls}
			if d != want {
				t.Fatalf("responses %+v, want %+v", d, want)
			}
			for _, fr := range k.frames {
				v.expect(t, fr)
			}
			v.marker(t, uint64(i)+500)
			r.checkCase(t)
		})
	}
	t.Run("chain longer than the ring", func(t *testing.T) {
		ctx := ctxFor(t)
		before := v.f.Counters(0)
		c := make([]any, 256)
		for i := range c {
			c[i] = more(60)
		}
		if err := v.f.SendRaw(ctx, 0, c...); err != nil {
			t.Fatal(err)
		}
		// The backend cuts it into bounded pieces (answering them) and
		// waits for the rest: the end arrives in a second push.
		if err := v.f.SendRaw(ctx, 0, netback.TxRequest{Size: 60}); err != nil {
			t.Fatal(err)
		}
		if err := v.f.WaitTxIdle(ctx, 0); err != nil {
			t.Fatal(err)
		}
		after := v.f.Counters(0)
		if after.TxError-before.TxError != 257 || after.TxOkay != before.TxOkay || after.TxBad != 0 {
			t.Fatalf("responses %+v -> %+v, want 257 errors", before, after)
		}
		v.marker(t, 999)
		r.checkCase(t)
	})
}

// TestVifRingIndex: a frontend corrupting its tx ring's request producer
// gets its vif disabled with the reason under error/ (logged once); another
// vif of the same guest and the honest guest's keep passing traffic.
func TestVifRingIndex(t *testing.T) {
	r := newRig(t)
	by := r.hostileVif(t, netfront.Config{})
	cases := []struct {
		name   string
		before int
		prod   func(reqProd, rspProd uint32) uint32
	}{
		{"one past the ring", 0, func(p, rsp uint32) uint32 { return rsp + 257 }},
		{"far ahead (+1000)", 0, func(p, rsp uint32) uint32 { return p + 1000 }},
		{"half the index space ahead", 0, func(p, rsp uint32) uint32 { return p + 1<<31 }},
		{"backwards by 3 after 5 packets", 5, func(p, rsp uint32) uint32 { return p - 3 }},
		{"2^32-1 ahead", 0, func(p, rsp uint32) uint32 { return rsp - 1 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := r.hostileVif(t, netfront.Config{Queues: 2})
			for i := 0; i < c.before; i++ {
				v.marker(t, uint64(i))
			}
			if err := v.f.WaitTxIdle(ctxFor(t), 0); err != nil {
				t.Fatal(err)
			}
			_, mem, mu := v.f.TxRing(0)
			mu.Lock()
			le := binary.LittleEndian
			le.PutUint32(mem[hdrReqProd:], c.prod(le.Uint32(mem[hdrReqProd:]), le.Uint32(mem[hdrRspProd:])))
			mu.Unlock()
			if err := v.f.Kick(0); err != nil {
				t.Fatal(err)
			}
			msg := r.awaitError(t, dd1, "vif", hostileID, v.nic.DevID)
			if !strings.Contains(msg, "overflow") {
				t.Errorf("error node %q does not say why", msg)
			}
			name := "vif 3/" + strconv.FormatUint(uint64(v.nic.DevID), 10)
			logged := func() int {
				return r.logs.count(slog.LevelWarn, func(l logRec) bool { return l.attrs["dev"] == name })
			}
			first := logged()
			if first != 1 {
				t.Errorf("logged %d times at warning or above, want once:\n%s", first, r.logs.dump(slog.LevelWarn))
			}
			for i := 0; i < 20; i++ {
				v.f.Kick(0)
				v.f.Kick(1)
			}
			by.marker(t, 7)
			in := make([]byte, netback.VnetHdrSize+100)
			copy(in[netback.VnetHdrSize:], frame(100, 8))
			if err := by.tap.MemQueue(0).Inject(ctxFor(t), in); err != nil {
				t.Fatal(err)
			}
			if p, err := by.f.Recv(ctxFor(t), 0); err != nil || !bytes.Equal(p.Frame, in[netback.VnetHdrSize:]) {
				t.Fatalf("bystander vif receive: %v", err)
			}
			if n := logged(); n != first {
				t.Errorf("%d more log records after more kicks", n-first)
			}
			r.checkCase(t)
		})
	}
}
