package ring

import (
	"sync/atomic"
	"unsafe"
)

// indices gives atomic access to the four RING_IDX words at the start of
// the shared page. The memory is shared with another domain (or another end
// in a test), so every access to an index goes through sync/atomic: on amd64
// a load is a plain MOV (acquire under TSO) and a store is XCHG (a full
// barrier), which covers ring.h's wmb/rmb/mb.
//
// The store is a Swap, not a Store: the event handshake (push: store the
// producer, load the peer's event; final check: store the event, load the
// producer) needs the store visible before the next load. Under the race
// detector, sync/atomic on memory outside the Go heap (mapped pages) skips
// the detector and a Store is a plain MOV, which the store buffer lets a
// later load pass: both ends then miss each other and a backend sleeps on
// posted requests (TestRingEventHandshake in internal/xensim). A Swap stays
// XCHG there, and is XCHG in normal builds, as Store is.
type indices [4]uint32

// indicesOf returns the index words of the ring page at mem, which must be
// at least HeaderSize bytes; it returns nil unless mem is 4-byte aligned
// (mapped pages are page aligned; Go allocations of this size are 8-byte
// aligned).
func indicesOf(mem []byte) *indices {
	p := unsafe.Pointer(unsafe.SliceData(mem))
	if uintptr(p)%4 != 0 {
		return nil
	}
	return (*indices)(p)
}

func (x *indices) load(off int) uint32     { return atomic.LoadUint32(&x[off/4]) }
func (x *indices) store(off int, v uint32) { atomic.SwapUint32(&x[off/4], v) }
