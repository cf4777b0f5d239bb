package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// storeProbe tells whether xenstore still answers, without mistaking a
// slow xenstored for a hung worker: one read is kept in flight in the
// background, and the check fails only when that read has been waiting
// longer than stall, or when it failed. In the lab's soak (three guests,
// dom0 busy under TCG) single reads took over 4 s; a 4 s deadline withheld
// the heartbeat, the supervisor restarted a worker that was serving its
// rings, and Xen's watchdog then restarted the whole driver domain:
// restarts cannot make dom0's xenstored faster.
type storeProbe struct {
	read  func(context.Context) error
	stall time.Duration
	now   func() time.Time

	mu      sync.Mutex
	since   time.Time // when the read in flight started; zero: none
	lastErr error     // the last read's failure, reported once
	wg      sync.WaitGroup
}

func newStoreProbe(read func(context.Context) error, stall time.Duration) *storeProbe {
	return &storeProbe{read: read, stall: stall, now: time.Now}
}

// check is a heartbeat check: it starts a read if none is in flight and
// reports a read stalled past p.stall or a failed one.
func (p *storeProbe) check(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.since.IsZero() {
		if d := p.now().Sub(p.since); d > p.stall {
			return fmt.Errorf("xenstore: no answer for %v", d.Round(time.Millisecond))
		}
		return nil
	}
	if err := p.lastErr; err != nil {
		p.lastErr = nil
		return fmt.Errorf("xenstore: %w", err)
	}
	p.since = p.now()
	p.wg.Add(1)
	go func() { // owned by p: ends with the read, which ends with ctx
		defer p.wg.Done()
		err := p.read(ctx)
		p.mu.Lock()
		p.since, p.lastErr = time.Time{}, err
		if ctx.Err() != nil {
			p.lastErr = nil
		}
		p.mu.Unlock()
	}()
	return nil
}

// wait waits for the read in flight (call after ctx ended).
func (p *storeProbe) wait() { p.wg.Wait() }

// watchdogHealth is the watchdog's view of health: Xen's restart of the
// whole domain is the last resort, so keepalives are withheld only once
// check has failed for longer than grace, the time the supervisor needs to
// restart a hung worker and for the new one to resume its devices. A
// supervisor that stops altogether (SIGSTOP, deadlock) stops petting at
// once, since this is called from its own watchdog loop.
func watchdogHealth(check func() error, grace time.Duration, now func() time.Time) func() error {
	var mu sync.Mutex
	var sick time.Time
	return func() error {
		err := check()
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			sick = time.Time{}
			return nil
		}
		t := now()
		if sick.IsZero() {
			sick = t
		}
		if d := t.Sub(sick); d >= grace {
			return fmt.Errorf("%w; unhealthy for %v, longer than a worker restart takes", err, d.Round(time.Second))
		}
		return nil
	}
}
