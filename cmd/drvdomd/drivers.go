package main

// ===================== drvdom-mode driver registration =====================
// This is the single place where drvdomd's userspace backends are wired in:
// blkback (vbd) and netback (vif), on the real Xen devices (/dev/xen/gntdev,
// /dev/xen/evtchn) and real TAP devices. Add a backend here and nowhere else.
// ===========================================================================

import (
	"fmt"
	"log/slog"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/journal"
	"drvdom/netback"
	"drvdom/xenstore/xenbus"
)

// driverEnv is what drivers get from the daemon.
type driverEnv struct {
	Cfg Config
	Log *slog.Logger
	// TapStore, if set, keeps the TAPs across worker restarts.
	TapStore netback.TapStore
}

// buildDrivers returns the drvdom-mode drivers and a cleanup for what they
// opened. Each backend gets its own gntdev handle.
func buildDrivers(env driverEnv) ([]xenbus.Driver, func(), error) {
	var closers []func() error
	cleanup := func() {
		for _, c := range closers {
			if err := c(); err != nil {
				env.Log.Warn("closing driver resources", "err", err)
			}
		}
	}
	openMapper := func(who string) (grant.Mapper, error) {
		m, err := grant.OpenGntdev()
		if err != nil {
			return nil, fmt.Errorf("%s: %w (is xen-gntdev loaded?)", who, err)
		}
		closers = append(closers, m.Close)
		return m, nil
	}
	events := func() (evtchn.Handle, error) { return evtchn.Open() }
	if env.Cfg.Bridge != netback.DefaultBridge {
		env.Log.Warn("drvdom mode: a vif joins the bridge its backend's \"bridge\" key names, else "+netback.DefaultBridge,
			"configured_bridge", env.Cfg.Bridge)
	}

	blkMapper, err := openMapper("blkback")
	if err != nil {
		cleanup()
		return nil, func() {}, err
	}
	netMapper, err := openMapper("netback")
	if err != nil {
		cleanup()
		return nil, func() {}, err
	}
	drivers := []xenbus.Driver{
		// Crash-only: each ring's journal lives in the domain's tmpfs, so a
		// restarted worker replays what the dead one left unanswered.
		&blkback.Driver{Grants: blkMapper, Events: events, Log: env.Log.With("drv", "vbd"), JournalDir: journal.DefaultDir, GrantCopy: env.Cfg.BlkGrantCopy,
			RingThreads: env.Cfg.BlkRingThreads, FixedBuffers: env.Cfg.BlkFixed},
		&netback.Driver{Host: netback.LinuxHost{Store: env.TapStore}, Mapper: netMapper, Events: events, Log: env.Log.With("drv", "vif")},
	}
	return drivers, cleanup, nil
}
