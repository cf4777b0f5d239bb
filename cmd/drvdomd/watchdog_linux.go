package main

import (
	"context"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// watchdogTimeout is asked of the watchdog driver when drvdomd opens it.
// xen_wdt's default is 60 s; 30 s halves the time from a hang to Xen's
// restart and still leaves 20 s over what a healthy domain can take
// between keepalives (the feed period plus the health check's staleness,
// 5 s + 5 s). 0 keeps the driver's timeout.
var watchdogTimeout = 30 * time.Second

// Watchdog ioctls (uapi/linux/watchdog.h): WDIOC_SETTIMEOUT is
// _IOWR('W', 6, int), WDIOC_GETTIMEOUT _IOR('W', 7, int).
const (
	wdiocSetTimeout = 0xC0045706
	wdiocGetTimeout = 0x80045707
)

// setWatchdogTimeout asks the driver for timeout and returns the timeout
// it runs with (drivers round or clamp it).
func setWatchdogTimeout(f *os.File, timeout time.Duration) (time.Duration, error) {
	fd := int(f.Fd())
	if err := unix.IoctlSetPointerInt(fd, wdiocSetTimeout, int(timeout/time.Second)); err != nil {
		return 0, err
	}
	n, err := unix.IoctlGetInt(fd, wdiocGetTimeout)
	if err != nil {
		return 0, err
	}
	return time.Duration(n) * time.Second, nil
}

// feedWatchdog keeps Xen's watchdog (xen_wdt, /dev/watchdog) quiet while
// drvdomd runs. If drvdomd dies the feeding stops and Xen restarts the
// domain (on_watchdog="restart"). When ctx ends it writes the magic 'V' to
// disarm it only if disarm is set (a clean stop or a configuration error
// that a restart would not fix); otherwise it leaves it armed so that Xen
// restarts the domain.
//
// healthy, if not nil, is asked before each keepalive: while it fails the
// keepalives stop (a hung worker or supervision loop), so Xen restarts the
// domain unless health returns in time.
func feedWatchdog(ctx context.Context, path string, every time.Duration, healthy func() error, disarm *atomic.Bool, log *slog.Logger) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		log.Warn("no watchdog: the domain will not restart by itself if drvdomd dies", "path", path, "err", err)
		return
	}
	timeout := "driver default"
	if watchdogTimeout > 0 {
		if got, err := setWatchdogTimeout(f, watchdogTimeout); err != nil {
			log.Warn("watchdog timeout unchanged", "want", watchdogTimeout, "err", err)
		} else {
			timeout = got.String()
		}
	}
	log.Info("watchdog armed", "path", path, "every", every, "timeout", timeout)
	t := time.NewTicker(every)
	defer t.Stop()
	var withheld bool
	for {
		var herr error
		if healthy != nil {
			herr = healthy()
		}
		switch {
		case herr == nil:
			if withheld {
				log.Info("watchdog keepalives resume")
			}
			withheld = false
			if _, err := f.Write([]byte{0}); err != nil {
				log.Warn("watchdog keepalive", "err", err)
			}
		case !withheld:
			withheld = true
			log.Error("watchdog keepalive withheld: Xen restarts this domain unless health returns", "err", herr)
		}
		select {
		case <-ctx.Done():
			if !disarm.Load() {
				f.Close()
				log.Error("drvdomd failing: watchdog left armed, Xen will restart this domain")
				return
			}
			if _, err := f.Write([]byte("V")); err != nil {
				log.Warn("watchdog magic close", "err", err)
			}
			f.Close()
			log.Info("watchdog disarmed")
			return
		case <-t.C:
		}
	}
}
