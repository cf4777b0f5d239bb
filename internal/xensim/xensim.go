// Package xensim is a whole simulated Xen host for tests: an in-memory
// xenstored, a grant table of real shared memory and an event channel table,
// with domains that get a xenstore connection, a grant mapper and sharer and
// event channel handles of their own, exactly as processes in those domains
// would through /dev/xen.
package xensim

import (
	"sync"

	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/xenstore"
	"drvdom/xenstore/xenstored"
)

// Host is one simulated machine. Its parts may be used directly (for
// example Grants.Mapped for leak checks, Events.BoundPorts, Store.Dump).
type Host struct {
	Store  *xenstored.Server
	Grants *grant.Sim
	Events *evtchn.Sim

	mu   sync.Mutex
	doms map[uint16]*Domain
}

// New returns a host with no domains; create dom0 with NewDomain(0). Unmap
// notifications of the grant table are delivered through Events.
func New() *Host {
	h := &Host{
		Store:  xenstored.New(),
		Grants: grant.NewSim(),
		Events: evtchn.NewSim(),
		doms:   make(map[uint16]*Domain),
	}
	h.Grants.SetEvents(h.Events)
	return h
}

// Domain is one simulated domain. Each accessor opens a new handle, as a
// new process (or a new open of the device) in the domain would.
type Domain struct {
	ID   uint16
	host *Host
}

// NewDomain creates domain id: it is introduced to xenstored (its home
// /local/domain/<id> is created, owned by it, and @introduceDomain fires)
// and exists in the grant table. Calling it for an existing id returns the
// existing domain.
func (h *Host) NewDomain(id uint16) *Domain {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d := h.doms[id]; d != nil {
		return d
	}
	d := &Domain{ID: id, host: h}
	h.doms[id] = d
	h.Grants.AddDomain(id)
	h.Store.IntroduceDomain(id)
	return d
}

// Domain returns domain id, or nil if it does not exist.
func (h *Host) Domain(id uint16) *Domain {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.doms[id]
}

// Destroy destroys domain id as Xen does: its xenstore connections are
// closed and @releaseDomain fires, its grants are revoked (pages others
// still map stay valid until unmapped) and its mappings dropped, its event
// channels are closed (their peers fall back to unbound) and every handle it
// had is closed. Like Xen, it leaves /local/domain/<id> and the backend
// directories to the toolstack (the test) to remove.
func (h *Host) Destroy(id uint16) {
	h.mu.Lock()
	delete(h.doms, id)
	h.mu.Unlock()
	h.Store.ReleaseDomain(id)
	h.Grants.DestroyDomain(id)
	h.Events.DestroyDomain(id)
}

// Close stops the xenstored (every connection ends) and releases the grant
// table's memory (mappings and shares still held stay valid until unmapped).
func (h *Host) Close() {
	h.Store.Close()
	_ = h.Grants.Close()
}

// Xenstore returns a new xenstore connection of the domain (a xenbus open).
func (d *Domain) Xenstore() *xenstore.Client {
	return xenstore.NewClient(d.host.Store.Connect(d.ID))
}

// Mapper returns a new grant mapper of the domain (a gntdev open).
func (d *Domain) Mapper() grant.Mapper { return d.host.Grants.Mapper(d.ID) }

// Sharer returns a new grant sharer of the domain (a gntalloc open).
func (d *Domain) Sharer() grant.Sharer { return d.host.Grants.Sharer(d.ID) }

// Evtchn returns a new event channel handle of the domain (an evtchn open).
func (d *Domain) Evtchn() evtchn.Handle { return d.host.Events.Open(d.ID) }
