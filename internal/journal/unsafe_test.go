package journal_test

import "unsafe"

// u64bytes views w as bytes (test helper for 8-byte aligned memory).
func u64bytes(w []uint64) []byte {
	if len(w) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), len(w)*8)
}
