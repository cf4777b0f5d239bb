//go:build !linux

package netback

import (
	"context"
	"errors"
)

var errNoTap = errors.New("netback: TAP devices need Linux")

// LinuxHost creates real TAP devices; off Linux it always fails.
type LinuxHost struct{}

// CreateTap implements Host.
func (LinuxHost) CreateTap(name, bridge string) (Tap, error) { return nil, errNoTap }

// EnsureBridge needs Linux.
func EnsureBridge(name, uplink string) error { return errNoTap }

type closedQueue struct{}

func (closedQueue) Read(context.Context, []byte) (int, error) { return 0, ErrTapClosed }
func (closedQueue) Write([]byte) (int, error)                 { return 0, ErrTapClosed }
