package journal_test

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"drvdom/internal/journal"
	"drvdom/ring"

	"github.com/stretchr/testify/require"
)

// alignedMem returns n zero bytes, 8-byte aligned.
func alignedMem(n int) []byte {
	return u64bytes(make([]uint64, (n+7)/8))[:n]
}

func TestLayoutPinned(t *testing.T) {
	require.Equal(t, 64, journal.HeaderSize)
	require.Equal(t, 128, journal.Stride(112)) // blkif x86_64 request: 16-byte entry header + 112
	require.Equal(t, 24, journal.Stride(8))
	require.Equal(t, 64+32*128, journal.Size(32, 112))
	mem := alignedMem(journal.Size(4, 8))
	_, err := journal.New(mem, 4, 8)
	require.NoError(t, err)
	require.Equal(t, journal.Magic, string(mem[:8]))
	require.Equal(t, uint32(journal.Version), binary.LittleEndian.Uint32(mem[8:]))
	require.Equal(t, uint32(4), binary.LittleEndian.Uint32(mem[12:]))
	require.Equal(t, uint32(8), binary.LittleEndian.Uint32(mem[16:]))
	require.NoError(t, journal.Check(mem))
}

func TestGeometryRefused(t *testing.T) {
	for _, c := range []struct{ rs, es int }{{0, 8}, {3, 8}, {1 << 17, 8}, {4, 0}, {4, 4097}} {
		_, err := journal.New(alignedMem(journal.Size(max(c.rs, 1), max(c.es, 1))), c.rs, c.es)
		require.ErrorIs(t, err, journal.ErrCorrupt, "%v", c)
	}
	_, err := journal.New(alignedMem(100), 4, 8)
	require.ErrorIs(t, err, journal.ErrCorrupt)
}

func req(id uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, id)
	return b
}

func TestRecoverRule(t *testing.T) {
	mem := alignedMem(journal.Size(8, 8))
	j, err := journal.New(mem, 8, 8)
	require.NoError(t, err)
	rec, err := j.Recover(42, 100)
	require.NoError(t, err)
	require.True(t, rec.Fresh)
	require.Equal(t, uint32(100), rec.ReqCons)

	var h [5]journal.Handle
	for i := range h {
		h[i], err = j.Taken(100+uint32(i), req(uint64(i)))
		require.NoError(t, err)
	}
	require.Equal(t, uint32(105), j.ReqCons())
	// Out of order: 3 -> slot 100, 1 -> slot 101 (published), 4 -> slot 102 (written, unpublished).
	j.Answered(h[3], 100)
	j.Answered(h[1], 101)
	j.Published(102)
	j.Answered(h[4], 102)
	require.Equal(t, 3, j.InFlight())

	// Restart: a new Journal over the same memory; rsp_prod = 102.
	j2, err := journal.New(mem, 8, 8)
	require.NoError(t, err)
	rec, err = j2.Recover(42, 102)
	require.NoError(t, err)
	require.False(t, rec.Fresh)
	require.Equal(t, uint32(105), rec.ReqCons)
	var ids []uint64
	for _, p := range rec.Redo {
		ids = append(ids, binary.LittleEndian.Uint64(p.Req))
	}
	require.Equal(t, []uint64{0, 2, 4}, ids, "unanswered 0 and 2, and 4 whose slot was never published")

	// Another ring (ident) or a ring that disagrees is not replayed.
	j3, err := journal.New(mem, 8, 8)
	require.NoError(t, err)
	_, err = j3.Recover(42, 101) // 4 outstanding by the ring, 3 by the journal
	require.ErrorIs(t, err, journal.ErrMismatch)
	rec, err = j3.Recover(7, 5)
	require.NoError(t, err)
	require.True(t, rec.Fresh)
	require.Equal(t, uint32(5), rec.ReqCons)
	require.Equal(t, 0, j3.InFlight())
}

func TestTakenFull(t *testing.T) {
	j, err := journal.New(alignedMem(journal.Size(2, 8)), 2, 8)
	require.NoError(t, err)
	_, _ = j.Recover(1, 0)
	_, err = j.Taken(0, req(0))
	require.NoError(t, err)
	_, err = j.Taken(1, req(1))
	require.NoError(t, err)
	_, err = j.Taken(2, req(2))
	require.ErrorIs(t, err, journal.ErrFull)
}

func TestOpenFileSurvives(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal", "vbd-2-51712-q0")
	j, err := journal.Open(path, 32, 112)
	require.NoError(t, err)
	_, err = j.Recover(9, 0)
	require.NoError(t, err)
	_, err = j.Taken(0, req(77))
	require.NoError(t, err)
	require.NoError(t, j.Close()) // as a dying process: no cleanup of the file
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, int64(journal.Size(32, 112)), st.Size())

	j, err = journal.Open(path, 32, 112)
	require.NoError(t, err)
	rec, err := j.Recover(9, 0)
	require.NoError(t, err)
	require.Len(t, rec.Redo, 1)
	require.Equal(t, uint64(77), binary.LittleEndian.Uint64(rec.Redo[0].Req))
	require.NoError(t, j.Close())

	// Another geometry: the old ring is gone, start empty.
	j, err = journal.Open(path, 64, 112)
	require.NoError(t, err)
	rec, err = j.Recover(9, 0)
	require.NoError(t, err)
	require.True(t, rec.Fresh)
	require.NoError(t, j.Close())

	// A corrupt file is refused.
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[3] ^= 0xff
	require.NoError(t, os.WriteFile(path, b, 0o600))
	_, err = journal.Open(path, 64, 112)
	require.ErrorIs(t, err, journal.ErrCorrupt)
}

func TestCorruptionDetected(t *testing.T) {
	mem := alignedMem(journal.Size(4, 16))
	j, err := journal.New(mem, 4, 16)
	require.NoError(t, err)
	_, _ = j.Recover(1, 0)
	h, err := j.Taken(0, req(5))
	require.NoError(t, err)
	_, err = j.Taken(1, req(6))
	require.NoError(t, err)
	require.NoError(t, journal.Check(mem))
	e := journal.HeaderSize + int(h)*journal.Stride(16)
	for _, off := range []int{
		0, 8, 12, 16, 20, 24, // magic, version, geometry, checksum
		28,                               // valid word
		e, e + 4, e + 12, e + 16, e + 20, // state, reqIdx, crc, data
	} {
		c := append([]byte(nil), mem...)
		c[off] ^= 0x80
		require.Error(t, journal.Check(c), "flip at %d", off)
	}
	// A duplicate request index.
	c := append([]byte(nil), mem...)
	e2 := journal.HeaderSize + int(1-h)*journal.Stride(16)
	copy(c[e2:e2+journal.Stride(16)], c[e:e+journal.Stride(16)])
	require.ErrorIs(t, journal.Check(c), journal.ErrCorrupt)
	require.ErrorIs(t, journal.Check(mem[:40]), journal.ErrCorrupt)
}

// The per-request path (Taken, Answered, Published) allocates nothing.
func TestSteadyStateAllocs(t *testing.T) {
	j, err := journal.New(alignedMem(journal.Size(32, 112)), 32, 112)
	require.NoError(t, err)
	_, _ = j.Recover(1, 0)
	r := make([]byte, 112)
	var idx uint32
	allocs := testing.AllocsPerRun(1000, func() {
		var hs [8]journal.Handle
		for i := range hs {
			hs[i], _ = j.Taken(idx+uint32(i), r)
		}
		for i := range hs { // out of order
			j.Answered(hs[(i*3)%8], idx+uint32(i))
		}
		idx += 8
		j.Published(idx)
	})
	require.Zero(t, allocs)
	require.Equal(t, 0, j.InFlight())
}

func BenchmarkRequest(b *testing.B) {
	j, err := journal.New(alignedMem(journal.Size(32, 112)), 32, 112)
	require.NoError(b, err)
	_, _ = j.Recover(1, 0)
	r := make([]byte, 112)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h, _ := j.Taken(uint32(i), r)
		j.Answered(h, uint32(i))
		j.Published(uint32(i + 1))
	}
}

// ---- crash model ----

const (
	mEntry = 256 // ring entry: request id u64 @0, payload u64 @8; response id u64 @0, payload echo u64 @8
)

type crash struct{}

// world is the shared state that survives the backend process: the ring
// page and the journal file; plus the frontend, which never crashes.
type world struct {
	t        *testing.T
	rng      *rand.Rand
	ringMem  []byte
	jmem     []byte
	front    *ring.Front
	total    uint64 // requests to issue
	issued   uint64
	answered map[uint64]int
	steps    int // stores made by the backend so far
	crashAt  int // crash when steps reaches it (0: never)
}

func (w *world) step() {
	w.steps++
	if w.steps == w.crashAt {
		panic(crash{})
	}
}

func payloadOf(id uint64) uint64 { return id*0x9E3779B97F4A7C15 + 1 }

// frontend posts what it can and consumes responses, checking each.
func (w *world) frontend() {
	for w.front.Unconsumed() > 0 {
		r := w.front.Response()
		id, echo := binary.LittleEndian.Uint64(r), binary.LittleEndian.Uint64(r[8:])
		require.Less(w.t, id, w.issued, "response for a request never issued")
		require.Equal(w.t, payloadOf(id), echo, "request %d served from a wrong copy", id)
		w.answered[id]++
		require.Equal(w.t, 1, w.answered[id], "request %d answered twice", id)
	}
	n := 0
	for w.front.Free() > 0 && w.issued < w.total && n < 1+w.rng.IntN(4) {
		r := w.front.Request()
		clear(r)
		binary.LittleEndian.PutUint64(r, w.issued)
		binary.LittleEndian.PutUint64(r[8:], payloadOf(w.issued))
		w.issued++
		n++
	}
	w.front.PushRequests()
}

type inflight struct {
	h       journal.Handle
	id, pay uint64
}

// backend is one backend process: everything in it dies on a crash.
type backend struct {
	w    *world
	back *ring.Back
	j    *journal.Journal
	fl   []inflight
}

// start is a (re)started backend process: recover from the journal.
func (w *world) start() *backend {
	back, err := ring.NewBack(w.ringMem, mEntry)
	require.NoError(w.t, err)
	j, err := journal.New(w.jmem, int(back.Size()), 16)
	require.NoError(w.t, err)
	j.SetHook(w.step)
	shared := back.SharedRspProd()
	rec, err := j.Recover(1, shared)
	require.NoError(w.t, err)
	back.Resume(rec.ReqCons, shared)
	b := &backend{w: w, back: back, j: j}
	for _, p := range rec.Redo {
		b.fl = append(b.fl, inflight{h: p.H, id: binary.LittleEndian.Uint64(p.Req), pay: binary.LittleEndian.Uint64(p.Req[8:])})
	}
	return b
}

// act does one random backend action.
func (b *backend) act() {
	w := b.w
	switch w.rng.IntN(3) {
	case 0: // take a request
		n, err := b.back.Unconsumed()
		require.NoError(w.t, err)
		if n == 0 {
			return
		}
		idx := b.back.ReqCons()
		var cp [16]byte
		copy(cp[:], b.back.Request()) // copy first, as blkback does
		h, err := b.j.Taken(idx, cp[:])
		require.NoError(w.t, err)
		b.fl = append(b.fl, inflight{h: h, id: binary.LittleEndian.Uint64(cp[:]), pay: binary.LittleEndian.Uint64(cp[8:])})
	case 1: // complete one, out of order
		if len(b.fl) == 0 {
			return
		}
		i := w.rng.IntN(len(b.fl))
		f := b.fl[i]
		b.fl = append(b.fl[:i], b.fl[i+1:]...)
		k := b.back.RspProdPvt()
		r := b.back.Response()
		w.step()
		binary.LittleEndian.PutUint64(r, f.id)
		w.step()
		binary.LittleEndian.PutUint64(r[8:], f.pay)
		b.j.Answered(f.h, k)
	case 2: // publish
		w.step()
		b.back.PushResponses()
		b.j.Published(b.back.SharedRspProd())
	}
}

// runModel runs the whole workload, crashing the backend when the store
// counter reaches each of crashes (ascending), and checks that every
// request got exactly one published response.
func runModel(t *testing.T, seed uint64, total int, crashes []int) (steps int) {
	w := &world{t: t, rng: rand.New(rand.NewPCG(seed, 1)), ringMem: alignedMem(ring.PageSize),
		answered: map[uint64]int{}, total: uint64(total)}
	var err error
	w.front, err = ring.NewFront(w.ringMem, mEntry)
	require.NoError(t, err)
	w.jmem = alignedMem(journal.Size(int(w.front.Size()), 16))
	next := 0
	arm := func() {
		w.crashAt = 0
		if next < len(crashes) {
			w.crashAt = crashes[next]
			next++
		}
	}
	arm()
	var b *backend
	restarts := 0
	for iter := 0; len(w.answered) < total; iter++ {
		require.Less(t, iter, 100000, "no progress: %d of %d answered", len(w.answered), total)
		crashed := func() (crashed bool) {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(crash); !ok {
						panic(r)
					}
					crashed = true
				}
			}()
			if b == nil {
				b = w.start()
			}
			w.frontend()
			for range 1 + w.rng.IntN(4) {
				b.act()
			}
			return false
		}()
		if crashed {
			b = nil // the process is gone; the ring and the journal stay
			restarts++
			arm()
		}
	}
	for id := range uint64(total) {
		require.Equal(t, 1, w.answered[id], "request %d", id)
	}
	require.Equal(t, len(crashes), restarts)
	return w.steps
}

// Death between any two stores of a run, for several workloads: replay
// gives every request exactly one published response.
func TestCrashAtEveryStep(t *testing.T) {
	for seed := range uint64(4) {
		n := runModel(t, seed, 40, nil)
		for at := 1; at <= n; at++ {
			runModel(t, seed, 40, []int{at})
		}
		t.Logf("seed %d: %d crash points", seed, n)
	}
}

// Many deaths in one run, including during recovery.
func TestCrashRepeatedly(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for seed := range uint64(20) {
		var crashes []int
		at := 0
		for range 30 {
			at += 1 + rng.IntN(25)
			crashes = append(crashes, at)
		}
		runModel(t, 100+seed, 300, crashes)
	}
}

// Without the journal (resuming from the shared rsp_prod, the old way) the
// same model loses or duplicates requests: the model can fail.
func TestModelCatchesRsprodResume(t *testing.T) {
	failed := false
	for seed := uint64(0); seed < 50 && !failed; seed++ {
		failed = modelFailsWithoutJournal(seed)
	}
	require.True(t, failed, "resuming from rsp_prod should be caught by the model")
}

func modelFailsWithoutJournal(seed uint64) (failed bool) {
	rng := rand.New(rand.NewPCG(seed, 3))
	mem := alignedMem(ring.PageSize)
	front, _ := ring.NewFront(mem, mEntry)
	answered := map[uint64]int{}
	issued := uint64(0)
	var back *ring.Back
	var fl [][2]uint64
	for iter := 0; iter < 2000; iter++ {
		if back == nil || rng.IntN(40) == 0 { // restart, resuming from rsp_prod
			back, _ = ring.NewBack(mem, mEntry)
			p := back.SharedRspProd()
			back.Resume(p, p)
			fl = fl[:0]
		}
		for front.Unconsumed() > 0 {
			r := front.Response()
			id := binary.LittleEndian.Uint64(r)
			if id >= issued || binary.LittleEndian.Uint64(r[8:]) != payloadOf(id) {
				return true
			}
			answered[id]++
			if answered[id] > 1 {
				return true
			}
		}
		for front.Free() > 0 && rng.IntN(2) == 0 {
			r := front.Request()
			binary.LittleEndian.PutUint64(r, issued)
			binary.LittleEndian.PutUint64(r[8:], payloadOf(issued))
			issued++
		}
		front.PushRequests()
		if n, err := back.Unconsumed(); err == nil && n > 0 {
			r := back.Request()
			fl = append(fl, [2]uint64{binary.LittleEndian.Uint64(r), binary.LittleEndian.Uint64(r[8:])})
		}
		if len(fl) > 0 && rng.IntN(2) == 0 {
			i := rng.IntN(len(fl))
			f := fl[i]
			fl = append(fl[:i], fl[i+1:]...)
			r := back.Response()
			binary.LittleEndian.PutUint64(r, f[0])
			binary.LittleEndian.PutUint64(r[8:], f[1])
			back.PushResponses()
		}
	}
	return false
}

// Inspect reads back what the protocol wrote, and leaves the image as it is.
func TestInspect(t *testing.T) {
	mem := alignedMem(journal.Size(4, 8))
	j, err := journal.New(mem, 4, 8)
	require.NoError(t, err)
	_, err = j.Recover(7, 10)
	require.NoError(t, err)
	h0, err := j.Taken(10, req(100))
	require.NoError(t, err)
	_, err = j.Taken(11, req(101))
	require.NoError(t, err)
	h2, err := j.Taken(12, req(102))
	require.NoError(t, err)
	j.Answered(h2, 10)
	j.Answered(h0, 11)
	j.Published(11) // retires h2 only

	before := append([]byte(nil), mem...)
	s, err := journal.Inspect(mem)
	require.NoError(t, err)
	require.Equal(t, before, mem)
	require.True(t, s.Valid)
	require.Equal(t, uint64(7), s.Ident)
	require.Equal(t, uint32(13), s.ReqCons)
	got := map[uint32]journal.Entry{}
	for _, e := range s.Entries {
		got[e.ReqIdx] = e
	}
	require.Len(t, got, 2)
	require.True(t, got[10].Answered)
	require.Equal(t, uint32(11), got[10].RspIdx)
	require.Equal(t, uint64(100), binary.LittleEndian.Uint64(got[10].Req))
	require.False(t, got[11].Answered)
	require.Equal(t, uint64(101), binary.LittleEndian.Uint64(got[11].Req))

	mem[3] ^= 0xff
	_, err = journal.Inspect(mem)
	require.ErrorIs(t, err, journal.ErrCorrupt)
}
