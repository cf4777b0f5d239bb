package netback

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// rateLimit is Linux netback's tx credit scheduler: a vif may send
// creditBytes per interval; a packet larger than the credit left waits for
// the next replenish. The credit may build up to max(creditBytes, 128 KiB)
// so a 64 KiB GSO packet always gets through eventually.
type rateLimit struct {
	creditBytes uint64
	interval    time.Duration
	remaining   uint64
	next        time.Time // when credit is next replenished
}

// maxBurst is Linux's floor for the credit cap (131072 bytes).
const maxBurst = 131072

// parseRate parses the backend's rate key, "<bytes>,<usec>" as Linux
// xen_net_read_rate reads it. An empty value means unlimited (nil).
func parseRate(v string) (*rateLimit, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, nil
	}
	b, u, ok := strings.Cut(v, ",")
	if !ok {
		return nil, fmt.Errorf("netback: rate %q: want <bytes>,<usec>", v)
	}
	bytes, err := strconv.ParseUint(b, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("netback: rate %q: %w", v, err)
	}
	usec, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("netback: rate %q: %w", v, err)
	}
	if bytes == 0 || usec == 0 {
		return nil, nil // Linux: ~0 / unlimited
	}
	return &rateLimit{creditBytes: bytes, interval: time.Duration(usec) * time.Microsecond, remaining: bytes}, nil
}

// allow takes size bytes of credit at time now. If there is not enough, it
// returns false and how long to wait before trying again.
func (r *rateLimit) allow(size int, now time.Time) (bool, time.Duration) {
	if r == nil || uint64(size) <= r.remaining {
		if r != nil {
			r.remaining -= uint64(size)
		}
		return true, 0
	}
	if r.next.IsZero() {
		r.next = now.Add(r.interval)
	}
	if !now.Before(r.next) {
		burst := r.creditBytes
		if burst < maxBurst {
			burst = maxBurst
		}
		r.remaining += r.creditBytes
		if r.remaining > burst {
			r.remaining = burst
		}
		// Catch up on whole missed intervals without building credit.
		r.next = r.next.Add(r.interval)
		if r.next.Before(now) {
			r.next = now.Add(r.interval)
		}
		if uint64(size) <= r.remaining {
			r.remaining -= uint64(size)
			return true, 0
		}
	}
	return false, r.next.Sub(now)
}
