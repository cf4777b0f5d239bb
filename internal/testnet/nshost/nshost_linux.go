//go:build linux

// Package nshost is netback.LinuxHost inside a testnet.Runner's network
// namespace, for tests that run real backends on real TAP devices.
package nshost

import (
	"drvdom/internal/testnet"
	"drvdom/netback"
)

// Host is netback.LinuxHost with every namespace-bound step (creating the
// TAP, its bridge, adding queues) run in R's namespace.
type Host struct{ R *testnet.Runner }

var _ netback.Host = Host{}

// CreateTap implements netback.Host.
func (h Host) CreateTap(name, bridge string) (tap netback.Tap, err error) {
	h.R.Do(func() { tap, err = netback.LinuxHost{}.CreateTap(name, bridge) })
	if err != nil {
		return nil, err
	}
	return nsTap{tap, h.R}, nil
}

type nsTap struct {
	netback.Tap
	r *testnet.Runner
}

func (t nsTap) SetQueues(n int) (err error) {
	t.r.Do(func() { err = t.Tap.SetQueues(n) })
	return err
}
