package evtchn

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// PollFD returns an eventfd signalled whenever a port is delivered to the
// handle, and when it closes (Poller).
func (h *simHandle) PollFD() (int, error) {
	s := h.sim
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.closed {
		return -1, ErrClosed
	}
	if h.efd < 0 {
		fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			return -1, err
		}
		h.efd = fd
		if len(h.ready) > 0 {
			h.signalLocked()
		}
	}
	return h.efd, nil
}

func (h *simHandle) signalLocked() {
	if h.efd < 0 {
		return
	}
	one := uint64(1)
	unix.Write(h.efd, (*[8]byte)(unsafe.Pointer(&one))[:]) // EAGAIN only at a count of 2^64-2: still readable
}

func (h *simHandle) drainFDLocked() {
	if h.efd < 0 {
		return
	}
	var b [8]byte
	unix.Read(h.efd, b[:]) // EAGAIN when not signalled
}

func (h *simHandle) closeFDLocked() {
	if h.efd >= 0 {
		unix.Close(h.efd)
		h.efd = -1
	}
}
