package blkback

import (
	"testing"

	"drvdom/grant"
)

// TestPgrantLRU: the table evicts the least recently used grants not in
// use, 5% (at least one) at a time, and refuses (nil) when all are in use.
func TestPgrantLRU(t *testing.T) {
	sim := grant.NewSim()
	sh, err := sim.Sharer(2).Share(1, 30, true)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	refs := sh.Refs()
	var st Stats
	tab := newPgrantTable(2, sim.Mapper(1), 4, &st)
	get := func(i int) *pgrant {
		t.Helper()
		p, err := tab.get(uint32(refs[i]))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for i := 0; i < 4; i++ {
		get(i).inUse.Add(-1)
	}
	get(0).inUse.Add(-1) // 0 is now the most recent; 1 the least
	if p := get(4); p == nil {
		t.Fatal("no room made")
	}
	if _, ok := tab.byRef[uint32(refs[1])]; ok {
		t.Error("least recently used grant 1 survived the purge")
	}
	if _, ok := tab.byRef[uint32(refs[0])]; !ok {
		t.Error("recently used grant 0 purged")
	}
	if tab.len() != 4 || st.PersistentPurged.Load() != 1 || sim.Mapped(1) != 4 {
		t.Fatalf("len %d purged %d mapped %d", tab.len(), st.PersistentPurged.Load(), sim.Mapped(1))
	}
	// Everything in use: no eviction, nil (map for this request only).
	for _, i := range []int{0, 2, 3} {
		get(i)
	}
	if p := get(5); p != nil {
		t.Fatal("evicted a grant in use")
	}
	if st.PersistentOverflow.Load() != 1 {
		t.Fatalf("overflow %d", st.PersistentOverflow.Load())
	}
	// Hits on a mapped ref map nothing new.
	before := sim.Mapped(1)
	get(0).inUse.Add(-1)
	if sim.Mapped(1) != before || st.PersistentHits.Load() == 0 {
		t.Fatal("a hit mapped again")
	}
	// A ref that was never granted is an error, not a panic.
	for _, p := range tab.byRef {
		p.inUse.Store(0)
	}
	if p, err := tab.get(1 << 30); err == nil {
		t.Fatalf("mapped a bogus ref: %v, len %d", p, tab.len())
	}
	if err := tab.close(); err != nil {
		t.Fatal(err)
	}
	if sim.Mapped(1) != 0 {
		t.Fatalf("%d pages still mapped after close", sim.Mapped(1))
	}
}
