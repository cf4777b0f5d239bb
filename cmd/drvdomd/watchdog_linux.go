package main

import (
	"context"
	"log/slog"
	"os"
	"time"
)

// feedWatchdog keeps Xen's watchdog (xen_wdt, /dev/watchdog) quiet while
// drvdomd runs. If drvdomd dies the feeding stops and Xen restarts the
// domain (on_watchdog="restart"); on a clean stop it writes the magic 'V'
// to disarm it.
func feedWatchdog(ctx context.Context, path string, every time.Duration, log *slog.Logger) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		log.Warn("no watchdog: the domain will not restart by itself if drvdomd dies", "path", path, "err", err)
		return
	}
	log.Info("watchdog armed", "path", path, "every", every)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := f.Write([]byte{0}); err != nil {
			log.Warn("watchdog keepalive", "err", err)
		}
		select {
		case <-ctx.Done():
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
