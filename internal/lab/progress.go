package lab

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Progress prints one line per build or boot step to w (normally stderr),
// with the step's expected duration up front and the measured one at the end.
type Progress struct {
	mu sync.Mutex
	w  io.Writer
}

// NewProgress returns a Progress writing to w; a nil w discards.
func NewProgress(w io.Writer) *Progress {
	if w == nil {
		w = io.Discard
	}
	return &Progress{w: w}
}

// Step announces a step and returns the function that closes it with its
// error (nil: done).
func (p *Progress) Step(name string, estimate time.Duration) func(error) {
	start := time.Now()
	p.mu.Lock()
	if estimate > 0 {
		fmt.Fprintf(p.w, "xenlab: %s (≈%s)...\n", name, estimate.Round(time.Second))
	} else {
		fmt.Fprintf(p.w, "xenlab: %s...\n", name)
	}
	p.mu.Unlock()
	return func(err error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		el := time.Since(start).Seconds()
		if err != nil {
			fmt.Fprintf(p.w, "xenlab: %s: FAILED after %.1fs: %v\n", name, el, err)
			return
		}
		fmt.Fprintf(p.w, "xenlab: %s: done %.1fs\n", name, el)
	}
}

// Printf prints one free-form progress line.
func (p *Progress) Printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "xenlab: "+format+"\n", args...)
}
