package netback

import (
	"encoding/binary"
	"errors"
	"testing"
)

func TestTxVnetHdrChecksum(t *testing.T) {
	cases := []struct {
		name      string
		o         FrameOpts
		start     int
		off       int
		gsoVirtio uint8
	}{
		{"tcp4", FrameOpts{Payload: 100}, 34, 16, VnetGSOTCPv4},
		{"udp4", FrameOpts{UDP: true, Payload: 100}, 34, 6, 0},
		{"tcp6", FrameOpts{IPv6: true, Payload: 100}, 54, 16, VnetGSOTCPv6},
		{"udp6 hop-by-hop", FrameOpts{IPv6: true, UDP: true, HopByHop: true, Payload: 33}, 62, 6, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			o.PartialSum = true
			f := BuildFrame(o)
			h, err := txVnetHdr(f, TxCsumBlank|TxDataValidated, nil)
			if err != nil {
				t.Fatal(err)
			}
			if h.Flags != VnetFNeedsCsum || int(h.CsumStart) != tc.start || int(h.CsumOffset) != tc.off || h.GSOType != 0 {
				t.Fatalf("hdr = %+v, want needs_csum start %d off %d", h, tc.start, tc.off)
			}
			if L4CsumOK(f) {
				t.Fatal("partial frame already has a valid checksum: test is vacuous")
			}
			CompleteCsum(f, int(h.CsumStart), int(h.CsumOffset))
			if !L4CsumOK(f) {
				t.Fatal("completing at csum_start/offset does not give a valid checksum")
			}
			if tc.gsoVirtio == 0 {
				return
			}
			// GSO without csum_blank: the pseudo-header sum is recomputed.
			g := BuildFrame(FrameOpts{IPv6: o.IPv6, Payload: 3000})
			gt := GSOTypeTCPv4
			if o.IPv6 {
				gt = GSOTypeTCPv6
			}
			h, err = txVnetHdr(g, TxDataValidated, &ExtraInfo{Type: ExtraTypeGSO, GSOSize: 1448, GSOType: gt})
			if err != nil {
				t.Fatal(err)
			}
			if h.GSOType != tc.gsoVirtio || h.GSOSize != 1448 || int(h.HdrLen) != tc.start+20 || h.Flags != VnetFNeedsCsum {
				t.Fatalf("gso hdr = %+v", h)
			}
			CompleteCsum(g, int(h.CsumStart), int(h.CsumOffset))
			if !L4CsumOK(g) {
				t.Fatal("recomputed pseudo-header checksum is wrong")
			}
		})
	}
}

func TestTxVnetHdrPlain(t *testing.T) {
	f := BuildFrame(FrameOpts{Payload: 10})
	h, err := txVnetHdr(f, TxDataValidated, nil)
	if err != nil || h != (VnetHdr{Flags: VnetFDataValid}) {
		t.Fatalf("data_validated: %+v %v", h, err)
	}
	h, err = txVnetHdr(f, 0, nil)
	if err != nil || h != (VnetHdr{}) {
		t.Fatalf("no flags: %+v %v", h, err)
	}
}

func TestTxVnetHdrRefuses(t *testing.T) {
	frag := BuildFrame(FrameOpts{Payload: 10, PartialSum: true})
	binary.BigEndian.PutUint16(frag[14+6:], 0x2000) // MF
	arp := BuildFrame(FrameOpts{Payload: 10})
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	icmp := BuildFrame(FrameOpts{Payload: 10})
	icmp[14+9] = 1
	short := BuildFrame(FrameOpts{Payload: 10})[:14+20+10]
	udpGSO := BuildFrame(FrameOpts{UDP: true, Payload: 3000})
	wrongVer := BuildFrame(FrameOpts{Payload: 3000})
	for name, c := range map[string]struct {
		f   []byte
		gso *ExtraInfo
	}{
		"ipv4 fragment": {frag, nil},
		"arp":           {arp, nil},
		"icmp":          {icmp, nil},
		"truncated tcp": {short, nil},
		"gso on udp":    {udpGSO, &ExtraInfo{Type: ExtraTypeGSO, GSOSize: 1000, GSOType: GSOTypeTCPv4}},
		"gso v6 on v4":  {wrongVer, &ExtraInfo{Type: ExtraTypeGSO, GSOSize: 1000, GSOType: GSOTypeTCPv6}},
	} {
		if _, err := txVnetHdr(c.f, TxCsumBlank, c.gso); !errors.Is(err, ErrChecksumSetup) {
			t.Errorf("%s: err = %v, want ErrChecksumSetup", name, err)
		}
	}
}

func TestRxMeta(t *testing.T) {
	all := uint8(1<<GSOTypeTCPv4 | 1<<GSOTypeTCPv6)
	m, err := rxMetaOf(VnetHdr{Flags: VnetFNeedsCsum, GSOType: VnetGSOTCPv4 | VnetGSOECN, GSOSize: 1448}, all)
	if err != nil || m.flags != RxCsumBlank|RxDataValidated || !m.hasGSO || m.gso.GSOType != GSOTypeTCPv4 || m.gso.GSOSize != 1448 || m.gso.Type != ExtraTypeGSO {
		t.Fatalf("tso4: %+v %v", m, err)
	}
	m, err = rxMetaOf(VnetHdr{Flags: VnetFDataValid}, 0)
	if err != nil || m.flags != RxDataValidated || m.hasGSO {
		t.Fatalf("data valid: %+v %v", m, err)
	}
	m, err = rxMetaOf(VnetHdr{}, 0)
	if err != nil || m.flags != 0 {
		t.Fatalf("plain: %+v %v", m, err)
	}
	if _, err := rxMetaOf(VnetHdr{GSOType: VnetGSOTCPv6, GSOSize: 1000}, 1<<GSOTypeTCPv4); !errors.Is(err, ErrUnsupportedGSO) {
		t.Fatalf("tso6 to a v4-only guest: %v", err)
	}
	if _, err := rxMetaOf(VnetHdr{GSOType: VnetGSOUDP, GSOSize: 1000}, all); !errors.Is(err, ErrUnsupportedGSO) {
		t.Fatalf("ufo: %v", err)
	}
}

func TestVnetHdrBytes(t *testing.T) {
	b := make([]byte, VnetHdrSize)
	h := VnetHdr{Flags: 1, GSOType: 4, HdrLen: 0x0302, GSOSize: 0x0504, CsumStart: 0x0706, CsumOffset: 0x0908}
	h.Encode(b)
	want := []byte{1, 4, 2, 3, 4, 5, 6, 7, 8, 9}
	for i := range want {
		if b[i] != want[i] {
			t.Fatalf("vnet hdr = % x, want % x", b, want)
		}
	}
	if DecodeVnetHdr(b) != h {
		t.Fatal("round trip")
	}
}

// FuzzParseL4 checks the header walker never reads out of bounds and that
// what it returns lies inside the frame.
func FuzzParseL4(f *testing.F) {
	f.Add(BuildFrame(FrameOpts{Payload: 20}))
	f.Add(BuildFrame(FrameOpts{IPv6: true, UDP: true, HopByHop: true, Payload: 5}))
	f.Fuzz(func(t *testing.T, frame []byte) {
		li, err := parseL4(frame)
		if err != nil {
			return
		}
		if li.l4+li.csumOff+2 > len(frame) {
			t.Fatalf("checksum field outside the frame: %+v len %d", li, len(frame))
		}
		g := append([]byte(nil), frame...)
		txVnetHdr(g, TxCsumBlank, &ExtraInfo{Type: ExtraTypeGSO, GSOSize: 100, GSOType: GSOTypeTCPv4})
		txVnetHdr(g, 0, &ExtraInfo{Type: ExtraTypeGSO, GSOSize: 100, GSOType: GSOTypeTCPv6})
	})
}
