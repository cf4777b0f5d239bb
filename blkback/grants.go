package blkback

import (
	"errors"
	"sync/atomic"

	"drvdom/grant"
)

// DefaultMaxPersistentGrants is the per-ring bound on persistently mapped
// grants: Linux's xen_blkif_max_pgrants (32 ring slots * 11 segments * 3).
const DefaultMaxPersistentGrants = 1056

// lruPercentClean is how much of the table one purge frees (Linux's
// LRU_PERCENT_CLEAN).
const lruPercentClean = 5

// pgrant is one persistently mapped grant.
type pgrant struct {
	ref        uint32
	m          grant.Mapping
	page       []byte
	inUse      atomic.Int32 // requests using it now; purge skips these
	prev, next *pgrant      // LRU list: head.next is the most recent
}

// pgrantTable is a ring's persistent grants: bounded, least recently used
// purged first. Lookups, inserts and purges run on the ring's goroutine;
// inUse is dropped by whoever completes a request.
type pgrantTable struct {
	dom   uint16
	mp    grant.Mapper
	max   int
	byRef map[uint32]*pgrant
	head  pgrant // sentinel of the LRU list
	refs  [1]grant.Ref

	hits, misses, purged, overflow *atomic.Uint64
}

func newPgrantTable(dom uint16, mp grant.Mapper, max int, st *Stats) *pgrantTable {
	t := &pgrantTable{dom: dom, mp: mp, max: max, byRef: make(map[uint32]*pgrant, max)}
	t.head.prev, t.head.next = &t.head, &t.head
	t.hits, t.misses, t.purged, t.overflow = &st.PersistentHits, &st.PersistentMisses, &st.PersistentPurged, &st.PersistentOverflow
	return t
}

func (t *pgrantTable) unlink(p *pgrant) {
	p.prev.next, p.next.prev = p.next, p.prev
}

func (t *pgrantTable) pushFront(p *pgrant) {
	p.prev, p.next = &t.head, t.head.next
	t.head.next.prev = p
	t.head.next = p
}

// get returns the page of ref mapped persistently, mapping it if it is new,
// with inUse raised. It returns nil, nil when the table is full of grants in
// use: the caller maps ref for this request only.
func (t *pgrantTable) get(ref uint32) (*pgrant, error) {
	if p := t.byRef[ref]; p != nil {
		t.hits.Add(1)
		t.unlink(p)
		t.pushFront(p)
		p.inUse.Add(1)
		return p, nil
	}
	t.misses.Add(1)
	if len(t.byRef) >= t.max {
		t.purge()
		if len(t.byRef) >= t.max {
			t.overflow.Add(1)
			return nil, nil
		}
	}
	t.refs[0] = grant.Ref(ref)
	m, err := t.mp.Map(t.dom, t.refs[:], true)
	if err != nil {
		return nil, err
	}
	p := &pgrant{ref: ref, m: m, page: m.Bytes()[:PageSize:PageSize]}
	p.inUse.Store(1)
	t.byRef[ref] = p
	t.pushFront(p)
	return p, nil
}

// purge unmaps the least recently used grants not in use: 5% of the table,
// at least one.
func (t *pgrantTable) purge() {
	n := max(t.max*lruPercentClean/100, 1)
	for p := t.head.prev; p != &t.head && n > 0; {
		prev := p.prev
		if p.inUse.Load() == 0 {
			t.unlink(p)
			delete(t.byRef, p.ref)
			p.m.Unmap() // the sim and gntdev only fail for a double unmap
			t.purged.Add(1)
			n--
		}
		p = prev
	}
}

// len returns how many grants are mapped persistently.
func (t *pgrantTable) len() int { return len(t.byRef) }

// close unmaps every grant (the ring has stopped: none is in use).
func (t *pgrantTable) close() error {
	var errs []error
	for ref, p := range t.byRef {
		if err := p.m.Unmap(); err != nil {
			errs = append(errs, err)
		}
		delete(t.byRef, ref)
	}
	t.head.prev, t.head.next = &t.head, &t.head
	return errors.Join(errs...)
}
