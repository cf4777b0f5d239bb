package main

import (
	"log/slog"
	"testing"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/internal/xensim"
	"drvdom/netback"
	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

// simDriverDomain is a simulated host with dom0 and the driver domain dd
// and drvdomd's drivers as buildDrivers wires them, with the simulator's
// grant mappers (one per backend) and event channels in place of
// /dev/xen; netHost stands in for the TAPs, engine is blkback's I/O
// engine ("" for its default). Host and dom0's client close with t.
func simDriverDomain(t testing.TB, dd uint16, netHost netback.Host, engine string, log *slog.Logger) (*xensim.Host, *xenstore.Client, *xensim.Domain, []xenbus.Driver) {
	t.Helper()
	host := xensim.New()
	t.Cleanup(func() { host.Close() })
	dom0 := host.NewDomain(0).Xenstore()
	t.Cleanup(func() { dom0.Close() })
	ddom := host.NewDomain(dd)
	events := func() (evtchn.Handle, error) { return ddom.Evtchn(), nil }
	drivers := []xenbus.Driver{
		&blkback.Driver{Grants: ddom.Mapper(), Events: events, Log: log.With("drv", "vbd"), JournalDir: t.TempDir(), Engine: engine},
		&netback.Driver{Host: netHost, Mapper: ddom.Mapper(), Events: events, Log: log.With("drv", "vif")},
	}
	return host, dom0, ddom, drivers
}
