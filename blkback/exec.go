package blkback

import (
	"context"
	"sync"
)

// executor runs validated, mapped requests and completes them.
type executor interface {
	submit(s *slot)
	// flush starts what submit queued (called after each batch of a ring).
	flush()
	// stop returns once every submitted request has completed; the rings
	// must have stopped submitting.
	stop()
}

// ringRunner is an executor that also serves its ring's loop on a thread of
// its own (ringLoop): queue.run hands over to it, and a barrier drains
// through it.
type ringRunner interface {
	executor
	run(ctx context.Context) error
	drain()
}

// Engines for Driver.Engine.
const (
	EnginePool  = "pool"  // worker goroutines doing preadv/pwritev
	EngineURing = "uring" // io_uring for reads and writes
)

// poolExec is a fixed set of worker goroutines blocking in the backing.
type poolExec struct {
	work chan *slot
	wg   sync.WaitGroup
}

func newPoolExec(dev *Device, workers, depth int) *poolExec {
	p := &poolExec{work: make(chan *slot, depth)}
	for i := 0; i < workers; i++ {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for s := range p.work {
				s.status = StatusOf(dev.execute(s))
				s.q.complete(s, true)
			}
		}()
	}
	return p
}

func (p *poolExec) submit(s *slot) { p.work <- s }

func (p *poolExec) flush() {}

func (p *poolExec) stop() {
	close(p.work)
	p.wg.Wait()
}
