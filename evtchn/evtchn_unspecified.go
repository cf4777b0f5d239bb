//go:build !linux

package evtchn

import "errors"

// Open fails: /dev/xen/evtchn exists only on Linux.
func Open() (Handle, error) { return nil, errors.New("evtchn: /dev/xen/evtchn needs Linux") }

// The simulator's handles poll only on Linux (an eventfd).
func (h *simHandle) PollFD() (int, error) {
	return -1, errors.New("evtchn: polling a simulated handle needs Linux")
}

func (h *simHandle) signalLocked()  {}
func (h *simHandle) drainFDLocked() {}
func (h *simHandle) closeFDLocked() {}
