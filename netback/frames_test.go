package netback

import (
	"encoding/binary"
)

// Frame builders shared by the tests of this package (internal and
// external test files are one test binary).

var (
	TestGuestMAC = [6]byte{0x00, 0x16, 0x3e, 0x00, 0x00, 0x02}
	TestHostMAC  = [6]byte{0x00, 0x16, 0x3e, 0x00, 0x00, 0x01}
	testIP4Src   = [4]byte{169, 254, 9, 2}
	testIP4Dst   = [4]byte{169, 254, 9, 1}
	testIP6Src   = [16]byte{0xfe, 0x80, 15: 2}
	testIP6Dst   = [16]byte{0xfe, 0x80, 15: 1}
)

// FrameOpts describes a test frame.
type FrameOpts struct {
	IPv6       bool
	UDP        bool
	HopByHop   bool // IPv6: insert an 8-byte hop-by-hop header
	Payload    int
	PartialSum bool // leave the L4 checksum as the pseudo-header sum (csum_blank)
	Seed       byte
	Dst, Src   [6]byte
}

// BuildFrame returns an Ethernet frame with valid IP header and a full (or,
// with PartialSum, pseudo-header-only) transport checksum.
func BuildFrame(o FrameOpts) []byte {
	if o.Dst == ([6]byte{}) {
		o.Dst = TestHostMAC
	}
	if o.Src == ([6]byte{}) {
		o.Src = TestGuestMAC
	}
	l4len := 20 + o.Payload
	proto := byte(protoTCP)
	if o.UDP {
		l4len, proto = 8+o.Payload, protoUDP
	}
	var f []byte
	f = append(f, o.Dst[:]...)
	f = append(f, o.Src[:]...)
	var l3 []byte
	if o.IPv6 {
		f = binary.BigEndian.AppendUint16(f, etherTypeIPv6)
		ext := 0
		if o.HopByHop {
			ext = 8
		}
		l3 = make([]byte, 40+ext)
		l3[0] = 0x60
		binary.BigEndian.PutUint16(l3[4:], uint16(ext+l4len))
		l3[6] = proto
		if o.HopByHop {
			l3[6] = 0
			l3[40] = proto // next header; length 0 = 8 bytes; PadN option
			l3[42], l3[43] = 1, 4
		}
		l3[7] = 64
		copy(l3[8:], testIP6Src[:])
		copy(l3[24:], testIP6Dst[:])
	} else {
		f = binary.BigEndian.AppendUint16(f, etherTypeIPv4)
		l3 = make([]byte, 20)
		l3[0] = 0x45
		binary.BigEndian.PutUint16(l3[2:], uint16(20+l4len))
		l3[6] = 0x40 // DF
		l3[8] = 64
		l3[9] = proto
		copy(l3[12:], testIP4Src[:])
		copy(l3[16:], testIP4Dst[:])
		binary.BigEndian.PutUint16(l3[10:], ^fold(sumBytes(0, l3)))
	}
	f = append(f, l3...)
	l4 := make([]byte, l4len)
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], 5001)
	hl := 8
	if o.UDP {
		binary.BigEndian.PutUint16(l4[4:], uint16(l4len))
	} else {
		hl = 20
		binary.BigEndian.PutUint32(l4[4:], 1)
		l4[12] = 5 << 4
		l4[13] = 0x18 // PSH|ACK
		binary.BigEndian.PutUint16(l4[14:], 65535)
	}
	for i := hl; i < len(l4); i++ {
		l4[i] = o.Seed + byte(i*7)
	}
	f = append(f, l4...)
	li, err := parseL4(f)
	if err != nil {
		panic(err)
	}
	writePseudoCsum(f, li)
	if !o.PartialSum {
		CompleteCsum(f, li.l4, li.csumOff)
	}
	return f
}

// CompleteCsum finishes a partial checksum as a NIC does for
// VIRTIO_NET_HDR_F_NEEDS_CSUM: sum from start, store at start+off.
func CompleteCsum(f []byte, start, off int) {
	s := sumBytes(0, f[start:])
	c := ^fold(s)
	if c == 0 && off == udpCsumOffset {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(f[start+off:], c)
}

// L4CsumOK verifies a frame's transport checksum.
func L4CsumOK(f []byte) bool {
	li, err := parseL4(f)
	if err != nil {
		return false
	}
	g := make([]byte, len(f))
	copy(g, f)
	want := binary.BigEndian.Uint16(g[li.l4+li.csumOff:])
	writePseudoCsum(g, li)
	CompleteCsum(g, li.l4, li.csumOff)
	return binary.BigEndian.Uint16(g[li.l4+li.csumOff:]) == want
}
