package grant

import (
	"encoding/binary"
	"os"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// TestGntdevCopyEncode checks the batch gntdev would receive: bad and empty
// segments are answered locally and left out, the others are in the
// kernel's format, and the kernel's statuses go back to the right segments.
func TestGntdevCopyEncode(t *testing.T) {
	local := make([]byte, 100)
	segs := []CopySeg{
		{Src: CopyPtr{Local: local}, Dst: CopyPtr{Ref: 0x11223344, Dom: 7, Offset: 4000}, Len: 96},
		{Src: CopyPtr{Local: local}, Dst: CopyPtr{Ref: 1, Dom: 7, Offset: 4000}, Len: 97}, // crosses
		{Src: CopyPtr{Ref: 9, Dom: 3, Offset: 12}, Dst: CopyPtr{Local: local[10:]}, Len: 90},
		{Src: CopyPtr{Local: local}, Dst: CopyPtr{Local: local}, Len: 1}, // local -> local
		{Src: CopyPtr{Ref: 9, Dom: 3}, Dst: CopyPtr{Ref: 10, Dom: 4, Offset: 8}, Len: 0, Status: 5},
		{Src: CopyPtr{Ref: 9, Dom: 3}, Dst: CopyPtr{Ref: 10, Dom: 4, Offset: 8}, Len: 4},
	}
	var sc copyScratch
	n := sc.encode(segs)
	defer sc.pinner.Unpin()
	require.Equal(t, 3, n)
	require.Equal(t, []int{0, 2, 5}, sc.index)
	le := binary.LittleEndian
	require.Equal(t, uint32(3), le.Uint32(sc.hdr[gntdevCopyCount:]))
	require.Equal(t, uint64(uintptr(unsafe.Pointer(&sc.segs[0]))), le.Uint64(sc.hdr[gntdevCopySegments:]))

	e0 := sc.segs[0:copySegSize]
	require.Equal(t, uint64(uintptr(unsafe.Pointer(&local[0]))), le.Uint64(e0[copySegSource:]))
	require.Equal(t, uint32(0x11223344), le.Uint32(e0[copySegDest+copyForeignRef:]))
	require.Equal(t, uint16(4000), le.Uint16(e0[copySegDest+copyForeignOffset:]))
	require.Equal(t, uint16(7), le.Uint16(e0[copySegDest+copyForeignDomid:]))
	require.Equal(t, uint16(96), le.Uint16(e0[copySegLen:]))
	require.Equal(t, uint16(gntcopyDestGref), le.Uint16(e0[copySegFlags:]))

	e1 := sc.segs[copySegSize : 2*copySegSize]
	require.Equal(t, uint16(gntcopySourceGref), le.Uint16(e1[copySegFlags:]))
	require.Equal(t, uint32(9), le.Uint32(e1[copySegSource+copyForeignRef:]))
	require.Equal(t, uint16(12), le.Uint16(e1[copySegSource+copyForeignOffset:]))
	require.Equal(t, uint16(3), le.Uint16(e1[copySegSource+copyForeignDomid:]))
	require.Equal(t, uint64(uintptr(unsafe.Pointer(&local[10]))), le.Uint64(e1[copySegDest:]))

	e2 := sc.segs[2*copySegSize : 3*copySegSize]
	require.Equal(t, uint16(gntcopySourceGref|gntcopyDestGref), le.Uint16(e2[copySegFlags:]))

	require.Equal(t, int16(StatusBadCopyArg), segs[1].Status)
	require.Equal(t, int16(StatusBadCopyArg), segs[3].Status)
	require.Equal(t, int16(StatusOkay), segs[4].Status)

	// The kernel answers.
	le.PutUint16(e0[copySegStatus:], uint16(0))
	le.PutUint16(e1[copySegStatus:], uint16(0xFFFD)) // GNTST_bad_gntref
	le.PutUint16(e2[copySegStatus:], uint16(0xFFFF)) // GNTST_general_error
	sc.decode(segs)
	require.Equal(t, int16(StatusOkay), segs[0].Status)
	require.Equal(t, int16(StatusBadGntref), segs[2].Status)
	require.Equal(t, int16(StatusGeneralError), segs[5].Status)
}

// TestGntdevCopyEncodeNoAlloc: once the scratch has grown, a batch with up
// to five local buffers (what runtime.Pinner holds without growing) costs
// no allocation.
func TestGntdevCopyEncodeNoAlloc(t *testing.T) {
	segs := make([]CopySeg, 8)
	for i := range segs {
		segs[i] = CopySeg{Src: CopyPtr{Ref: Ref(100 + i), Dom: 3}, Dst: CopyPtr{Ref: Ref(i), Dom: 2, Offset: 512}, Len: 512}
		if i < 5 {
			segs[i].Src = CopyPtr{Local: make([]byte, 512)}
		}
	}
	var sc copyScratch
	run := func() {
		sc.encode(segs)
		sc.decode(segs)
		sc.pinner.Unpin()
	}
	run()
	if allocs := testing.AllocsPerRun(200, run); !raceEnabled {
		require.Zero(t, allocs)
	}
}

func TestOpenGrantDevices(t *testing.T) {
	if _, err := os.Stat(GntdevPath); err != nil {
		t.Skipf("needs real Xen: %v", err)
	}
	m, err := OpenGntdev()
	require.NoError(t, err)
	_, err = m.Map(0, nil, false)
	require.Error(t, err)
	require.NoError(t, m.Close())
	require.ErrorIs(t, m.Close(), ErrClosed)
}
