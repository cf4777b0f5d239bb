//go:build linux

package grant

import (
	"bytes"
	"context"
	"errors"
	"runtime/debug"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"drvdom/evtchn"
)

const (
	back  uint16 = 1 // driver domain
	guest uint16 = 2 // frontend
	other uint16 = 3
)

func share(t testing.TB, s *Sim, from, to uint16, pages int, writable bool) Share {
	t.Helper()
	sh, err := s.Sharer(from).Share(to, pages, writable)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sh.Close() })
	return sh
}

func TestSimShareMap(t *testing.T) {
	s := NewSim()
	sh := share(t, s, guest, back, 3, true)
	require.Len(t, sh.Refs(), 3)
	require.Len(t, sh.Bytes(), 3*PageSize)
	require.Equal(t, make([]byte, 3*PageSize), sh.Bytes(), "fresh share is zeroed")
	require.Equal(t, 3, s.Shared(guest))

	// Map out of order: the mapping follows refs' order.
	refs := sh.Refs()
	m, err := s.Mapper(back).Map(guest, []Ref{refs[2], refs[0]}, true)
	require.NoError(t, err)
	require.Equal(t, 2, s.Mapped(back))
	require.Len(t, m.Bytes(), 2*PageSize)

	copy(sh.Bytes()[2*PageSize:], "third page")
	copy(sh.Bytes(), "first page")
	require.Equal(t, "third page", string(m.Bytes()[:10]))
	require.Equal(t, "first page", string(m.Bytes()[PageSize:PageSize+10]))
	copy(m.Bytes()[PageSize+100:], "from backend")
	require.Equal(t, "from backend", string(sh.Bytes()[100:112]))

	require.NoError(t, m.Unmap())
	require.Equal(t, 0, s.Mapped(back))
	require.ErrorIs(t, m.Unmap(), ErrClosed)
	require.NoError(t, sh.Close())
	require.Equal(t, 0, s.Shared(guest))
}

func TestSimMapRefusals(t *testing.T) {
	s := NewSim()
	rw := share(t, s, guest, back, 1, true)
	ro := share(t, s, guest, back, 1, false)
	toOther := share(t, s, guest, other, 1, true)
	mp := s.Mapper(back)
	s.AddDomain(9)

	for _, tc := range []struct {
		name     string
		dom      uint16
		refs     []Ref
		writable bool
		st       Status
	}{
		{"never granted", guest, []Ref{rw.Refs()[0] + 100}, false, StatusBadGntref},
		{"domain without that ref", 9, []Ref{rw.Refs()[0]}, false, StatusBadGntref},
		{"granted to another domain", guest, toOther.Refs(), false, StatusGeneralError},
		{"writable map of read-only grant", guest, ro.Refs(), true, StatusGeneralError},
		{"unknown domain", 77, rw.Refs(), false, StatusBadDomain},
		{"one bad ref spoils the batch", guest, []Ref{rw.Refs()[0], 5}, false, StatusBadGntref},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mp.Map(tc.dom, tc.refs, tc.writable)
			require.ErrorIs(t, err, syscall.EINVAL)
			require.ErrorIs(t, err, tc.st)
			require.Equal(t, 0, s.Mapped(back), "nothing mapped by a refused map")
		})
	}
	_, err := mp.Map(guest, nil, false)
	require.ErrorIs(t, err, syscall.EINVAL)

	// What is allowed: read-only map of a read-only grant, and the grantee of toOther.
	m, err := mp.Map(guest, ro.Refs(), false)
	require.NoError(t, err)
	require.NoError(t, m.Unmap())
	m, err = s.Mapper(other).Map(guest, toOther.Refs(), true)
	require.NoError(t, err)
	require.NoError(t, m.Unmap())

	require.NoError(t, mp.Close())
	_, err = mp.Map(guest, rw.Refs(), false)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, mp.Copy(nil), ErrClosed)
}

func TestSimReadOnlyMappingFaults(t *testing.T) {
	s := NewSim()
	sh := share(t, s, guest, back, 1, true)
	m, err := s.Mapper(back).Map(guest, sh.Refs(), false)
	require.NoError(t, err)
	defer m.Unmap()
	sh.Bytes()[7] = 42
	require.Equal(t, byte(42), m.Bytes()[7], "reads see the page")

	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	faulted := func() (f bool) {
		defer func() { f = recover() != nil }()
		m.Bytes()[7] = 1
		return false
	}()
	require.True(t, faulted, "write through a read-only mapping must fault")
	require.Equal(t, byte(42), sh.Bytes()[7])
}

func TestSimCopy(t *testing.T) {
	s := NewSim()
	rw := share(t, s, guest, back, 2, true)
	ro := share(t, s, guest, back, 1, false)
	toOther := share(t, s, guest, other, 1, true)
	mp := s.Mapper(back)
	copy(ro.Bytes()[4000:], "read-only data")
	canary := bytes.Repeat([]byte{0xAA}, PageSize)
	copy(toOther.Bytes(), canary)

	g := func(sh Share, i int, off uint16) CopyPtr { return CopyPtr{Ref: sh.Refs()[i], Dom: guest, Offset: off} }
	local := make([]byte, 64)
	out := make([]byte, 64)
	copy(local, "hello from the backend")
	segs := []CopySeg{
		{Src: CopyPtr{Local: local}, Dst: g(rw, 1, 4090), Len: 6},                  // 0 local -> grant, at page end
		{Src: g(ro, 0, 4000), Dst: CopyPtr{Local: out}, Len: 14},                   // 1 read-only grant -> local
		{Src: g(ro, 0, 4000), Dst: g(rw, 0, 0), Len: 14},                           // 2 grant -> grant
		{Src: CopyPtr{Local: local}, Dst: g(ro, 0, 0), Len: 4},                     // 3 into read-only grant
		{Src: CopyPtr{Local: local}, Dst: g(rw, 0, 4000), Len: 97},                 // 4 crosses the page
		{Src: CopyPtr{Local: local}, Dst: CopyPtr{Local: out}, Len: 1},             // 5 local -> local
		{Src: CopyPtr{Local: local[:3]}, Dst: g(rw, 0, 0), Len: 4},                 // 6 short local
		{Src: CopyPtr{Local: local}, Dst: CopyPtr{Ref: 999, Dom: guest}, Len: 4},   // 7 bad ref
		{Src: CopyPtr{Local: local}, Dst: CopyPtr{Ref: 8, Dom: 55}, Len: 4},        // 8 bad domain
		{Src: CopyPtr{Local: local}, Dst: g(toOther, 0, 0), Len: 4},                // 9 granted to d3
		{Src: g(toOther, 0, 0), Dst: CopyPtr{Local: out}, Len: 4},                  // 10 granted to d3
		{Src: CopyPtr{Local: local}, Dst: g(rw, 1, 0), Len: 0},                     // 11 empty
		{Status: 77, Src: CopyPtr{Ref: 999, Dom: guest}, Dst: g(ro, 0, 0), Len: 1}, // 12 source checked first
	}
	require.NoError(t, mp.Copy(segs))
	want := []Status{StatusOkay, StatusOkay, StatusOkay, StatusGeneralError, StatusBadCopyArg, StatusBadCopyArg,
		StatusBadCopyArg, StatusBadGntref, StatusBadDomain, StatusGeneralError, StatusGeneralError, StatusOkay, StatusBadGntref}
	for i, w := range want {
		require.Equal(t, w, Status(segs[i].Status), "segment %d", i)
	}
	require.Equal(t, "hello ", string(rw.Bytes()[PageSize+4090:]))
	require.Equal(t, "read-only data", string(out[:14]))
	require.Equal(t, "read-only data", string(rw.Bytes()[:14]))
	require.Equal(t, make([]byte, 4000), ro.Bytes()[:4000], "read-only grant untouched")
	require.Equal(t, canary, toOther.Bytes(), "other domain's grant untouched")
	require.Equal(t, make([]byte, 96), rw.Bytes()[4000:4096], "crossing segment copied nothing")
}

func TestSimCopyNoAlloc(t *testing.T) {
	s := NewSim()
	rw := share(t, s, guest, back, 4, true)
	mp := s.Mapper(back)
	buf := make([]byte, PageSize)
	segs := make([]CopySeg, 8)
	for i := range segs {
		segs[i] = CopySeg{Src: CopyPtr{Local: buf[i*512:]}, Dst: CopyPtr{Ref: rw.Refs()[i%4], Dom: guest, Offset: uint16(i * 512)}, Len: 512}
	}
	allocs := testing.AllocsPerRun(200, func() {
		if err := mp.Copy(segs); err != nil {
			t.Fatal(err)
		}
	})
	if !raceEnabled {
		require.Zero(t, allocs)
	}
	for i := range segs {
		require.Zero(t, segs[i].Status)
	}
}

func BenchmarkSimCopy(b *testing.B) {
	s := NewSim()
	rw := share(b, s, guest, back, 1, true)
	mp := s.Mapper(back)
	buf := make([]byte, PageSize)
	segs := []CopySeg{{Src: CopyPtr{Local: buf}, Dst: CopyPtr{Ref: rw.Refs()[0], Dom: guest}, Len: PageSize}}
	b.ReportAllocs()
	b.SetBytes(PageSize)
	for b.Loop() {
		_ = mp.Copy(segs)
	}
}

func TestSimShareCloseRevokes(t *testing.T) {
	s := NewSim()
	sh, err := s.Sharer(guest).Share(back, 1, true)
	require.NoError(t, err)
	ref := sh.Refs()[0]
	mp := s.Mapper(back)
	m, err := mp.Map(guest, sh.Refs(), true)
	require.NoError(t, err)
	copy(sh.Bytes(), "still here")
	require.NoError(t, sh.Close())
	require.ErrorIs(t, sh.Close(), ErrClosed)
	require.Equal(t, 0, s.Shared(guest))

	_, err = mp.Map(guest, []Ref{ref}, true)
	require.ErrorIs(t, err, StatusBadGntref, "revoked for new maps")
	segs := []CopySeg{{Src: CopyPtr{Ref: ref, Dom: guest}, Dst: CopyPtr{Local: make([]byte, 4)}, Len: 4}}
	require.NoError(t, mp.Copy(segs))
	require.Equal(t, int16(StatusBadGntref), segs[0].Status)

	// The page lives on while mapped and is not handed out again.
	sh2 := share(t, s, guest, back, 1, true)
	require.NotEqual(t, ref, sh2.Refs()[0], "refs are not reused at once")
	require.Equal(t, "still here", string(m.Bytes()[:10]))
	copy(sh2.Bytes(), "new share!")
	require.Equal(t, "still here", string(m.Bytes()[:10]))
	require.NoError(t, m.Unmap())
	require.Equal(t, 0, s.Mapped(back))
}

func TestSimDestroyDomain(t *testing.T) {
	s := NewSim()
	sh := share(t, s, guest, back, 1, true)
	mp := s.Mapper(back)
	m, err := mp.Map(guest, sh.Refs(), true)
	require.NoError(t, err)
	copy(m.Bytes(), "ring")

	// Guest dies: the backend's mapping stays valid; the grants are gone.
	s.DestroyDomain(guest)
	require.Equal(t, "ring", string(m.Bytes()[:4]))
	require.Equal(t, 1, s.Mapped(back))
	_, err = mp.Map(guest, sh.Refs(), true)
	require.ErrorIs(t, err, StatusBadDomain)
	require.ErrorIs(t, err, syscall.EINVAL)
	segs := []CopySeg{{Src: CopyPtr{Ref: sh.Refs()[0], Dom: guest}, Dst: CopyPtr{Local: make([]byte, 4)}, Len: 4}}
	require.NoError(t, mp.Copy(segs))
	require.Equal(t, int16(StatusBadDomain), segs[0].Status)
	require.NoError(t, m.Unmap())
	require.Equal(t, 0, s.Mapped(back))

	// Backend dies with a mapping: its count drops, its slice no longer
	// reaches the guest's page, its handles are closed.
	sh2 := share(t, s, guest, back, 2, true)
	m2, err := mp.Map(guest, sh2.Refs(), true)
	require.NoError(t, err)
	require.Equal(t, 2, s.Mapped(back))
	s.DestroyDomain(back)
	require.Equal(t, 0, s.Mapped(back))
	m2.Bytes()[0] = 'x' // scratch memory: no fault
	require.Zero(t, sh2.Bytes()[0])
	_, err = mp.Map(guest, sh2.Refs(), true)
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, m2.Unmap())

	// A new domain with the same id starts clean.
	m3, err := s.Mapper(back).Map(guest, sh2.Refs(), false)
	require.NoError(t, err)
	require.Equal(t, 2, s.Mapped(back))
	require.NoError(t, m3.Unmap())
}

func TestSimUnmapNotify(t *testing.T) {
	ev := evtchn.NewSim()
	s := NewSim()
	s.SetEvents(ev)
	sh := share(t, s, guest, back, 2, true)
	m, err := s.Mapper(back).Map(guest, sh.Refs(), true)
	require.NoError(t, err)

	gh, bh := ev.Open(guest), ev.Open(back)
	gp, err := gh.BindUnbound(back)
	require.NoError(t, err)
	bp, err := bh.BindInterdomain(guest, gp)
	require.NoError(t, err)

	n := m.(UnmapNotifier)
	require.ErrorIs(t, n.SetUnmapNotify(2*PageSize, NotifySendEvent, bp), syscall.EINVAL, "offset outside")
	require.ErrorIs(t, n.SetUnmapNotify(0, 4, bp), syscall.EINVAL, "unknown action")
	require.NoError(t, n.SetUnmapNotify(PageSize+10, NotifyClearByte|NotifySendEvent, bp))
	sh.Bytes()[PageSize+10] = 1
	require.NoError(t, m.Unmap())
	require.Zero(t, sh.Bytes()[PageSize+10], "byte cleared")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ports := make([]evtchn.Port, 2)
	k, err := gh.Wait(ctx, ports)
	require.NoError(t, err)
	require.Equal(t, []evtchn.Port{gp}, ports[:k])

	ro, err := s.Mapper(back).Map(guest, sh.Refs(), false)
	require.NoError(t, err)
	require.ErrorIs(t, ro.(UnmapNotifier).SetUnmapNotify(0, NotifyClearByte, bp), syscall.EINVAL, "clear byte needs a writable mapping")
	require.NoError(t, ro.(UnmapNotifier).SetUnmapNotify(0, NotifySendEvent, bp))
	require.NoError(t, ro.Unmap())
	require.ErrorIs(t, ro.(UnmapNotifier).SetUnmapNotify(0, NotifySendEvent, bp), ErrClosed)
}

func TestSimSharerClose(t *testing.T) {
	s := NewSim()
	shr := s.Sharer(guest)
	_, err := shr.Share(back, 0, true)
	require.ErrorIs(t, err, syscall.EINVAL)
	a, err := shr.Share(back, 2, true)
	require.NoError(t, err)
	_, err = shr.Share(back, 1, false)
	require.NoError(t, err)
	require.Equal(t, 3, s.Shared(guest))
	require.NoError(t, shr.Close())
	require.Equal(t, 0, s.Shared(guest))
	require.ErrorIs(t, a.Close(), ErrClosed)
	_, err = shr.Share(back, 1, true)
	require.ErrorIs(t, err, ErrClosed)
	require.True(t, errors.Is(shr.Close(), ErrClosed))
}

func TestStatusError(t *testing.T) {
	require.Equal(t, "GNTST copy arguments cross page boundary", StatusBadCopyArg.Error())
	require.Equal(t, "GNTST -99", Status(-99).Error())
	require.Equal(t, "GNTST 5", Status(5).Error())
}

func TestSimClose(t *testing.T) {
	s := NewSim()
	sh, err := s.Sharer(guest).Share(back, 1, true)
	require.NoError(t, err)
	mp := s.Mapper(back)
	m, err := mp.Map(guest, sh.Refs(), true)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.Close(), ErrClosed)
	copy(m.Bytes(), "alive")
	require.Equal(t, "alive", string(sh.Bytes()[:5]), "held regions stay valid")
	_, err = mp.Map(guest, sh.Refs(), true)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, mp.Copy(nil), ErrClosed)
	_, err = s.Sharer(guest).Share(back, 1, true)
	require.ErrorIs(t, err, ErrClosed)
	require.NoError(t, m.Unmap())
	require.NoError(t, sh.Close())
}
