package journal

import (
	"sync/atomic"
	"unsafe"
)

// words gives atomic access to the 32-bit words of the journal's memory:
// the state words commit entries, so they are stored after the data they
// cover (an atomic store is a release; on amd64 it is XCHG, a full barrier).
type words struct{ base unsafe.Pointer }

// wordsOf returns the accessor for mem, which must be 8-byte aligned
// (mmap'd memory is page aligned).
func wordsOf(mem []byte) (words, bool) {
	p := unsafe.Pointer(unsafe.SliceData(mem))
	if len(mem) < HeaderSize || uintptr(p)%8 != 0 {
		return words{}, false
	}
	return words{p}, true
}

// load and store access the u32 at byte offset off, which callers keep
// 4-byte aligned and inside the memory (offsets come from the layout
// constants and entry indices below the validated ring size).
func (w words) load(off int) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Add(w.base, off)))
}

func (w words) store(off int, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Add(w.base, off)), v)
}
