//go:build linux

package grant

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// checkPages asserts the simulator's page accounting: every page is either
// free exactly once or referenced.
func checkPages(t *testing.T, s *Sim) (free int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[int]bool, len(s.free))
	for _, p := range s.free {
		require.False(t, seen[p], "page %d free twice", p)
		require.Zero(t, s.refcnt[p], "free page %d still referenced", p)
		seen[p] = true
	}
	for p, n := range s.refcnt {
		require.GreaterOrEqual(t, n, int32(0))
		if n == 0 {
			require.True(t, seen[p], "unreferenced page %d not free", p)
		}
	}
	return len(s.free)
}

// TestSimConcurrent runs sharers, mappers, copiers and domain destruction
// at once (run with -race), then checks nothing leaked.
func TestSimConcurrent(t *testing.T) {
	s := NewSim()
	defer s.Close()
	const rounds = 200
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fe := uint16(10 + g)
			shr, mp := s.Sharer(fe), s.Mapper(back)
			buf := make([]byte, 64)
			for i := range rounds {
				sh, err := shr.Share(back, 1+i%3, i%2 == 0)
				if err != nil {
					t.Error(err)
					return
				}
				m, err := mp.Map(fe, sh.Refs(), i%2 == 0)
				if err != nil {
					t.Error(err)
					return
				}
				segs := []CopySeg{{Src: CopyPtr{Ref: sh.Refs()[0], Dom: fe}, Dst: CopyPtr{Local: buf}, Len: 64}}
				if err := mp.Copy(segs); err != nil || segs[0].Status != 0 {
					t.Error(err, segs[0].Status)
					return
				}
				if i%5 == 0 {
					_ = sh.Close() // revoke while mapped
				}
				if err := m.Unmap(); err != nil {
					t.Error(err)
					return
				}
				if i%5 != 0 {
					_ = sh.Close()
				}
			}
		}()
	}
	// A guest that keeps being created and destroyed while mapped.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range rounds / 4 {
			sh, err := s.Sharer(20).Share(back, 2, true)
			if err != nil {
				t.Error(err)
				return
			}
			m, err := s.Mapper(back).Map(20, sh.Refs(), true)
			if err != nil {
				t.Error(err)
				return
			}
			s.DestroyDomain(20)
			_ = m.Unmap()
			_ = sh.Close()
		}
	}()
	wg.Wait()
	require.Equal(t, 0, s.Mapped(back))
	for g := range 4 {
		require.Equal(t, 0, s.Shared(uint16(10+g)))
	}
	require.Equal(t, s.mem.pages(), checkPages(t, s), "every page back on the free list")
}
