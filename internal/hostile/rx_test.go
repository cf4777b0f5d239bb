package hostile

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"drvdom/evtchn"
	"drvdom/netback"
)

// rxRing drives the rx ring of a rawVif by hand.
type rxRing struct {
	rv      *rawVif
	mem     []byte // the rx ring page
	prod    uint32
	rspCons uint32
}

func (x *rxRing) post(t testing.TB, id uint16, gref uint32) {
	t.Helper()
	off := hdrSize + int(x.prod%256)*netback.RxRequestSize
	netback.RxRequest{ID: id, Gref: gref}.Encode(x.mem[off:])
	x.prod++
	binary.LittleEndian.PutUint32(x.mem[hdrReqProd:], x.prod)
	if err := x.rv.evh.Notify(x.rv.port); err != nil {
		t.Fatal(err)
	}
}

// next waits for the next rx response.
func (x *rxRing) next(t testing.TB) netback.RxResponse {
	t.Helper()
	ctx := ctxFor(t)
	ports := make([]evtchn.Port, 4)
	for {
		if binary.LittleEndian.Uint32(x.mem[hdrRspProd:]) != x.rspCons {
			off := hdrSize + int(x.rspCons%256)*netback.RxResponseSize
			x.rspCons++
			return netback.DecodeRxResponse(x.mem[off:])
		}
		binary.LittleEndian.PutUint32(x.mem[hdrRspEvent:], x.rspCons+1)
		if binary.LittleEndian.Uint32(x.mem[hdrRspProd:]) != x.rspCons {
			continue
		}
		n, err := x.rv.evh.Wait(ctx, ports)
		if err != nil {
			t.Fatalf("no rx response: %v", err)
		}
		for _, p := range ports[:n] {
			x.rv.evh.Unmask(p)
		}
	}
}

// TestVifRxBuffers: rx buffers the backend must not (or cannot) write
// into: the packet put there is answered with an error in that slot, the
// next good buffer gets the next packet, and the honest guest's vif is
// unaffected. A corrupted rx request producer disables the vif alone.
func TestVifRxBuffers(t *testing.T) {
	r := newRig(t)
	rv := r.attachVif(t, nil)
	if rv.state != "4" {
		t.Fatalf("vif did not connect: state %s", rv.state)
	}
	tap := r.mem.Tap(netback.TapName(hostileID, rv.nic.DevID))
	x := &rxRing{rv: rv, mem: rv.shares[0].Bytes()[4096:8192]}
	good, err := r.hostile.Sharer().Share(dd1, 1, true)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	k := &kit{sharer: r.hostile.Sharer(), evh: r.hostile.Evtchn(), back: dd1}
	defer k.evh.Close()
	defer k.release()
	inject := func(t *testing.T, fr []byte) {
		in := make([]byte, netback.VnetHdrSize+len(fr))
		copy(in[netback.VnetHdrSize:], fr)
		if err := tap.MemQueue(0).Inject(ctxFor(t), in); err != nil {
			t.Fatal(err)
		}
	}
	ref := func(v string) uint32 {
		n := uint32(0)
		for _, c := range v {
			n = n*10 + uint32(c-'0')
		}
		return n
	}
	cases := []struct {
		name string
		gref func() uint32
	}{
		{"grant never made", func() uint32 { return 0xdead }},
		{"page granted to another domain", func() uint32 { return ref(k.resolve(t, phForeign)) }},
		{"page granted read-only", func() uint32 { return ref(k.resolve(t, phRO)) }},
		{"page granted to the other driver domain", func() uint32 { return ref(k.resolve(t, phOtherDD)) }},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := uint16(1000 + i)
			x.post(t, id, c.gref())
			inject(t, frame(200, uint64(i)))
			rsp := x.next(t)
			if rsp.ID != id || rsp.Status >= 0 {
				t.Fatalf("response %+v, want an error for id %d", rsp, id)
			}
			// The next good buffer gets the next packet.
			fr := frame(300, uint64(i)+50)
			x.post(t, 7, uint32(good.Refs()[0]))
			inject(t, fr)
			rsp = x.next(t)
			if rsp.ID != 7 || rsp.Status != 300 || !bytes.Equal(good.Bytes()[rsp.Offset:int(rsp.Offset)+300], fr) {
				t.Fatalf("good buffer after a bad one: %+v", rsp)
			}
			r.checkCase(t)
		})
	}
	t.Run("rx request producer far ahead", func(t *testing.T) {
		binary.LittleEndian.PutUint32(x.mem[hdrReqProd:], x.prod+5000)
		if err := rv.evh.Notify(rv.port); err != nil {
			t.Fatal(err)
		}
		// netback looks at the rx ring when it has a packet for the guest.
		inject(t, frame(100, 1))
		msg := r.awaitError(t, dd1, "vif", hostileID, rv.nic.DevID)
		if !strings.Contains(msg, "overflow") {
			t.Errorf("error node %q does not say why", msg)
		}
		r.checkCase(t)
	})
}
