package blkback_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/xensim/blkfront"
	"drvdom/ring"
)

// rawFront drives one ring directly, without blkfront's per-request
// bookkeeping, so allocation counts and CPU time are the backend's.
type rawFront struct {
	r       *ring.Front
	evh     evtchn.Handle
	port    evtchn.Port
	tmpl    [][]byte
	ports   []evtchn.Port
	share   grant.Share
	abi     blkback.ABI
	ringRef uint32
}

// one puts slot on the ring as it is and returns the response.
func (rf *rawFront) one(t testing.TB, ctx context.Context, slot []byte) blkback.Response {
	copy(rf.r.Request(), slot)
	if rf.r.PushRequests() {
		rf.evh.Notify(rf.port)
	}
	for {
		if rf.r.Unconsumed() > 0 {
			return blkback.DecodeResponse(rf.r.Response())
		}
		if !rf.r.FinalCheckForResponses() {
			if _, err := rf.evh.Wait(ctx, rf.ports); err != nil {
				t.Fatalf("no response: %v", err)
			}
			rf.evh.Unmask(rf.port)
		}
	}
}

func newRawFront(t testing.TB, e *env, persistent bool, op uint8) *rawFront {
	return newRawFrontOn(t, e, "null:1073741824", persistent, op, 1)
}

// newRawFrontOn: requests i of the ring at sector (i*stride)*8.
func newRawFrontOn(t testing.TB, e *env, params string, persistent bool, op uint8, stride int) *rawFront {
	return newRawFrontDev(t, e, 51712, params, blkback.ProtoX86_64, persistent, op, stride)
}

func newRawFrontDev(t testing.TB, e *env, devid uint32, params, proto string, persistent bool, op uint8, stride int) *rawFront {
	f, d := e.attach(t, devid, params, "w", blkfront.Config{Protocol: proto, Persistent: persistent, Manual: true})
	abi, _ := blkback.ParseProtocol(proto)
	rr, err := e.d0.Read(ctxT(t), d.FrontPath()+"/ring-ref")
	if err != nil {
		t.Fatal(err)
	}
	ringRef, _ := strconv.ParseUint(rr, 10, 32)
	r := f.Ring(0)
	sh, err := f.Share(int(r.Size()), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Close() })
	rf := &rawFront{r: r, evh: f.Evtchn(), port: f.Port(0), ports: make([]evtchn.Port, 1), share: sh, abi: abi, ringRef: uint32(ringRef)}
	for i := 0; i < int(r.Size()); i++ {
		b := make([]byte, abi.RequestSize())
		req := blkback.Request{Operation: op, NrSegments: 1, ID: uint64(i), Sector: uint64(i * 8 * stride),
			Segs: [11]blkback.Segment{{Gref: uint32(sh.Refs()[i]), FirstSect: 0, LastSect: 7}}}
		blkback.EncodeRequest(abi, b, &req)
		rf.tmpl = append(rf.tmpl, b)
	}
	return rf
}

// batch puts n requests on the ring and waits for their n responses.
func (rf *rawFront) batch(t testing.TB, ctx context.Context, n int) {
	for i := 0; i < n; i++ {
		copy(rf.r.Request(), rf.tmpl[i])
	}
	if rf.r.PushRequests() {
		rf.evh.Notify(rf.port)
	}
	got := 0
	for got < n {
		for rf.r.Unconsumed() > 0 {
			rsp := rf.r.Response()
			if st := int16(binary.LittleEndian.Uint16(rsp[10:])); st != 0 {
				t.Fatalf("status %d", st)
			}
			got++
		}
		if got < n && !rf.r.FinalCheckForResponses() {
			if _, err := rf.evh.Wait(ctx, rf.ports); err != nil {
				t.Fatal(err)
			}
			rf.evh.Unmask(rf.port)
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkNullDisk measures the protocol path: 4 KiB reads from the null
// disk, 32 in flight, one ring. req/cpu-s is requests per second of CPU
// consumed by the whole process (frontend and backend): per core.
func BenchmarkNullDisk(b *testing.B) {
	for _, c := range []struct {
		name       string
		persistent bool
		journal    bool
	}{{"persistent", true, true}, {"map-per-request", false, true}, {"persistent-nojournal", true, false}} {
		b.Run(c.name, func(b *testing.B) {
			e := newEnv(b, func(d *blkback.Driver) {
				if !c.journal {
					d.JournalDir = ""
				}
			})
			rf := newRawFront(b, e, c.persistent, blkback.OpRead)
			ctx := context.Background()
			rf.batch(b, ctx, 32) // warm: persistent grants mapped
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for done := 0; done < b.N; {
				n := min(32, b.N-done)
				rf.batch(b, ctx, n)
				done += n
			}
			cpu := cpuTime() - cpu0
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			b.ReportMetric(float64(b.N)/cpu.Seconds(), "req/cpu-s")
		})
	}
}

// BenchmarkFileRead: 4 KiB O_DIRECT reads of a file on the test machine's
// disk (or in $BLKBACK_BENCH_DIR), 32 in flight, through each I/O engine.
func BenchmarkFileRead(b *testing.B) {
	for _, c := range []struct {
		engine  string
		workers int
	}{{blkback.EnginePool, 4}, {blkback.EnginePool, 16}, {blkback.EnginePool, 32}, {blkback.EngineURing, 0}} {
		b.Run(fmt.Sprintf("%s/workers=%d", c.engine, c.workers), func(b *testing.B) {
			e := newEnv(b, func(d *blkback.Driver) { d.Workers, d.Engine = c.workers, c.engine })
			dir := b.TempDir()
			if d := os.Getenv("BLKBACK_BENCH_DIR"); d != "" {
				dir = d // e.g. /dev/shm: page-cache speed, the engine's own overhead
			}
			path := filepath.Join(dir, "disk.img")
			b.Cleanup(func() { os.Remove(path) })
			if err := os.WriteFile(path, bytes.Repeat([]byte{0xa5}, 256<<20), 0o600); err != nil {
				b.Fatal(err)
			}
			rf := newRawFrontOn(b, e, path, true, blkback.OpRead, 997)
			ctx := context.Background()
			rf.batch(b, ctx, 32)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for done := 0; done < b.N; {
				n := min(32, b.N-done)
				rf.batch(b, ctx, n)
				done += n
			}
			cpu := cpuTime() - cpu0
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			b.ReportMetric(float64(b.N)/cpu.Seconds(), "req/cpu-s")
		})
	}
}

// BenchmarkFileReadQD1: 4 KiB O_DIRECT reads one at a time through
// io_uring (the lab's QD1 latency row). Run it under `strace -f -c` for
// the system calls per request.
func BenchmarkFileReadQD1(b *testing.B) {
	e := newEnv(b, func(d *blkback.Driver) { d.Engine = blkback.EngineURing })
	dir := b.TempDir()
	if d := os.Getenv("BLKBACK_BENCH_DIR"); d != "" {
		dir = d
	}
	path := filepath.Join(dir, "disk.img")
	b.Cleanup(func() { os.Remove(path) })
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xa5}, 64<<20), 0o600); err != nil {
		b.Fatal(err)
	}
	rf := newRawFrontOn(b, e, path, true, blkback.OpRead, 499) // 32 slots within 64 MiB
	ctx := context.Background()
	rf.batch(b, ctx, 32)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		rf.batch(b, ctx, 1)
	}
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	b.ReportMetric(float64(b.N)/cpu.Seconds(), "req/cpu-s")
}

// TestSteadyStateAllocs: with persistent grants, serving requests on the
// null disk allocates nothing (counted process-wide, so the backend's
// goroutine is included).
func TestSteadyStateAllocs(t *testing.T) {
	e := newEnv(t, func(d *blkback.Driver) { d.StatsInterval, d.ResizeInterval = -1, -1 })
	rf := newRawFront(t, e, true, blkback.OpRead)
	ctx := ctxT(t)
	for i := 0; i < 10; i++ {
		rf.batch(t, ctx, 32)
	}
	allocs := testing.AllocsPerRun(200, func() { rf.batch(t, ctx, 32) })
	if allocs != 0 {
		t.Fatalf("%.1f allocations per batch of 32 requests in steady state", allocs)
	}
}

// TestBarrierInBatch: a WRITE_BARRIER between writes pushed together waits
// only for the writes before it, and all three complete (file backing, so
// the writes run on the I/O engine).
func TestBarrierInBatch(t *testing.T) {
	for _, engine := range []string{blkback.EnginePool, blkback.EngineURing} {
		t.Run(engine, func(t *testing.T) {
			e := newEnv(t, func(d *blkback.Driver) { d.Engine = engine })
			path := tempDisk(t, 1<<20)
			rf := newRawFrontOn(t, e, path, true, blkback.OpWrite, 1)
			ctx := ctxT(t)
			b := make([]byte, blkback.RequestSize64)
			blkback.EncodeRequest(blkback.ABI64, b, &blkback.Request{Operation: blkback.OpWriteBarrier, ID: 1,
				NrSegments: 1, Sector: 8, Segs: [11]blkback.Segment{{Gref: uint32(rf.share.Refs()[1]), LastSect: 7}}})
			rf.tmpl[1] = b
			copy(rf.share.Bytes()[4096:8192], bytes.Repeat([]byte{0x5a}, 4096))
			for i := 0; i < 20; i++ {
				rf.batch(t, ctx, 3)
			}
			if got := readFile(t, path)[8*512 : 16*512]; !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 4096)) {
				t.Fatal("barrier data not on disk")
			}
		})
	}
}
