package evtchn

import (
	"context"
	"fmt"
	"sync"
	"syscall"
)

// Sim is a simulated host-wide event channel table with Xen's semantics:
// per-domain port numbers from 1 (lowest free first), unbound ports offered to
// one remote domain, pending/masked bits, and the fall back to unbound of the
// surviving end when one end closes. Safe for concurrent use.
type Sim struct {
	mu   sync.Mutex
	doms map[uint16]*simDom
}

type portState uint8

const (
	stateFree portState = iota
	stateUnbound
	stateInterdomain
)

type simPort struct {
	state      portState
	remoteDom  uint16 // unbound: who may bind; interdomain: peer domain
	remotePort Port   // interdomain only
	owner      *simHandle
	pending    bool
	masked     bool
}

type simDom struct {
	ports   []simPort // index = port number; 0 unused
	handles map[*simHandle]struct{}
}

// NewSim returns an empty event channel table.
func NewSim() *Sim { return &Sim{doms: make(map[uint16]*simDom)} }

func (s *Sim) dom(id uint16) *simDom {
	d := s.doms[id]
	if d == nil {
		d = &simDom{ports: make([]simPort, 1), handles: make(map[*simHandle]struct{})}
		s.doms[id] = d
	}
	return d
}

// Open returns a new handle of domain dom (as if a process in dom opened the device).
func (s *Sim) Open(dom uint16) Handle {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := &simHandle{sim: s, dom: dom, wake: make(chan struct{}, 1), done: make(chan struct{}), efd: -1}
	s.dom(dom).handles[h] = struct{}{}
	return h
}

// DestroyDomain closes all of dom's ports (their peers fall back to unbound)
// and closes its handles.
func (s *Sim) DestroyDomain(dom uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.doms[dom]
	if d == nil {
		return
	}
	for h := range d.handles {
		s.closeHandleLocked(h)
	}
	delete(s.doms, dom)
}

// BoundPorts reports how many ports of dom are in use (unbound or
// interdomain), for leak checks.
func (s *Sim) BoundPorts(dom uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.doms[dom]
	if d == nil {
		return 0
	}
	n := 0
	for i := range d.ports {
		if d.ports[i].state != stateFree {
			n++
		}
	}
	return n
}

// NotifyPort signals port of dom from outside any handle, as the kernel does
// for an unmap notification (grant sim wiring). Notifying an unbound port is
// silently dropped, as in Xen.
func (s *Sim) NotifyPort(dom uint16, port Port) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.doms[dom]
	if d == nil {
		return fmt.Errorf("evtchn: notify d%d port %d: %w", dom, port, syscall.ESRCH)
	}
	if int(port) >= len(d.ports) || port == 0 || d.ports[port].state == stateFree {
		return fmt.Errorf("evtchn: notify d%d port %d: %w", dom, port, syscall.EINVAL)
	}
	s.sendLocked(&d.ports[port])
	return nil
}

func (s *Sim) allocLocked(d *simDom) Port {
	for i := 1; i < len(d.ports); i++ {
		if d.ports[i].state == stateFree {
			return Port(i)
		}
	}
	d.ports = append(d.ports, simPort{})
	return Port(len(d.ports) - 1)
}

// sendLocked signals the remote end of p (evtchn_send).
func (s *Sim) sendLocked(p *simPort) {
	if p.state != stateInterdomain {
		return // unbound: dropped
	}
	rd := s.doms[p.remoteDom]
	if rd == nil || int(p.remotePort) >= len(rd.ports) {
		return
	}
	s.raiseLocked(&rd.ports[p.remotePort], p.remotePort)
}

// raiseLocked sets port pending and delivers it if unmasked.
func (s *Sim) raiseLocked(p *simPort, port Port) {
	p.pending = true
	s.deliverLocked(p, port)
}

func (s *Sim) deliverLocked(p *simPort, port Port) {
	if !p.pending || p.masked || p.owner == nil {
		return
	}
	p.pending = false
	p.masked = true
	h := p.owner
	h.ready = append(h.ready, port)
	h.signalLocked()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// closePortLocked frees port of d; an interdomain peer falls back to unbound
// with remote = d's domain (evtchn_close).
func (s *Sim) closePortLocked(dom uint16, d *simDom, port Port) {
	p := &d.ports[port]
	if p.state == stateInterdomain {
		if rd := s.doms[p.remoteDom]; rd != nil && int(p.remotePort) < len(rd.ports) {
			rp := &rd.ports[p.remotePort]
			if rp.state == stateInterdomain && rp.remoteDom == dom && rp.remotePort == port {
				rp.state = stateUnbound
				rp.remotePort = 0
			}
		}
	}
	if h := p.owner; h != nil {
		h.dropReady(port)
	}
	*p = simPort{}
}

func (s *Sim) closeHandleLocked(h *simHandle) {
	if h.closed {
		return
	}
	h.closed = true
	if d := s.doms[h.dom]; d != nil {
		for i := 1; i < len(d.ports); i++ {
			if d.ports[i].owner == h {
				s.closePortLocked(h.dom, d, Port(i))
			}
		}
		delete(d.handles, h)
	}
	h.signalLocked() // a poller wakes and reads ErrClosed
	close(h.done)
}

type simHandle struct {
	sim    *Sim
	dom    uint16
	closed bool
	ready  []Port
	wake   chan struct{}
	done   chan struct{}
	efd    int // PollFD's eventfd, made on first use (-1: none)
}

func (h *simHandle) dropReady(port Port) {
	out := h.ready[:0]
	for _, p := range h.ready {
		if p != port {
			out = append(out, p)
		}
	}
	h.ready = out
}

// ownedLocked returns the port if this handle owns it.
func (h *simHandle) ownedLocked(op string, port Port) (*simDom, *simPort, error) {
	if h.closed {
		return nil, nil, ErrClosed
	}
	d := h.sim.doms[h.dom]
	if d == nil || port == 0 || int(port) >= len(d.ports) || d.ports[port].owner != h {
		return nil, nil, fmt.Errorf("evtchn: %s d%d port %d: %w", op, h.dom, port, syscall.EINVAL)
	}
	return d, &d.ports[port], nil
}

func (h *simHandle) BindUnbound(remoteDom uint16) (Port, error) {
	s := h.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.closed {
		return 0, ErrClosed
	}
	d := s.dom(h.dom)
	port := s.allocLocked(d)
	d.ports[port] = simPort{state: stateUnbound, remoteDom: remoteDom, owner: h}
	return port, nil
}

func (h *simHandle) BindInterdomain(remoteDom uint16, remotePort Port) (Port, error) {
	s := h.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.closed {
		return 0, ErrClosed
	}
	rd := s.doms[remoteDom]
	if rd == nil {
		return 0, fmt.Errorf("evtchn: bind d%d to d%d:%d: %w", h.dom, remoteDom, remotePort, syscall.ESRCH)
	}
	if remotePort == 0 || int(remotePort) >= len(rd.ports) {
		return 0, fmt.Errorf("evtchn: bind d%d to d%d:%d: no such port: %w", h.dom, remoteDom, remotePort, syscall.EINVAL)
	}
	rp := &rd.ports[remotePort]
	if rp.state != stateUnbound || rp.remoteDom != h.dom {
		return 0, fmt.Errorf("evtchn: bind d%d to d%d:%d: port not unbound for d%d: %w", h.dom, remoteDom, remotePort, h.dom, syscall.EINVAL)
	}
	d := s.dom(h.dom)
	port := s.allocLocked(d)
	rd = s.doms[remoteDom] // d may alias rd (loopback); reload after append
	rp = &rd.ports[remotePort]
	d.ports[port] = simPort{state: stateInterdomain, remoteDom: remoteDom, remotePort: remotePort, owner: h}
	rp.state = stateInterdomain
	rp.remotePort = port
	// Xen raises the local port on bind so a notification lost while the
	// peer was unbound is not missed.
	s.raiseLocked(&d.ports[port], port)
	return port, nil
}

func (h *simHandle) Notify(local Port) error {
	s := h.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	_, p, err := h.ownedLocked("notify", local)
	if err != nil {
		return err
	}
	s.sendLocked(p)
	return nil
}

func (h *simHandle) Unmask(local Port) error {
	s := h.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	_, p, err := h.ownedLocked("unmask", local)
	if err != nil {
		return err
	}
	p.masked = false
	s.deliverLocked(p, local)
	return nil
}

func (h *simHandle) Unbind(local Port) error {
	s := h.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	d, _, err := h.ownedLocked("unbind", local)
	if err != nil {
		return err
	}
	s.closePortLocked(h.dom, d, local)
	return nil
}

func (h *simHandle) Wait(ctx context.Context, ports []Port) (int, error) {
	s := h.sim
	if len(ports) == 0 {
		return 0, fmt.Errorf("evtchn: wait d%d with no room for ports: %w", h.dom, syscall.EINVAL)
	}
	for {
		s.mu.Lock()
		if h.closed {
			s.mu.Unlock()
			return 0, ErrClosed
		}
		if len(h.ready) > 0 {
			n := h.takeReadyLocked(ports)
			s.mu.Unlock()
			return n, nil
		}
		s.mu.Unlock()
		select {
		case <-h.wake:
		case <-h.done:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (h *simHandle) Close() error {
	s := h.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	// PollFD's descriptor is released here, by the owner, even after
	// DestroyDomain closed the handle: a poller may still hold its number.
	h.closeFDLocked()
	if h.closed {
		return ErrClosed
	}
	s.closeHandleLocked(h)
	return nil
}

// ReadPending is Wait without the wait (Poller).
func (h *simHandle) ReadPending(ports []Port) (int, error) {
	s := h.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.closed {
		return 0, ErrClosed
	}
	h.drainFDLocked() // before taking: a port delivered after it signals again
	n := h.takeReadyLocked(ports)
	if len(h.ready) > 0 {
		h.signalLocked() // more than ports holds: still readable
	}
	return n, nil
}

// takeReadyLocked moves delivered ports to ports, oldest first.
func (h *simHandle) takeReadyLocked(ports []Port) int {
	n := copy(ports, h.ready)
	rest := copy(h.ready, h.ready[n:])
	h.ready = h.ready[:rest]
	return n
}
