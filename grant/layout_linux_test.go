package grant

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// ioc is _IOC from include/uapi/asm-generic/ioctl.h (x86 and arm64).
func ioc(dir, typ, nr, size uintptr) uintptr { return dir<<30 | size<<16 | typ<<8 | nr }

const iocNone = 0

// Mirrors of the uapi structs with the C field types, laid out by the Go
// compiler (same rules as the C ABI on 64-bit Linux): an independent check
// of the hand-written offsets.
type (
	cGrantRef    struct{ domid, ref uint32 }
	cMapGrantRef struct {
		count, pad uint32
		index      uint64
		refs       [1]cGrantRef
	}
	cUnmapGrantRef struct {
		index      uint64
		count, pad uint32
	}
	cUnmapNotify struct {
		index        uint64
		action, port uint32
	}
	cForeign struct {
		ref    uint32
		offset uint16
		domid  uint16
	}
	cCopySeg struct {
		source, dest uintptr // union { void *virt; cForeign foreign; }
		len, flags   uint16
		status       int16
	}
	cGrantCopy struct {
		count    uint32
		segments uintptr
	}
	cAllocGref struct {
		domid, flags uint16
		count        uint32
		index        uint64
		grefIDs      [1]uint32
	}
	cDeallocGref struct {
		index uint64
		count uint32
	}
)

func TestGntdevLayout(t *testing.T) {
	require.Equal(t, uintptr(8), unsafe.Sizeof(uintptr(0)), "layouts are for 64-bit")
	var gr cGrantRef
	require.EqualValues(t, unsafe.Sizeof(gr), gntdevGrantRefSize)
	require.EqualValues(t, unsafe.Offsetof(gr.domid), gntdevGrantRefDomid)
	require.EqualValues(t, unsafe.Offsetof(gr.ref), gntdevGrantRefRef)

	var m cMapGrantRef
	require.EqualValues(t, unsafe.Sizeof(m), gntdevMapSize)
	require.EqualValues(t, unsafe.Offsetof(m.count), gntdevMapCount)
	require.EqualValues(t, unsafe.Offsetof(m.index), gntdevMapIndex)
	require.EqualValues(t, unsafe.Offsetof(m.refs), gntdevMapRefs)

	var u cUnmapGrantRef
	require.EqualValues(t, unsafe.Sizeof(u), gntdevUnmapSize)
	require.EqualValues(t, unsafe.Offsetof(u.index), gntdevUnmapIndex)
	require.EqualValues(t, unsafe.Offsetof(u.count), gntdevUnmapCount)

	var n cUnmapNotify
	require.EqualValues(t, unsafe.Sizeof(n), unmapNotifySize)
	require.EqualValues(t, unsafe.Offsetof(n.index), unmapNotifyIndex)
	require.EqualValues(t, unsafe.Offsetof(n.action), unmapNotifyAction)
	require.EqualValues(t, unsafe.Offsetof(n.port), unmapNotifyPort)

	var f cForeign
	require.EqualValues(t, unsafe.Sizeof(f), unsafe.Sizeof(uintptr(0)), "foreign fills the union")
	require.EqualValues(t, unsafe.Offsetof(f.ref), copyForeignRef)
	require.EqualValues(t, unsafe.Offsetof(f.offset), copyForeignOffset)
	require.EqualValues(t, unsafe.Offsetof(f.domid), copyForeignDomid)
	var s cCopySeg
	require.EqualValues(t, unsafe.Sizeof(s), copySegSize)
	require.EqualValues(t, unsafe.Offsetof(s.source), copySegSource)
	require.EqualValues(t, unsafe.Offsetof(s.dest), copySegDest)
	require.EqualValues(t, unsafe.Offsetof(s.len), copySegLen)
	require.EqualValues(t, unsafe.Offsetof(s.flags), copySegFlags)
	require.EqualValues(t, unsafe.Offsetof(s.status), copySegStatus)
	require.EqualValues(t, 1, gntcopySourceGref)
	require.EqualValues(t, 2, gntcopyDestGref)

	var c cGrantCopy
	require.EqualValues(t, unsafe.Sizeof(c), gntdevCopySize)
	require.EqualValues(t, unsafe.Offsetof(c.count), gntdevCopyCount)
	require.EqualValues(t, unsafe.Offsetof(c.segments), gntdevCopySegments)

	// The numbers the uapi headers give (sizes of 64-bit Linux).
	require.EqualValues(t, 24, gntdevMapSize)
	require.EqualValues(t, 16, gntdevUnmapSize)
	require.EqualValues(t, 16, unmapNotifySize)
	require.EqualValues(t, 24, copySegSize)
	require.EqualValues(t, 16, gntdevCopySize)
	require.EqualValues(t, 1, NotifyClearByte) // UNMAP_NOTIFY_CLEAR_BYTE
	require.EqualValues(t, 2, NotifySendEvent) // UNMAP_NOTIFY_SEND_EVENT
}

func TestGntallocLayout(t *testing.T) {
	var a cAllocGref
	require.EqualValues(t, unsafe.Sizeof(a), gntallocAllocSize)
	require.EqualValues(t, unsafe.Offsetof(a.domid), gntallocAllocDomid)
	require.EqualValues(t, unsafe.Offsetof(a.flags), gntallocAllocFlags)
	require.EqualValues(t, unsafe.Offsetof(a.count), gntallocAllocCount)
	require.EqualValues(t, unsafe.Offsetof(a.index), gntallocAllocIndex)
	require.EqualValues(t, unsafe.Offsetof(a.grefIDs), gntallocAllocRefs)
	var d cDeallocGref
	require.EqualValues(t, unsafe.Sizeof(d), gntallocDeallocSize)
	require.EqualValues(t, unsafe.Offsetof(d.index), gntallocDeallocIndex)
	require.EqualValues(t, unsafe.Offsetof(d.count), gntallocDeallocCount)
	require.EqualValues(t, 24, gntallocAllocSize)
	require.EqualValues(t, 16, gntallocDeallocSize)
	require.EqualValues(t, 1, gntallocFlagWritable)
}

func TestGrantIoctlNumbers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		got      uintptr
		nr, size uintptr
	}{
		{"IOCTL_GNTDEV_MAP_GRANT_REF", ioctlGntdevMapGrantRef, 0, unsafe.Sizeof(cMapGrantRef{})},
		{"IOCTL_GNTDEV_UNMAP_GRANT_REF", ioctlGntdevUnmapGrantRef, 1, unsafe.Sizeof(cUnmapGrantRef{})},
		{"IOCTL_GNTDEV_SET_UNMAP_NOTIFY", ioctlGntdevSetUnmapNotify, 7, unsafe.Sizeof(cUnmapNotify{})},
		{"IOCTL_GNTDEV_GRANT_COPY", ioctlGntdevGrantCopy, 8, unsafe.Sizeof(cGrantCopy{})},
		{"IOCTL_GNTALLOC_ALLOC_GREF", ioctlGntallocAllocGref, 5, unsafe.Sizeof(cAllocGref{})},
		{"IOCTL_GNTALLOC_DEALLOC_GREF", ioctlGntallocDeallocGref, 6, unsafe.Sizeof(cDeallocGref{})},
		{"IOCTL_GNTALLOC_SET_UNMAP_NOTIFY", ioctlGntallocSetUnmapNotify, 7, unsafe.Sizeof(cUnmapNotify{})},
	} {
		require.Equal(t, ioc(iocNone, 'G', tc.nr, tc.size), tc.got, tc.name)
	}
}
