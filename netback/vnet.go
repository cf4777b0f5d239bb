package netback

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// struct virtio_net_hdr (include/uapi/linux/virtio_net.h), the header a TAP
// opened with IFF_VNET_HDR puts before every frame. The backend sets
// TUNSETVNETLE so the u16 fields are little-endian on every host.
const (
	VnetHdrSize       = 10
	offVnetFlags      = 0
	offVnetGSOType    = 1
	offVnetHdrLen     = 2
	offVnetGSOSize    = 4
	offVnetCsumStart  = 6
	offVnetCsumOffset = 8
)

// VIRTIO_NET_HDR_F_* and VIRTIO_NET_HDR_GSO_*.
const (
	VnetFNeedsCsum uint8 = 1
	VnetFDataValid uint8 = 2

	VnetGSONone  uint8 = 0
	VnetGSOTCPv4 uint8 = 1
	VnetGSOUDP   uint8 = 3
	VnetGSOTCPv6 uint8 = 4
	VnetGSOECN   uint8 = 0x80
)

// VnetHdr is a decoded struct virtio_net_hdr.
type VnetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
}

// Encode writes h into b[:VnetHdrSize].
func (h VnetHdr) Encode(b []byte) {
	_ = b[VnetHdrSize-1]
	b[offVnetFlags] = h.Flags
	b[offVnetGSOType] = h.GSOType
	binary.LittleEndian.PutUint16(b[offVnetHdrLen:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[offVnetGSOSize:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[offVnetCsumStart:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[offVnetCsumOffset:], h.CsumOffset)
}

// DecodeVnetHdr decodes b[:VnetHdrSize].
func DecodeVnetHdr(b []byte) VnetHdr {
	_ = b[VnetHdrSize-1]
	return VnetHdr{
		Flags:      b[offVnetFlags],
		GSOType:    b[offVnetGSOType],
		HdrLen:     binary.LittleEndian.Uint16(b[offVnetHdrLen:]),
		GSOSize:    binary.LittleEndian.Uint16(b[offVnetGSOSize:]),
		CsumStart:  binary.LittleEndian.Uint16(b[offVnetCsumStart:]),
		CsumOffset: binary.LittleEndian.Uint16(b[offVnetCsumOffset:]),
	}
}

// ErrChecksumSetup is returned when a packet asks for checksum offload or
// GSO but its headers cannot be parsed the way Linux's skb_checksum_setup
// does (not IPv4/IPv6, a fragment, not TCP/UDP, truncated headers).
var ErrChecksumSetup = errors.New("netback: cannot set up checksum offload")

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	protoTCP      = 6
	protoUDP      = 17

	tcpCsumOffset = 16
	udpCsumOffset = 6
)

// l4Info is where a frame's transport header and checksum field are.
type l4Info struct {
	ipv6     bool
	l3, l4   int   // offsets of the IP and transport headers
	proto    uint8 // IPPROTO_TCP or IPPROTO_UDP
	csumOff  int   // checksum field offset within the transport header
	l4HdrLen int   // TCP: data offset * 4; UDP: 8
}

// parseL4 finds the transport header of an Ethernet frame as
// skb_checksum_setup does: IPv4 (no fragments) or IPv6 (skipping hop-by-hop,
// routing, destination options, AH and an unfragmented fragment header), TCP
// or UDP, with the header through the checksum field inside the frame.
func parseL4(frame []byte) (l4Info, error) {
	var li l4Info
	if len(frame) < EthHeaderLen {
		return li, fmt.Errorf("%w: %d-byte frame", ErrChecksumSetup, len(frame))
	}
	li.l3 = EthHeaderLen
	switch et := binary.BigEndian.Uint16(frame[12:]); et {
	case etherTypeIPv4:
		ip := frame[li.l3:]
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return li, fmt.Errorf("%w: short or bad IPv4 header", ErrChecksumSetup)
		}
		ihl := int(ip[0]&0x0f) * 4
		if ihl < 20 || ihl > len(ip) {
			return li, fmt.Errorf("%w: IPv4 header length %d", ErrChecksumSetup, ihl)
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return li, fmt.Errorf("%w: IPv4 fragment", ErrChecksumSetup)
		}
		li.proto = ip[9]
		li.l4 = li.l3 + ihl
	case etherTypeIPv6:
		li.ipv6 = true
		if len(frame) < li.l3+40 || frame[li.l3]>>4 != 6 {
			return li, fmt.Errorf("%w: short or bad IPv6 header", ErrChecksumSetup)
		}
		next := frame[li.l3+6]
		off := li.l3 + 40
	walk:
		for i := 0; ; i++ {
			if i > 16 {
				return li, fmt.Errorf("%w: IPv6 extension header chain too long", ErrChecksumSetup)
			}
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if off+2 > len(frame) {
					return li, fmt.Errorf("%w: truncated IPv6 extension header", ErrChecksumSetup)
				}
				next, off = frame[off], off+(int(frame[off+1])+1)*8
			case 51: // AH
				if off+2 > len(frame) {
					return li, fmt.Errorf("%w: truncated IPv6 AH", ErrChecksumSetup)
				}
				next, off = frame[off], off+(int(frame[off+1])+2)*4
			case 44: // fragment
				if off+8 > len(frame) {
					return li, fmt.Errorf("%w: truncated IPv6 fragment header", ErrChecksumSetup)
				}
				if binary.BigEndian.Uint16(frame[off+2:])&0xfff9 != 0 {
					return li, fmt.Errorf("%w: IPv6 fragment", ErrChecksumSetup)
				}
				next, off = frame[off], off+8
			default:
				break walk
			}
		}
		li.proto = next
		li.l4 = off
	default:
		return li, fmt.Errorf("%w: ethertype %#04x", ErrChecksumSetup, et)
	}
	switch li.proto {
	case protoTCP:
		li.csumOff = tcpCsumOffset
		if li.l4+20 <= len(frame) {
			li.l4HdrLen = int(frame[li.l4+12]>>4) * 4
		}
	case protoUDP:
		li.csumOff = udpCsumOffset
		li.l4HdrLen = 8
	default:
		return li, fmt.Errorf("%w: IP protocol %d", ErrChecksumSetup, li.proto)
	}
	if li.l4+li.csumOff+2 > len(frame) {
		return li, fmt.Errorf("%w: truncated transport header", ErrChecksumSetup)
	}
	return li, nil
}

// txVnetHdr builds the virtio-net header for a frame a guest sent, from its
// first request's NETTXF_* flags and its GSO extra (nil if none), as Linux
// netback's checksum_setup and xenvif_set_skb_gso do: csum_blank becomes
// NEEDS_CSUM with csum_start/offset found by parsing the headers; a GSO
// packet always needs a partial checksum, and if the frontend did not leave
// it blank the pseudo-header checksum is written into the frame (which is
// why frame must be writable); data_validated becomes DATA_VALID.
func txVnetHdr(frame []byte, flags uint16, gso *ExtraInfo) (VnetHdr, error) {
	var h VnetHdr
	if gso == nil && flags&TxCsumBlank == 0 {
		if flags&TxDataValidated != 0 {
			h.Flags = VnetFDataValid
		}
		return h, nil
	}
	li, err := parseL4(frame)
	if err != nil {
		return h, err
	}
	if li.l4 > 0xffff {
		return h, fmt.Errorf("%w: transport header at %d", ErrChecksumSetup, li.l4)
	}
	h.Flags = VnetFNeedsCsum
	h.CsumStart = uint16(li.l4)
	h.CsumOffset = uint16(li.csumOff)
	if gso != nil {
		want := uint8(GSOTypeTCPv4)
		h.GSOType = VnetGSOTCPv4
		if li.ipv6 {
			want, h.GSOType = GSOTypeTCPv6, VnetGSOTCPv6
		}
		if li.proto != protoTCP || gso.GSOType != want {
			return h, fmt.Errorf("%w: GSO type %d for IP protocol %d (IPv6 %v)", ErrChecksumSetup, gso.GSOType, li.proto, li.ipv6)
		}
		if li.l4HdrLen < 20 || li.l4+li.l4HdrLen > len(frame) {
			return h, fmt.Errorf("%w: bad TCP header length %d", ErrChecksumSetup, li.l4HdrLen)
		}
		h.HdrLen = uint16(li.l4 + li.l4HdrLen)
		h.GSOSize = gso.GSOSize
		if flags&TxCsumBlank == 0 {
			writePseudoCsum(frame, li)
		}
	}
	return h, nil
}

// writePseudoCsum stores the (non-complemented) pseudo-header checksum in the
// transport checksum field, the state CHECKSUM_PARTIAL expects.
func writePseudoCsum(frame []byte, li l4Info) {
	var sum uint32
	l4len := len(frame) - li.l4
	if li.ipv6 {
		sum = sumBytes(0, frame[li.l3+8:li.l3+40]) // source and destination
		sum += uint32(l4len>>16) + uint32(l4len&0xffff)
	} else {
		sum = sumBytes(0, frame[li.l3+12:li.l3+20])
		ipTotal := int(binary.BigEndian.Uint16(frame[li.l3+2:]))
		ihl := li.l4 - li.l3
		if ipTotal >= ihl && li.l3+ipTotal <= len(frame) {
			l4len = ipTotal - ihl
		}
		sum += uint32(l4len)
	}
	sum += uint32(li.proto)
	binary.BigEndian.PutUint16(frame[li.l4+li.csumOff:], fold(sum))
}

func sumBytes(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// rxMeta is what a frame read from the TAP tells the guest.
type rxMeta struct {
	flags  uint16 // NETRXF_csum_blank / NETRXF_data_validated
	gso    ExtraInfo
	hasGSO bool
}

// ErrUnsupportedGSO is returned for a TAP frame whose GSO type netif cannot
// express (UDP fragmentation offload, USO) or the frontend did not ask for.
var ErrUnsupportedGSO = errors.New("netback: GSO type not supported by the frontend")

// rxMetaOf maps a virtio-net header from the TAP to netif rx flags and a
// GSO extra, as xen-netback rx.c does from the skb: a partial checksum is
// csum_blank|data_validated, a verified one data_validated, TSO a GSO extra.
// gsoMask has bit GSOTypeTCPv4/GSOTypeTCPv6 set for what the frontend accepts.
func rxMetaOf(h VnetHdr, gsoMask uint8) (rxMeta, error) {
	var m rxMeta
	switch {
	case h.Flags&VnetFNeedsCsum != 0:
		m.flags = RxCsumBlank | RxDataValidated
	case h.Flags&VnetFDataValid != 0:
		m.flags = RxDataValidated
	}
	var t uint8
	switch h.GSOType &^ VnetGSOECN {
	case VnetGSONone:
		return m, nil
	case VnetGSOTCPv4:
		t = GSOTypeTCPv4
	case VnetGSOTCPv6:
		t = GSOTypeTCPv6
	default:
		return m, fmt.Errorf("%w: virtio GSO type %d", ErrUnsupportedGSO, h.GSOType)
	}
	if gsoMask&(1<<t) == 0 || h.GSOSize == 0 {
		return m, fmt.Errorf("%w: netif GSO type %d, size %d", ErrUnsupportedGSO, t, h.GSOSize)
	}
	m.hasGSO = true
	m.gso = ExtraInfo{Type: ExtraTypeGSO, GSOType: t, GSOSize: h.GSOSize}
	return m, nil
}

// completeCsum finishes a partial checksum in software (for a guest that
// cannot take one): the one's complement sum from csum_start, stored at
// csum_start+csum_offset, as a NIC does for VIRTIO_NET_HDR_F_NEEDS_CSUM.
// It refuses offsets outside the frame.
func completeCsum(frame []byte, h VnetHdr) error {
	start, off := int(h.CsumStart), int(h.CsumOffset)
	if start+off+2 > len(frame) {
		return fmt.Errorf("%w: csum_start %d + csum_offset %d outside a %d-byte frame", ErrChecksumSetup, start, off, len(frame))
	}
	// The field holds the pseudo-header sum; it is part of what is summed.
	c := ^fold(sumBytes(0, frame[start:]))
	if c == 0 && off == udpCsumOffset {
		c = 0xffff // UDP: zero means no checksum
	}
	binary.BigEndian.PutUint16(frame[start+off:], c)
	return nil
}
