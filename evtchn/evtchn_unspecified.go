//go:build !linux

package evtchn

import "errors"

// Open fails: /dev/xen/evtchn exists only on Linux.
func Open() (Handle, error) { return nil, errors.New("evtchn: /dev/xen/evtchn needs Linux") }
