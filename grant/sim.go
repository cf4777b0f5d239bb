package grant

import (
	"fmt"
	"sync"
	"syscall"

	"drvdom/evtchn"
)

// firstRef is the first grant reference the simulator hands out: Linux keeps
// refs 0..7 (GNTTAB_NR_RESERVED_ENTRIES) for the toolstack.
const firstRef Ref = 8

// maxSharePages bounds one Share, as gntalloc's limit does.
const maxSharePages = 1 << 16

// Sim is a simulated host-wide grant table. Every granted page is a page of
// one memfd: the sharer and every mapper see the same physical memory, and a
// read-only mapping is PROT_READ, so a write through it faults as on Xen.
// Map and Copy refuse exactly where Xen does (see Map and Copy). Safe for
// concurrent use. Only Linux is supported (memfd); elsewhere every Share and
// Map fails.
type Sim struct {
	mu     sync.Mutex
	mem    simMem
	free   []int   // free page indices
	refcnt []int32 // per page: 1 for the share that owns it + 1 per mapping
	doms   map[uint16]*simDom
	events *evtchn.Sim
	closed bool
}

type simGrant struct {
	remote   uint16
	writable bool
	page     int
}

type simDom struct {
	grants  map[Ref]simGrant
	nextRef Ref
	mapped  int // pages mapped through this domain's mappers
	shared  int // pages shared through this domain's sharers
	regions map[*simRegion]struct{}
	mappers map[*simMapper]struct{}
	sharers map[*simSharer]struct{}
}

// NewSim returns an empty grant table.
func NewSim() *Sim { return &Sim{doms: make(map[uint16]*simDom)} }

// SetEvents wires unmap notifications (NotifySendEvent) to an event channel
// table; without it they are dropped.
func (s *Sim) SetEvents(ev *evtchn.Sim) {
	s.mu.Lock()
	s.events = ev
	s.mu.Unlock()
}

// Close releases the simulator's memory: every later Share, Map and Copy
// fails with ErrClosed. Mappings and shares still held stay readable and
// writable (their pages live on in the kernel) until unmapped.
func (s *Sim) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	return s.mem.close()
}

// AddDomain makes dom exist (with an empty grant table), so that a Map of
// its refs fails with GNTST_bad_gntref rather than GNTST_bad_domain.
func (s *Sim) AddDomain(dom uint16) {
	s.mu.Lock()
	s.domLocked(dom)
	s.mu.Unlock()
}

func (s *Sim) domLocked(id uint16) *simDom {
	d := s.doms[id]
	if d == nil {
		d = &simDom{
			grants:  make(map[Ref]simGrant),
			nextRef: firstRef,
			regions: make(map[*simRegion]struct{}),
			mappers: make(map[*simMapper]struct{}),
			sharers: make(map[*simSharer]struct{}),
		}
		s.doms[id] = d
	}
	return d
}

// Mapper returns a new mapper of domain dom (as if a process of dom opened
// /dev/xen/gntdev).
func (s *Sim) Mapper(dom uint16) Mapper {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := &simMapper{sim: s, dom: dom}
	s.domLocked(dom).mappers[m] = struct{}{}
	return m
}

// Sharer returns a new sharer of domain dom (as if a process of dom opened
// /dev/xen/gntalloc).
func (s *Sim) Sharer(dom uint16) Sharer {
	s.mu.Lock()
	defer s.mu.Unlock()
	sh := &simSharer{sim: s, dom: dom, shares: make(map[*simRegion]struct{})}
	s.domLocked(dom).sharers[sh] = struct{}{}
	return sh
}

// Mapped reports how many pages dom has mapped now, for leak checks.
func (s *Sim) Mapped(dom uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.doms[dom]; d != nil {
		return d.mapped
	}
	return 0
}

// Shared reports how many pages dom shares now, for leak checks.
func (s *Sim) Shared(dom uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.doms[dom]; d != nil {
		return d.shared
	}
	return 0
}

// DestroyDomain revokes everything of dom: its grants disappear (new maps and
// copies fail with GNTST_bad_domain; pages another domain still has mapped
// stay valid until unmapped, as on Xen), its mappings and shares are
// replaced by private scratch memory (its leftover code can neither reach the
// pages nor fault), and its mappers and sharers are closed. No unmap
// notifications are sent: a destroyed domain's kernel does not run.
func (s *Sim) DestroyDomain(dom uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.doms[dom]
	if d == nil {
		return
	}
	for m := range d.mappers {
		m.closed = true
	}
	for sh := range d.sharers {
		sh.closed = true
	}
	for r := range d.regions {
		// The region stays reserved until its owner calls Unmap/Close.
		_ = scrubRegion(r.mem, r.writable)
		r.scrubbed = true
		for _, p := range r.pages {
			s.decrefLocked(p)
		}
	}
	delete(s.doms, dom)
}

func (s *Sim) decrefLocked(p int) {
	s.refcnt[p]--
	if s.refcnt[p] == 0 {
		s.free = append(s.free, p)
	}
}

// allocLocked takes a zeroed page.
func (s *Sim) allocLocked() (int, error) {
	if len(s.free) == 0 {
		first := s.mem.pages()
		if err := s.mem.grow(); err != nil {
			return 0, err
		}
		for p := s.mem.pages() - 1; p >= first; p-- {
			s.free = append(s.free, p)
		}
		s.refcnt = append(s.refcnt, make([]int32, s.mem.pages()-len(s.refcnt))...)
	}
	p := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	clear(s.mem.page(p))
	s.refcnt[p] = 1
	return p, nil
}

// mapError is what a refused map returns: EINVAL (gntdev's mmap result) and
// the GNTST status Xen gave.
func mapError(self, dom uint16, ref Ref, st Status) error {
	return fmt.Errorf("grant: d%d map d%d ref %d: %w (%w)", self, dom, ref, st, syscall.EINVAL)
}

// grantLocked resolves ref of dom for access by self, as Xen's
// acquire_grant_for_copy/map_grant_ref do: unknown domain GNTST_bad_domain,
// unknown ref GNTST_bad_gntref, granted to another domain or write access to
// a read-only grant GNTST_general_error ("Bad flags or dom", "Attempt to
// write-pin a r/o grant entry" in xen/common/grant_table.c).
func (s *Sim) grantLocked(self, dom uint16, ref Ref, write bool) (simGrant, Status) {
	d := s.doms[dom]
	if d == nil {
		return simGrant{}, StatusBadDomain
	}
	g, ok := d.grants[ref]
	if !ok {
		return simGrant{}, StatusBadGntref
	}
	if g.remote != self || (write && !g.writable) {
		return simGrant{}, StatusGeneralError
	}
	return g, StatusOkay
}

type simMapper struct {
	sim    *Sim
	dom    uint16
	closed bool // under sim.mu
}

// Map refuses (with EINVAL and the GNTST status) an empty batch, a domain
// that does not exist, a ref not granted, a ref granted to another domain
// and a writable map of a read-only grant; nothing is mapped then.
func (m *simMapper) Map(dom uint16, refs []Ref, writable bool) (Mapping, error) {
	s := m.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.closed || s.closed {
		return nil, ErrClosed
	}
	if len(refs) == 0 || len(refs) > maxSharePages {
		return nil, fmt.Errorf("grant: d%d map %d refs of d%d: %w", m.dom, len(refs), dom, syscall.EINVAL)
	}
	pages := make([]int, len(refs))
	for i, ref := range refs {
		g, st := s.grantLocked(m.dom, dom, ref, writable)
		if st != StatusOkay {
			return nil, mapError(m.dom, dom, ref, st)
		}
		pages[i] = g.page
	}
	mem, err := s.mem.mapPages(pages, writable)
	if err != nil {
		return nil, fmt.Errorf("grant: d%d map d%d: %w", m.dom, dom, err)
	}
	for _, p := range pages {
		s.refcnt[p]++
	}
	d := s.domLocked(m.dom)
	d.mapped += len(pages)
	r := &simRegion{sim: s, dom: m.dom, mem: mem, pages: pages, writable: writable}
	d.regions[r] = struct{}{}
	return simMapping{r}, nil
}

// Copy performs the batch under one lock; each segment gets GNTST_bad_copy_arg
// for a bad shape (both sides local, a local side shorter than Len, a grant
// side crossing its page) and otherwise the status of resolving its source,
// then its destination (see grantLocked). It allocates nothing.
func (m *simMapper) Copy(segs []CopySeg) error {
	s := m.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.closed || s.closed {
		return ErrClosed
	}
	for i := range segs {
		sg := &segs[i]
		st := checkSeg(sg)
		var src, dst []byte
		if st == StatusOkay {
			src, st = s.copySideLocked(m.dom, &sg.Src, sg.Len, false)
		}
		if st == StatusOkay {
			dst, st = s.copySideLocked(m.dom, &sg.Dst, sg.Len, true)
		}
		if st == StatusOkay {
			copy(dst, src)
		}
		sg.Status = int16(st)
	}
	return nil
}

// copySideLocked returns the n bytes one (shape-checked) side designates.
func (s *Sim) copySideLocked(self uint16, p *CopyPtr, n uint16, write bool) ([]byte, Status) {
	if p.Local != nil {
		return p.Local[:n], StatusOkay
	}
	g, st := s.grantLocked(self, p.Dom, p.Ref, write)
	if st != StatusOkay {
		return nil, st
	}
	return s.mem.page(g.page)[p.Offset : int(p.Offset)+int(n)], StatusOkay
}

// Close closes the mapper; mappings made through it stay valid until
// unmapped, as with gntdev.
func (m *simMapper) Close() error {
	s := m.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true
	if d := s.doms[m.dom]; d != nil {
		delete(d.mappers, m)
	}
	return nil
}

type simSharer struct {
	sim    *Sim
	dom    uint16
	closed bool // under sim.mu
	shares map[*simRegion]struct{}
}

func (sh *simSharer) Share(remote uint16, pages int, writable bool) (Share, error) {
	s := sh.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh.closed || s.closed {
		return nil, ErrClosed
	}
	if pages <= 0 || pages > maxSharePages {
		return nil, fmt.Errorf("grant: d%d share %d pages: %w", sh.dom, pages, syscall.EINVAL)
	}
	idx := make([]int, 0, pages)
	undo := func() {
		for _, p := range idx {
			s.decrefLocked(p)
		}
	}
	for range pages {
		p, err := s.allocLocked()
		if err != nil {
			undo()
			return nil, fmt.Errorf("grant: d%d share: %w", sh.dom, err)
		}
		idx = append(idx, p)
	}
	mem, err := s.mem.mapPages(idx, true)
	if err != nil {
		undo()
		return nil, fmt.Errorf("grant: d%d share: %w", sh.dom, err)
	}
	d := s.domLocked(sh.dom)
	refs := make([]Ref, pages)
	for i, p := range idx {
		refs[i] = d.nextRef
		d.grants[d.nextRef] = simGrant{remote: remote, writable: writable, page: p}
		d.nextRef++
	}
	d.shared += pages
	r := &simRegion{sim: s, dom: sh.dom, mem: mem, pages: idx, writable: true, refs: refs, sharer: sh}
	d.regions[r] = struct{}{}
	sh.shares[r] = struct{}{}
	return simShare{r}, nil
}

// Close ends every share made through it (as closing gntalloc does once its
// mappings are gone).
func (sh *simSharer) Close() error {
	s := sh.sim
	s.mu.Lock()
	if sh.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	sh.closed = true
	var rs []*simRegion
	for r := range sh.shares {
		rs = append(rs, r)
	}
	if d := s.doms[sh.dom]; d != nil {
		delete(d.sharers, sh)
	}
	s.mu.Unlock()
	for _, r := range rs {
		_ = r.release()
	}
	return nil
}

type simNotify struct {
	action UnmapAction
	port   evtchn.Port
	off    uint32
}

// simRegion is one mapping or one share: a contiguous region of memfd pages.
type simRegion struct {
	sim      *Sim
	dom      uint16
	mem      []byte
	pages    []int
	writable bool
	refs     []Ref      // share only
	sharer   *simSharer // share only
	notify   []simNotify
	released bool // Unmap/Close done
	scrubbed bool // domain destroyed: pages dropped, mem is scratch
}

func (r *simRegion) Bytes() []byte { return r.mem }

func (r *simRegion) SetUnmapNotify(offset uint32, action UnmapAction, port evtchn.Port) error {
	s := r.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.released || r.scrubbed {
		return ErrClosed
	}
	if int64(offset) >= int64(len(r.mem)) || action&^(NotifyClearByte|NotifySendEvent) != 0 ||
		(action&NotifyClearByte != 0 && !r.writable) {
		return fmt.Errorf("grant: d%d unmap notify offset %d action %#x: %w", r.dom, offset, action, syscall.EINVAL)
	}
	if r.notify == nil {
		r.notify = make([]simNotify, len(r.pages))
	}
	r.notify[offset/PageSize] = simNotify{action: action, port: port, off: offset}
	return nil
}

// release unmaps a mapping or ends a share: notifications first (clear
// byte, then the event after the unlock), then grants, pages, the region.
func (r *simRegion) release() error {
	s := r.sim
	s.mu.Lock()
	if r.released {
		s.mu.Unlock()
		return ErrClosed
	}
	r.released = true
	var events []simNotify
	if !r.scrubbed {
		for _, n := range r.notify {
			if n.action&NotifyClearByte != 0 {
				r.mem[n.off] = 0
			}
			if n.action&NotifySendEvent != 0 {
				events = append(events, n)
			}
		}
		d := s.doms[r.dom]
		if r.sharer != nil {
			for _, ref := range r.refs {
				delete(d.grants, ref)
			}
			d.shared -= len(r.pages)
			delete(r.sharer.shares, r)
		} else {
			d.mapped -= len(r.pages)
		}
		delete(d.regions, r)
		for _, p := range r.pages {
			s.decrefLocked(p)
		}
	}
	err := unmapRegion(r.mem)
	ev := s.events
	s.mu.Unlock()
	if ev != nil {
		for _, n := range events {
			_ = ev.NotifyPort(r.dom, n.port) // an unbound port drops it, as in Xen
		}
	}
	if err != nil {
		return fmt.Errorf("grant: d%d unmap: %w", r.dom, err)
	}
	return nil
}

type simMapping struct{ *simRegion }

func (m simMapping) Unmap() error { return m.release() }

type simShare struct{ *simRegion }

func (sh simShare) Refs() []Ref  { return sh.refs }
func (sh simShare) Close() error { return sh.release() }
