package netback

import (
	"encoding/binary"
)

// PageSize is XEN_PAGE_SIZE: every data slot is one granted page.
const PageSize = 4096

// Wire sizes of the netif ring entries (netif.h); each ring page holds
// ring.Entries(4096, size) = 256 entries.
const (
	TxRequestSize  = 12 // struct netif_tx_request
	TxResponseSize = 4  // struct netif_tx_response
	RxRequestSize  = 8  // struct netif_rx_request
	RxResponseSize = 8  // struct netif_rx_response
	ExtraInfoSize  = 8  // struct netif_extra_info
	// TxEntrySize and RxEntrySize are the ring slot sizes: the union of
	// request and response of each ring.
	TxEntrySize = TxRequestSize
	RxEntrySize = RxRequestSize
)

// Field offsets of struct netif_tx_request.
const (
	offTxReqGref   = 0 // grant_ref_t gref
	offTxReqOffset = 4 // uint16_t offset
	offTxReqFlags  = 6 // uint16_t flags
	offTxReqID     = 8 // uint16_t id
	offTxReqSize   = 10
)

// Field offsets of struct netif_tx_response.
const (
	offTxRspID     = 0
	offTxRspStatus = 2
)

// Field offsets of struct netif_rx_request.
const (
	offRxReqID   = 0
	offRxReqGref = 4 // after 2 bytes of padding
)

// Field offsets of struct netif_rx_response.
const (
	offRxRspID     = 0
	offRxRspOffset = 2
	offRxRspFlags  = 4
	offRxRspStatus = 6
)

// Field offsets of struct netif_extra_info and its union.
const (
	offExtraType         = 0
	offExtraFlags        = 1
	offExtraGSOSize      = 2
	offExtraGSOType      = 4
	offExtraGSOPad       = 5
	offExtraGSOFeatures  = 6
	offExtraMcastAddr    = 2 // uint8_t addr[6]
	extraMcastAddrLength = 6
)

// NETTXF_* flags of a tx request.
const (
	TxCsumBlank     uint16 = 1 << 0 // NETTXF_csum_blank: checksum must be computed
	TxDataValidated uint16 = 1 << 1 // NETTXF_data_validated
	TxMoreData      uint16 = 1 << 2 // NETTXF_more_data: the packet continues in the next request
	TxExtraInfo     uint16 = 1 << 3 // NETTXF_extra_info: an extra-info slot follows
)

// NETRXF_* flags of an rx response.
const (
	RxDataValidated uint16 = 1 << 0 // NETRXF_data_validated
	RxCsumBlank     uint16 = 1 << 1 // NETRXF_csum_blank
	RxMoreData      uint16 = 1 << 2 // NETRXF_more_data
	RxExtraInfo     uint16 = 1 << 3 // NETRXF_extra_info
	RxGSOPrefix     uint16 = 1 << 4 // NETRXF_gso_prefix (not used by this backend)
)

// XEN_NETIF_EXTRA_TYPE_* and XEN_NETIF_EXTRA_FLAG_MORE.
const (
	ExtraTypeNone     uint8 = 0
	ExtraTypeGSO      uint8 = 1
	ExtraTypeMcastAdd uint8 = 2
	ExtraTypeMcastDel uint8 = 3
	ExtraTypeHash     uint8 = 4
	ExtraTypeXDP      uint8 = 5
	ExtraTypeMax      uint8 = 6
	ExtraFlagMore     uint8 = 1 << 0
)

// XEN_NETIF_GSO_TYPE_*.
const (
	GSOTypeNone  uint8 = 0
	GSOTypeTCPv4 uint8 = 1
	GSOTypeTCPv6 uint8 = 2
)

// XEN_NETIF_RSP_* response status values.
const (
	RspDropped int16 = -2
	RspError   int16 = -1
	RspOkay    int16 = 0
	RspNull    int16 = 1 // response slot of an extra-info request
)

// Limits.
const (
	// LegacySlotsMax is XEN_NETBK_LEGACY_SLOTS_MAX (= XEN_NETIF_NR_SLOTS_MIN):
	// the most tx requests one packet may use.
	LegacySlotsMax = 18
	// MaxTxSize is XEN_NETIF_MAX_TX_SIZE: a packet's total size is a u16.
	MaxTxSize = 0xFFFF
	// EthHeaderLen is ETH_HLEN: the first slot must hold the Ethernet header.
	EthHeaderLen = 14
	// McastMax is XEN_NETBK_MCAST_MAX: multicast addresses a vif may subscribe.
	McastMax = 64
)

// TxRequest is a decoded struct netif_tx_request.
type TxRequest struct {
	Gref   uint32
	Offset uint16
	Flags  uint16
	ID     uint16
	Size   uint16
}

// DecodeTxRequest decodes b (at least TxRequestSize bytes, already copied
// out of the shared ring).
func DecodeTxRequest(b []byte) TxRequest {
	_ = b[TxRequestSize-1]
	return TxRequest{
		Gref:   binary.LittleEndian.Uint32(b[offTxReqGref:]),
		Offset: binary.LittleEndian.Uint16(b[offTxReqOffset:]),
		Flags:  binary.LittleEndian.Uint16(b[offTxReqFlags:]),
		ID:     binary.LittleEndian.Uint16(b[offTxReqID:]),
		Size:   binary.LittleEndian.Uint16(b[offTxReqSize:]),
	}
}

// Encode writes r into b (the frontend side, and tests).
func (r TxRequest) Encode(b []byte) {
	_ = b[TxRequestSize-1]
	binary.LittleEndian.PutUint32(b[offTxReqGref:], r.Gref)
	binary.LittleEndian.PutUint16(b[offTxReqOffset:], r.Offset)
	binary.LittleEndian.PutUint16(b[offTxReqFlags:], r.Flags)
	binary.LittleEndian.PutUint16(b[offTxReqID:], r.ID)
	binary.LittleEndian.PutUint16(b[offTxReqSize:], r.Size)
}

// TxResponse is a struct netif_tx_response.
type TxResponse struct {
	ID     uint16
	Status int16
}

// Encode writes r into a tx ring slot.
func (r TxResponse) Encode(b []byte) {
	_ = b[TxResponseSize-1]
	binary.LittleEndian.PutUint16(b[offTxRspID:], r.ID)
	binary.LittleEndian.PutUint16(b[offTxRspStatus:], uint16(r.Status))
}

// DecodeTxResponse decodes a tx response slot.
func DecodeTxResponse(b []byte) TxResponse {
	_ = b[TxResponseSize-1]
	return TxResponse{
		ID:     binary.LittleEndian.Uint16(b[offTxRspID:]),
		Status: int16(binary.LittleEndian.Uint16(b[offTxRspStatus:])),
	}
}

// RxRequest is a struct netif_rx_request: an empty page the frontend posts.
type RxRequest struct {
	ID   uint16
	Gref uint32
}

// DecodeRxRequest decodes an rx request copied out of the ring.
func DecodeRxRequest(b []byte) RxRequest {
	_ = b[RxRequestSize-1]
	return RxRequest{
		ID:   binary.LittleEndian.Uint16(b[offRxReqID:]),
		Gref: binary.LittleEndian.Uint32(b[offRxReqGref:]),
	}
}

// Encode writes r into an rx ring slot (pad zeroed).
func (r RxRequest) Encode(b []byte) {
	_ = b[RxRequestSize-1]
	binary.LittleEndian.PutUint16(b[offRxReqID:], r.ID)
	binary.LittleEndian.PutUint16(b[offRxReqID+2:], 0)
	binary.LittleEndian.PutUint32(b[offRxReqGref:], r.Gref)
}

// RxResponse is a struct netif_rx_response. For a data slot Status is the
// number of bytes in the slot (>= 0) or a negative RSP_ value.
type RxResponse struct {
	ID     uint16
	Offset uint16
	Flags  uint16
	Status int16
}

// Encode writes r into an rx ring slot.
func (r RxResponse) Encode(b []byte) {
	_ = b[RxResponseSize-1]
	binary.LittleEndian.PutUint16(b[offRxRspID:], r.ID)
	binary.LittleEndian.PutUint16(b[offRxRspOffset:], r.Offset)
	binary.LittleEndian.PutUint16(b[offRxRspFlags:], r.Flags)
	binary.LittleEndian.PutUint16(b[offRxRspStatus:], uint16(r.Status))
}

// DecodeRxResponse decodes an rx response slot (the frontend side).
func DecodeRxResponse(b []byte) RxResponse {
	_ = b[RxResponseSize-1]
	return RxResponse{
		ID:     binary.LittleEndian.Uint16(b[offRxRspID:]),
		Offset: binary.LittleEndian.Uint16(b[offRxRspOffset:]),
		Flags:  binary.LittleEndian.Uint16(b[offRxRspFlags:]),
		Status: int16(binary.LittleEndian.Uint16(b[offRxRspStatus:])),
	}
}

// ExtraInfo is a struct netif_extra_info. Only the union member selected by
// Type is meaningful: GSO* for ExtraTypeGSO, Mcast for MCAST_ADD/DEL.
type ExtraInfo struct {
	Type        uint8
	Flags       uint8
	GSOSize     uint16
	GSOType     uint8
	GSOFeatures uint16
	Mcast       [extraMcastAddrLength]byte
}

// DecodeExtraInfo decodes an extra-info slot copied out of a ring.
func DecodeExtraInfo(b []byte) ExtraInfo {
	_ = b[ExtraInfoSize-1]
	e := ExtraInfo{
		Type:        b[offExtraType],
		Flags:       b[offExtraFlags],
		GSOSize:     binary.LittleEndian.Uint16(b[offExtraGSOSize:]),
		GSOType:     b[offExtraGSOType],
		GSOFeatures: binary.LittleEndian.Uint16(b[offExtraGSOFeatures:]),
	}
	copy(e.Mcast[:], b[offExtraMcastAddr:offExtraMcastAddr+extraMcastAddrLength])
	return e
}

// Encode writes e into b. The union is written from the member Type selects.
func (e ExtraInfo) Encode(b []byte) {
	_ = b[ExtraInfoSize-1]
	b[offExtraType] = e.Type
	b[offExtraFlags] = e.Flags
	switch e.Type {
	case ExtraTypeMcastAdd, ExtraTypeMcastDel:
		copy(b[offExtraMcastAddr:], e.Mcast[:])
	default:
		binary.LittleEndian.PutUint16(b[offExtraGSOSize:], e.GSOSize)
		b[offExtraGSOType] = e.GSOType
		b[offExtraGSOPad] = 0
		binary.LittleEndian.PutUint16(b[offExtraGSOFeatures:], e.GSOFeatures)
	}
}
