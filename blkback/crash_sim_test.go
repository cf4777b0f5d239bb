package blkback_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/xensim/blkfront"
)

// slowBacking delays some transfers so that a pool of workers completes
// requests out of order.
type slowBacking struct {
	blkback.Backing
	delayed atomic.Int64
}

func (b *slowBacking) delay() {
	if rand.IntN(3) == 0 {
		b.delayed.Add(1)
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
	}
}

func (b *slowBacking) ReadV(io *blkback.IO) error  { b.delay(); return b.Backing.ReadV(io) }
func (b *slowBacking) WriteV(io *blkback.IO) error { b.delay(); return b.Backing.WriteV(io) }

// crashDriver is a fresh backend process: its own gntdev handle, the
// journals in dir.
// slow is set from the backend's probe goroutine and read by the test: an
// atomic pointer.
func (e *env) crashDriver(dir string, mode string, slow *atomic.Pointer[slowBacking]) *blkback.Driver {
	if mode == "nojournal" {
		dir = ""
	}
	persistent := mode == "persistent"
	return &blkback.Driver{
		GrantCopy:      mode == "grantcopy",
		Grants:         e.dd.Mapper(),
		Events:         func() (evtchn.Handle, error) { return e.dd.Evtchn(), nil },
		Log:            quietLog(),
		MaxQueues:      1,
		Workers:        8,
		Engine:         engineFor(mode),
		NoPersistent:   !persistent,
		ResizeInterval: -1,
		StatsInterval:  -1,
		JournalDir:     dir,
		Open: func(params string, o blkback.OpenOptions) (blkback.Backing, error) {
			b, err := blkback.OpenTarget(params, o)
			if err != nil {
				return nil, err
			}
			sb := &slowBacking{Backing: b}
			slow.Store(sb)
			if mode == "uring" {
				return b, nil // io_uring needs the file itself
			}
			return sb, nil
		},
	}
}

// TestCrashOnlyRandomKills: a Go blkfront runs verified random writes and
// reads at queue depth 16 while the backend process is killed at random
// instants (everything dropped but the journal file and the shared memory:
// no response written, no journal entry, no drain) and restarted, many
// times. The I/O engine completes out of order. Every request is answered
// exactly once and every read returns what the last acknowledged write
// wrote.
func TestCrashOnlyRandomKills(t *testing.T) {
	for _, mode := range []string{"mapped", "persistent", "grantcopy", "uring"} {
		t.Run(mode, func(t *testing.T) {
			for round := range 3 {
				t.Run(fmt.Sprint(round), func(t *testing.T) {
					if err := crashKillRun(t, mode, 25, 4000, 15*time.Second); err != nil {
						t.Fatal(err)
					}
				})
			}
		})
	}
}

// The same workload without journals (resuming from the shared rsp_prod)
// loses or duplicates requests: the test above can fail.
func TestCrashOnlyWithoutJournalFails(t *testing.T) {
	for try := range 5 {
		if err := crashKillRun(t, "nojournal", 25, 4000, 2*time.Second); err != nil {
			t.Logf("try %d: caught: %v", try, err)
			return
		}
	}
	t.Fatal("random kills without a journal went unnoticed")
}

// crashKillRun runs the workload; it returns the first violation of the
// frontend's expectations (a response twice or for nothing, a lost request,
// wrong data).
func crashKillRun(t *testing.T, mode string, kills, total int, stuckAfter time.Duration) (rerr error) {
	persistent := mode == "persistent"
	const (
		qd     = 16
		blocks = 64 // 4 KiB blocks
	)
	dir := t.TempDir()
	var slow atomic.Pointer[slowBacking]
	var delayed int64
	e := newEnv(t, func(d *blkback.Driver) { d.MaxQueues = 1 })
	e.stop() // the default driver goes; a crash driver serves the disk
	e.drv = e.crashDriver(dir, mode, &slow)
	e.startManager()
	path := tempDisk(t, blocks*4096)
	f, _ := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: "x86_64-abi", Manual: true, Persistent: persistent})
	ctx := ctxT(t)
	rg, port, evh, abi := f.Ring(0), f.Port(0), f.Evtchn(), f.ABI()

	type op struct {
		write bool
		block int
		data  []byte // write: what it writes; read: what it must find
		buf   int
	}
	var bufs []grant.Share
	for range qd {
		sh, err := f.Share(1, true)
		if err != nil {
			t.Fatal(err)
		}
		bufs = append(bufs, sh)
	}
	freeBufs := make([]int, 0, qd)
	for i := range qd {
		freeBufs = append(freeBufs, i)
	}
	model := make([][]byte, blocks) // acknowledged content
	for i := range model {
		model[i] = make([]byte, 4096)
	}
	busy := make([]bool, blocks)
	inflight := map[uint64]op{}
	answered := map[uint64]int{}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	var done atomic.Int64
	var nextID uint64

	// The killer: a backend process dies every so often and another
	// starts, while the frontend goes on.
	var kwg sync.WaitGroup
	killed := 0
	stopKiller := make(chan struct{})
	stop := sync.OnceFunc(func() { close(stopKiller); kwg.Wait() })
	defer stop()
	kwg.Add(1)
	go func() {
		defer kwg.Done()
		for killed < kills {
			target := done.Load() + int64(50+rand.IntN(total/kills))
			for done.Load() < target {
				select {
				case <-stopKiller:
					return
				case <-time.After(200 * time.Microsecond):
				}
			}
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond) // a random instant
			e.drv.Kill()
			e.stop()
			delayed += slowDelayed(&slow)
			deadline := time.Now().Add(10 * time.Second)
			for e.host.Grants.Mapped(ddID) != 0 || e.host.Events.BoundPorts(ddID) != 0 {
				if time.Now().After(deadline) {
					t.Errorf("killed backend kept %d pages, %d ports", e.host.Grants.Mapped(ddID), e.host.Events.BoundPorts(ddID))
					return
				}
				time.Sleep(time.Millisecond)
			}
			e.drv = e.crashDriver(dir, mode, &slow)
			e.startManager()
			killed++
		}
	}()

	issued := 0
	lastProgress := time.Now()
	for issued < total || len(inflight) > 0 {
		if ctx.Err() != nil || time.Since(lastProgress) > stuckAfter {
			stop()
			return fmt.Errorf("stuck (a request lost): %d issued, %d in flight, %d done, %d kills", issued, len(inflight), done.Load(), killed)
		}
		progressed := false
		for rg.Unconsumed() > 0 {
			rsp := blkback.DecodeResponse(rg.Response())
			o, ok := inflight[rsp.ID]
			answered[rsp.ID]++
			if !ok {
				return fmt.Errorf("response for id %#x: not in flight (answered %d times)", rsp.ID, answered[rsp.ID])
			}
			delete(inflight, rsp.ID)
			if rsp.Status != blkback.StatusOkay {
				return fmt.Errorf("request %#x (write=%v block %d): status %d", rsp.ID, o.write, o.block, rsp.Status)
			}
			page := bufs[o.buf].Bytes()[:4096]
			if o.write {
				copy(model[o.block], o.data)
			} else if !bytes.Equal(page, o.data) {
				return fmt.Errorf("read of block %d (id %#x) returned other data", o.block, rsp.ID)
			}
			busy[o.block] = false
			freeBufs = append(freeBufs, o.buf)
			done.Add(1)
			progressed = true
		}
		posted := false
		for issued < total && len(inflight) < qd && rg.Free() > 0 {
			b := rng.IntN(blocks)
			if busy[b] {
				break
			}
			busy[b] = true
			o := op{write: rng.IntN(4) != 0, block: b, buf: freeBufs[len(freeBufs)-1]}
			freeBufs = freeBufs[:len(freeBufs)-1]
			page := bufs[o.buf].Bytes()[:4096]
			if o.write {
				o.data = make([]byte, 4096)
				for i := 0; i < len(o.data); i += 8 {
					o.data[i] = byte(rng.Uint32())
					o.data[i+1] = byte(issued)
				}
				copy(page, o.data)
			} else {
				o.data = append([]byte(nil), model[b]...)
				clear(page)
			}
			nextID++
			id := nextID | 7<<56
			inflight[id] = o
			opc := uint8(blkback.OpRead)
			if o.write {
				opc = blkback.OpWrite
			}
			blkback.EncodeRequest(abi, rg.Request(), &blkback.Request{Operation: opc, NrSegments: 1, ID: id,
				Sector: uint64(b) * 8, Segs: [11]blkback.Segment{{Gref: uint32(bufs[o.buf].Refs()[0]), LastSect: 7}}})
			issued++
			posted = true
		}
		if posted && rg.PushRequests() {
			evh.Notify(port) // may find no backend bound: the next one looks anyway
		}
		if progressed || posted {
			lastProgress = time.Now()
		} else {
			time.Sleep(50 * time.Microsecond)
		}
	}
	stop()
	for id, n := range answered {
		if n != 1 {
			return fmt.Errorf("request %#x answered %d times", id, n)
		}
	}
	if len(answered) != total {
		return fmt.Errorf("%d requests answered, %d issued", len(answered), total)
	}
	disk := readFile(t, path)
	for b := range blocks {
		if !bytes.Equal(disk[b*4096:(b+1)*4096], model[b]) {
			return fmt.Errorf("block %d on disk differs from the last acknowledged write", b)
		}
	}
	if killed < kills/2 {
		t.Errorf("only %d of %d kills happened", killed, kills)
	}
	delayed += slowDelayed(&slow)
	if delayed == 0 && mode != "uring" {
		t.Error("no request was delayed: completion was in order")
	}
	t.Logf("%d requests, %d backend kills, %d delayed (out of order) transfers", total, killed, delayed)
	return nil
}

// gateBacking blocks writes until the gate opens: a hung disk.
type gateBacking struct {
	blkback.Backing
	gate chan struct{}
}

func (b *gateBacking) WriteV(io *blkback.IO) error { <-b.gate; return b.Backing.WriteV(io) }

// Driver.Stalled (drvdomd's worker health) reports a ring with requests in
// flight and no progress, and never an idle one.
func TestStalledRing(t *testing.T) {
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	defer release()
	e := newEnv(t, func(d *blkback.Driver) {
		d.Engine = blkback.EnginePool
		d.Open = func(params string, o blkback.OpenOptions) (blkback.Backing, error) {
			b, err := blkback.OpenTarget(params, o)
			if err != nil {
				return nil, err
			}
			return &gateBacking{Backing: b, gate: gate}, nil
		}
	})
	f, _ := e.attach(t, 51712, tempDisk(t, 1<<20), "w", blkfront.Config{})
	ctx := ctxT(t)
	buf := make([]byte, 4096)
	if err := f.Read(ctx, 0, 0, buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if err := e.drv.Stalled(20 * time.Millisecond); err != nil {
		t.Fatalf("idle ring reported: %v", err)
	}
	res := make(chan error, 1)
	go func() { res <- f.Write(ctx, 0, 0, buf) }()
	waitFor(t, "stall reported", func() bool { return e.drv.Stalled(20*time.Millisecond) != nil })
	release()
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	if err := e.drv.Stalled(20 * time.Millisecond); err != nil {
		t.Fatalf("after the write completed: %v", err)
	}
}

// engineFor: the pool, whose workers the slow backing delays, except in
// "uring" mode (io_uring completes out of order by itself and publishes a
// batch at a time).
func engineFor(mode string) string {
	if mode == "uring" {
		return blkback.EngineURing
	}
	return blkback.EnginePool
}

// slowDelayed reads how many transfers the current backing delayed.
func slowDelayed(p *atomic.Pointer[slowBacking]) int64 {
	if b := p.Load(); b != nil {
		return b.delayed.Load()
	}
	return 0
}

// TestResumeNotifiesGuest: a process killed after it published responses
// and before it notified leaves a guest (which looks at its ring only when
// notified) waiting for ever; so the next process notifies every ring it
// resumes, once, before anything else.
func TestResumeNotifiesGuest(t *testing.T) {
	e := newEnv(t, func(d *blkback.Driver) { d.MaxQueues = 1 })
	f, _ := e.attach(t, 51712, tempDisk(t, 1<<20), "w", blkfront.Config{Protocol: "x86_64-abi", Manual: true})
	ctx := ctxT(t)
	evh, port := f.Evtchn(), f.Port(0)
	ports := []evtchn.Port{port}
	waitEvent := func(d time.Duration) bool {
		wctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		n, err := evh.Wait(wctx, ports)
		if err == nil && n > 0 {
			evh.Unmask(port)
			return true
		}
		return false
	}
	for waitEvent(50 * time.Millisecond) { // whatever the connect sent
	}
	e.stop()
	waitFor(t, "old backend let go", func() bool { return e.host.Events.BoundPorts(ddID) == 0 })
	e.startManager()
	if !waitEvent(5 * time.Second) {
		t.Fatal("the resumed backend did not notify the guest")
	}
}
