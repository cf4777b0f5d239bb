package main

import (
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A PV domain's console write does not return until dom0's xenconsoled has
// taken the bytes out of the 2 KiB console ring: Linux's hvc_xen polls the
// ring in the kernel without scheduling (the lab logged soft lockups of
// 21-65 s in cat), so while xenconsoled is slow the domain's only vCPU
// runs nothing else, and now and then xenconsoled stops draining a
// domain that wrote a burst for a minute (in the lab a driver domain
// sending 60 KB at once stalled on its 12th send until Xen's watchdog
// fired). drvdomd's own logs are a line now and then; the burst to
// fear is a worker's goroutine dump (SIGQUIT from the supervisor, or a
// crash), tens of KB at once. So the workers write to a pipe, not to the
// console, and the supervisor passes their output on through a pacedWriter:
// lines as they come, bursts at a rate the console drains without the
// ring filling. The worker's goroutines never wait on the console, and the
// pipe is large enough for a whole dump, so a dying worker exits (and is
// restarted) at once while its dump trickles out.

// Console pacing: consoleBurst bytes pass at once, then consoleChunk bytes
// every consoleEvery (20 KB/s). The lab's paced lab_put sends at the same
// rate (internal/lab LibSh).
const (
	consoleBurst = 4 << 10
	consoleChunk = 1 << 10
	consoleEvery = 50 * time.Millisecond
)

// pacedWriter passes writes on to w in pieces of at most chunk bytes, at
// most burst bytes at once and chunk bytes per every on average (a token
// bucket). Safe for concurrent use; a Write returns when all of it is out.
type pacedWriter struct {
	w     io.Writer
	burst int
	chunk int
	every time.Duration
	now   func() time.Time
	sleep func(time.Duration)

	mu     sync.Mutex
	tokens float64 // bytes that may go now
	last   time.Time
}

func newPacedWriter(w io.Writer) *pacedWriter {
	return &pacedWriter{w: w, burst: consoleBurst, chunk: consoleChunk, every: consoleEvery,
		now: time.Now, sleep: time.Sleep, tokens: consoleBurst}
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rate := float64(p.chunk) / float64(p.every) // bytes per nanosecond
	written := 0
	for len(b) > 0 {
		now := p.now()
		if !p.last.IsZero() {
			p.tokens = min(float64(p.burst), p.tokens+rate*float64(now.Sub(p.last)))
		}
		p.last = now
		n := min(len(b), p.chunk)
		if p.tokens < float64(n) {
			// Rounded up: a wait rounded down would leave the bucket a
			// fraction short and wait again for nothing.
			p.sleep(time.Duration(math.Ceil((float64(n) - p.tokens) / rate)))
			continue
		}
		m, err := p.w.Write(b[:n])
		written += m
		p.tokens -= float64(m)
		if err != nil {
			return written, err
		}
		b = b[m:]
	}
	return written, nil
}

// workerPipeSize is what workerConsole asks of the kernel for its pipe
// (F_SETPIPE_SZ; capped by /proc/sys/fs/pipe-max-size, 1 MiB by default).
const workerPipeSize = 1 << 20

// workerConsole returns the write end of a pipe for the workers' stdout
// and stderr (every worker gets the same one, so Wait never waits on its
// output) and starts a goroutine passing what arrives on to console through
// a pacedWriter. stop closes the write end and waits, at most grace, for
// the output the workers left to be passed on.
func workerConsole(console io.Writer, grace time.Duration, log *slog.Logger) (w *os.File, stop func(), err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("worker console pipe: %w", err)
	}
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, workerPipeSize); err != nil {
		// A smaller pipe only makes a dying worker wait on the console.
		log.Warn("worker console pipe: size not raised", "want", workerPipeSize, "err", err)
	}
	done := make(chan struct{})
	go func() { // owned: ends at EOF, after stop and the last worker
		defer close(done)
		defer r.Close()
		_, _ = io.Copy(newPacedWriter(console), r)
	}()
	stop = func() {
		w.Close()
		select {
		case <-done:
		case <-time.After(grace):
			log.Warn("worker output not all on the console at exit", "after", grace)
		}
	}
	return w, stop, nil
}
