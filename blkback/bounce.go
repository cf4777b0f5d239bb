package blkback

import "sync"

// DefaultCopyPoolPages is the bounce memory of one device in grant-copy
// mode: a full 32-entry ring of 11-segment requests, four times over (5.5 MiB).
const DefaultCopyPoolPages = 4 * 32 * MaxSegmentsPerRequest

// bouncePool is a device's local pages for grant copy. A request takes all
// the pages it needs at once (no hold-and-wait, so no deadlock between
// rings), waiting while others are in use.
type bouncePool struct {
	mem  []byte
	free func() error

	mu    sync.Mutex
	cond  *sync.Cond
	avail []int32
}

func newBouncePool(pages int) (*bouncePool, error) {
	pages = max(pages, MaxIndirectSegments)
	mem, free, err := allocPages(pages)
	if err != nil {
		return nil, err
	}
	p := &bouncePool{mem: mem, free: free, avail: make([]int32, pages)}
	p.cond = sync.NewCond(&p.mu)
	for i := range p.avail {
		p.avail[i] = int32(i)
	}
	return p, nil
}

// get fills dst with page indices, waiting until len(dst) are free. Before
// it waits it calls starving.flush (if not nil) once: pages held by
// requests an engine has queued but not started (io_uring submits a ring's
// batch only at its end) are freed only once they run, so a ring must not
// wait for them with its batch unsubmitted.
func (p *bouncePool) get(dst []int32, starving interface{ flush() }) {
	p.mu.Lock()
	if len(p.avail) < len(dst) && starving != nil {
		p.mu.Unlock()
		starving.flush()
		p.mu.Lock()
	}
	for len(p.avail) < len(dst) {
		p.cond.Wait()
	}
	n := len(p.avail) - len(dst)
	copy(dst, p.avail[n:])
	p.avail = p.avail[:n]
	p.mu.Unlock()
}

func (p *bouncePool) put(idx []int32) {
	if len(idx) == 0 {
		return
	}
	p.mu.Lock()
	p.avail = append(p.avail, idx...)
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *bouncePool) page(i int32) []byte {
	return p.mem[int(i)*PageSize : (int(i)+1)*PageSize : (int(i)+1)*PageSize]
}

func (p *bouncePool) close() error { return p.free() }
