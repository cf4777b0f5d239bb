// Package evtchn binds, signals and waits on Xen event channels.
//
// Handle is one open of /dev/xen/evtchn (Open); Sim is a host-wide simulated
// event channel table with Xen's semantics (NewSim). Errors wrap the errno Xen
// or Linux would return (syscall.EINVAL for a bad port or binding,
// syscall.ESRCH for an unknown domain) so callers branch the same way on both.
package evtchn

import (
	"context"
	"errors"
)

// Port is an event channel port number, local to one domain.
type Port uint32

// ErrClosed is returned by every Handle method after Close (or after the
// handle's domain was destroyed in the simulator).
var ErrClosed = errors.New("evtchn: handle closed")

// Handle is one open of the event channel device; ports bound through it
// belong to it and are unbound by Close.
type Handle interface {
	// BindInterdomain binds a new local port to remotePort of remoteDom,
	// which must be unbound and offered to this domain. It returns the local port.
	BindInterdomain(remoteDom uint16, remotePort Port) (Port, error)
	// BindUnbound allocates an unbound port that only remoteDom may bind to.
	BindUnbound(remoteDom uint16) (Port, error)
	// Notify signals the remote end of local.
	Notify(local Port) error
	// Unmask re-enables delivery of local after Wait returned it.
	Unmask(local Port) error
	// Unbind closes local; its remote end falls back to unbound.
	Unbind(local Port) error
	// Wait blocks until at least one port is pending, fills ports and returns
	// how many. A delivered port stays masked until Unmask. It returns
	// ctx.Err() when ctx ends and ErrClosed after Close.
	Wait(ctx context.Context, ports []Port) (int, error)
	Close() error
}

// UnmaskWaiter is implemented by handles that can unmask a delivered port
// and wait for the next one in one step cheaper than Unmask then Wait.
type UnmaskWaiter interface {
	// UnmaskWait is Unmask(local) then Wait(ctx, ports). local is unmasked
	// even if ctx has ended.
	UnmaskWait(ctx context.Context, local Port, ports []Port) (int, error)
}

// UnmaskWait unmasks local, which the last Wait delivered, and waits for
// pending ports: h's own UnmaskWait if it has one, else Unmask then Wait.
func UnmaskWait(ctx context.Context, h Handle, local Port, ports []Port) (int, error) {
	if uw, ok := h.(UnmaskWaiter); ok {
		return uw.UnmaskWait(ctx, local, ports)
	}
	if err := h.Unmask(local); err != nil {
		return 0, err
	}
	return h.Wait(ctx, ports)
}

// Poller is implemented by handles whose pending ports can be waited for by
// polling a file descriptor (from io_uring, say) instead of with Wait: the
// device's on Linux and the simulator's. Use one or the other on a handle,
// not both.
type Poller interface {
	// PollFD returns a descriptor that polls readable while a port is
	// pending (and after Close). It stays owned by the handle.
	PollFD() (int, error)
	// ReadPending fills ports with pending ports without blocking and
	// returns how many (0: none). A delivered port stays masked until
	// Unmask, as with Wait. ErrClosed after Close.
	ReadPending(ports []Port) (int, error)
}
