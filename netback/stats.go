package netback

import (
	"encoding/json"
	"sync/atomic"
)

// Stats are a vif's counters, named from the guest's side as netif names its
// rings: Tx is what the guest sent (its tx ring, to the TAP), Rx what it
// received (from the TAP, into its rx ring). Packets and bytes count frames
// delivered; Dropped counts frames taken off a ring or the TAP that could not
// be delivered (no rx buffers of the right kind, checksum setup failed, TAP
// refused); Errors counts malformed tx chains and failed grant copies.
type Stats struct {
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	TxDropped uint64 `json:"tx_dropped"`
	TxErrors  uint64 `json:"tx_errors"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	RxDropped uint64 `json:"rx_dropped"`
	RxErrors  uint64 `json:"rx_errors"`
	// Batching, for performance work: grant copy batches (each one copy
	// hypercall batch and at most one notification), notifications sent,
	// and packets that carried GSO (a TSO super-frame of up to 64 KiB).
	TxBatches uint64 `json:"tx_batches"`
	TxNotify  uint64 `json:"tx_notify"`
	TxGSO     uint64 `json:"tx_gso"`
	RxBatches uint64 `json:"rx_batches"`
	RxNotify  uint64 `json:"rx_notify"`
	RxGSO     uint64 `json:"rx_gso"`
}

// JSON returns s as the JSON object written to the drvdom-stats key.
func (s Stats) JSON() string {
	b, _ := json.Marshal(s) // cannot fail: fixed struct of integers
	return string(b)
}

func (s *Stats) add(o Stats) {
	s.TxPackets += o.TxPackets
	s.TxBytes += o.TxBytes
	s.TxDropped += o.TxDropped
	s.TxErrors += o.TxErrors
	s.RxPackets += o.RxPackets
	s.RxBytes += o.RxBytes
	s.RxDropped += o.RxDropped
	s.RxErrors += o.RxErrors
	s.TxBatches += o.TxBatches
	s.TxNotify += o.TxNotify
	s.TxGSO += o.TxGSO
	s.RxBatches += o.RxBatches
	s.RxNotify += o.RxNotify
	s.RxGSO += o.RxGSO
}

// counters are one queue's live counters: written by its two goroutines,
// read by anyone.
type counters struct {
	txPackets, txBytes, txDropped, txErrors atomic.Uint64
	rxPackets, rxBytes, rxDropped, rxErrors atomic.Uint64
	txBatches, txNotify, txGSO              atomic.Uint64
	rxBatches, rxNotify, rxGSO              atomic.Uint64
}

func (c *counters) snapshot() Stats {
	return Stats{
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		TxDropped: c.txDropped.Load(), TxErrors: c.txErrors.Load(),
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		RxDropped: c.rxDropped.Load(), RxErrors: c.rxErrors.Load(),
		TxBatches: c.txBatches.Load(), TxNotify: c.txNotify.Load(), TxGSO: c.txGSO.Load(),
		RxBatches: c.rxBatches.Load(), RxNotify: c.rxNotify.Load(), RxGSO: c.rxGSO.Load(),
	}
}
