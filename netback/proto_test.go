package netback

import (
	"testing"
)

// TestLayoutPinned pins the wire layouts to xen/include/public/io/netif.h.
func TestLayoutPinned(t *testing.T) {
	pins := []struct {
		name      string
		got, want int
	}{
		{"sizeof(netif_tx_request)", TxRequestSize, 12},
		{"sizeof(netif_tx_response)", TxResponseSize, 4},
		{"sizeof(netif_rx_request)", RxRequestSize, 8},
		{"sizeof(netif_rx_response)", RxResponseSize, 8},
		{"sizeof(netif_extra_info)", ExtraInfoSize, 8},
		{"tx_request.gref", offTxReqGref, 0},
		{"tx_request.offset", offTxReqOffset, 4},
		{"tx_request.flags", offTxReqFlags, 6},
		{"tx_request.id", offTxReqID, 8},
		{"tx_request.size", offTxReqSize, 10},
		{"tx_response.id", offTxRspID, 0},
		{"tx_response.status", offTxRspStatus, 2},
		{"rx_request.id", offRxReqID, 0},
		{"rx_request.gref", offRxReqGref, 4},
		{"rx_response.id", offRxRspID, 0},
		{"rx_response.offset", offRxRspOffset, 2},
		{"rx_response.flags", offRxRspFlags, 4},
		{"rx_response.status", offRxRspStatus, 6},
		{"extra_info.type", offExtraType, 0},
		{"extra_info.flags", offExtraFlags, 1},
		{"extra_info.u.gso.size", offExtraGSOSize, 2},
		{"extra_info.u.gso.type", offExtraGSOType, 4},
		{"extra_info.u.gso.pad", offExtraGSOPad, 5},
		{"extra_info.u.gso.features", offExtraGSOFeatures, 6},
		{"extra_info.u.mcast.addr", offExtraMcastAddr, 2},
		{"NETTXF_csum_blank", int(TxCsumBlank), 1},
		{"NETTXF_data_validated", int(TxDataValidated), 2},
		{"NETTXF_more_data", int(TxMoreData), 4},
		{"NETTXF_extra_info", int(TxExtraInfo), 8},
		{"NETRXF_data_validated", int(RxDataValidated), 1},
		{"NETRXF_csum_blank", int(RxCsumBlank), 2},
		{"NETRXF_more_data", int(RxMoreData), 4},
		{"NETRXF_extra_info", int(RxExtraInfo), 8},
		{"NETRXF_gso_prefix", int(RxGSOPrefix), 16},
		{"XEN_NETIF_EXTRA_TYPE_GSO", int(ExtraTypeGSO), 1},
		{"XEN_NETIF_EXTRA_TYPE_MCAST_ADD", int(ExtraTypeMcastAdd), 2},
		{"XEN_NETIF_EXTRA_TYPE_MCAST_DEL", int(ExtraTypeMcastDel), 3},
		{"XEN_NETIF_EXTRA_TYPE_HASH", int(ExtraTypeHash), 4},
		{"XEN_NETIF_EXTRA_TYPE_XDP", int(ExtraTypeXDP), 5},
		{"XEN_NETIF_EXTRA_TYPE_MAX", int(ExtraTypeMax), 6},
		{"XEN_NETIF_EXTRA_FLAG_MORE", int(ExtraFlagMore), 1},
		{"XEN_NETIF_GSO_TYPE_TCPV4", int(GSOTypeTCPv4), 1},
		{"XEN_NETIF_GSO_TYPE_TCPV6", int(GSOTypeTCPv6), 2},
		{"XEN_NETIF_RSP_DROPPED", int(RspDropped), -2},
		{"XEN_NETIF_RSP_ERROR", int(RspError), -1},
		{"XEN_NETIF_RSP_OKAY", int(RspOkay), 0},
		{"XEN_NETIF_RSP_NULL", int(RspNull), 1},
		{"XEN_NETBK_LEGACY_SLOTS_MAX", LegacySlotsMax, 18},
		{"XEN_NETIF_MAX_TX_SIZE", MaxTxSize, 0xffff},
		{"XEN_NETBK_MCAST_MAX", McastMax, 64},
		{"sizeof(virtio_net_hdr)", VnetHdrSize, 10},
		{"virtio_net_hdr.flags", offVnetFlags, 0},
		{"virtio_net_hdr.gso_type", offVnetGSOType, 1},
		{"virtio_net_hdr.hdr_len", offVnetHdrLen, 2},
		{"virtio_net_hdr.gso_size", offVnetGSOSize, 4},
		{"virtio_net_hdr.csum_start", offVnetCsumStart, 6},
		{"virtio_net_hdr.csum_offset", offVnetCsumOffset, 8},
		{"VIRTIO_NET_HDR_F_NEEDS_CSUM", int(VnetFNeedsCsum), 1},
		{"VIRTIO_NET_HDR_F_DATA_VALID", int(VnetFDataValid), 2},
		{"VIRTIO_NET_HDR_GSO_TCPV4", int(VnetGSOTCPv4), 1},
		{"VIRTIO_NET_HDR_GSO_UDP", int(VnetGSOUDP), 3},
		{"VIRTIO_NET_HDR_GSO_TCPV6", int(VnetGSOTCPv6), 4},
		{"VIRTIO_NET_HDR_GSO_ECN", int(VnetGSOECN), 0x80},
		{"TUN_F_CSUM", int(TunFCsum), 1},
		{"TUN_F_TSO4", int(TunFTSO4), 2},
		{"TUN_F_TSO6", int(TunFTSO6), 4},
		{"TUN_F_TSO_ECN", int(TunFTSOECN), 8},
		{"TUN_F_UFO", int(TunFUFO), 0x10},
	}
	for _, p := range pins {
		if p.got != p.want {
			t.Errorf("%s = %d, want %d", p.name, p.got, p.want)
		}
	}
}

func TestTxRequestBytes(t *testing.T) {
	b := make([]byte, TxRequestSize)
	r := TxRequest{Gref: 0x04030201, Offset: 0x0605, Flags: 0x0807, ID: 0x0a09, Size: 0x0c0b}
	r.Encode(b)
	for i, v := range b {
		if v != byte(i+1) {
			t.Fatalf("encoded tx request = % x, want 01..0c little-endian", b)
		}
	}
	if got := DecodeTxRequest(b); got != r {
		t.Fatalf("decode = %+v, want %+v", got, r)
	}
}

func TestResponsesBytes(t *testing.T) {
	b := make([]byte, 8)
	TxResponse{ID: 0x0201, Status: RspError}.Encode(b)
	if b[0] != 1 || b[1] != 2 || b[2] != 0xff || b[3] != 0xff {
		t.Fatalf("tx response = % x", b[:4])
	}
	if got := DecodeTxResponse(b); got.ID != 0x0201 || got.Status != -1 {
		t.Fatalf("decode tx response = %+v", got)
	}
	rr := RxResponse{ID: 7, Offset: 0x10, Flags: RxMoreData | RxCsumBlank, Status: 4096}
	rr.Encode(b)
	want := []byte{7, 0, 0x10, 0, 6, 0, 0, 0x10}
	for i := range want {
		if b[i] != want[i] {
			t.Fatalf("rx response = % x, want % x", b, want)
		}
	}
	if DecodeRxResponse(b) != rr {
		t.Fatalf("rx response round trip")
	}
	RxRequest{ID: 0x0102, Gref: 0x0a0b0c0d}.Encode(b)
	want = []byte{2, 1, 0, 0, 0x0d, 0x0c, 0x0b, 0x0a}
	for i := range want {
		if b[i] != want[i] {
			t.Fatalf("rx request = % x, want % x", b, want)
		}
	}
}

func TestExtraInfoBytes(t *testing.T) {
	b := make([]byte, ExtraInfoSize)
	ExtraInfo{Type: ExtraTypeGSO, Flags: ExtraFlagMore, GSOSize: 1448, GSOType: GSOTypeTCPv6, GSOFeatures: 0}.Encode(b)
	want := []byte{1, 1, 0xa8, 0x05, 2, 0, 0, 0}
	for i := range want {
		if b[i] != want[i] {
			t.Fatalf("gso extra = % x, want % x", b, want)
		}
	}
	ExtraInfo{Type: ExtraTypeMcastAdd, Mcast: [6]byte{0x01, 0, 0x5e, 0, 0, 0xfb}}.Encode(b)
	e := DecodeExtraInfo(b)
	if e.Type != ExtraTypeMcastAdd || e.Mcast != [6]byte{0x01, 0, 0x5e, 0, 0, 0xfb} || b[2] != 0x01 || b[7] != 0xfb {
		t.Fatalf("mcast extra = % x -> %+v", b, e)
	}
}

func TestTapName(t *testing.T) {
	if got := TapName(3, 0); got != "vif3.0" {
		t.Errorf("TapName(3,0) = %q", got)
	}
	if got := TapName(65535, 4294967295); len(got) != 15 || got != "vif65535.429496" {
		t.Errorf("TapName(long) = %q, want 15-char prefix", got)
	}
}
