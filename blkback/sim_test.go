package blkback_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/internal/xensim"
	"drvdom/internal/xensim/blkfront"
	"drvdom/xenstore"
	"drvdom/xenstore/xenbus"
)

const (
	ddID    = 1
	guestID = 2
)

type env struct {
	t      testing.TB
	host   *xensim.Host
	dd     *xensim.Domain
	guest  *xensim.Domain
	d0     *xenstore.Client
	gstore *xenstore.Client
	drv    *blkback.Driver
	cancel context.CancelFunc
	done   chan struct{}

	closeAll func()
}

func quietLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newEnv builds a host with dom0, a driver domain running the vbd Manager
// with blkback, and a guest.
func newEnv(t testing.TB, tune func(*blkback.Driver)) *env {
	t.Helper()
	host := xensim.New()
	dom0 := host.NewDomain(0)
	dd := host.NewDomain(ddID)
	guest := host.NewDomain(guestID)
	e := &env{t: t, host: host, dd: dd, guest: guest, d0: dom0.Xenstore(), gstore: guest.Xenstore()}
	e.drv = &blkback.Driver{
		Grants:         dd.Mapper(),
		Events:         func() (evtchn.Handle, error) { return dd.Evtchn(), nil },
		Log:            quietLog(),
		MaxQueues:      4,
		Workers:        4,
		ResizeInterval: 20 * time.Millisecond,
		StatsInterval:  20 * time.Millisecond,
		JournalDir:     t.TempDir(),
	}
	if tune != nil {
		tune(e.drv)
	}
	e.startManager()
	e.closeAll = sync.OnceFunc(func() {
		e.stop()
		e.d0.Close()
		e.gstore.Close()
		host.Close()
	})
	t.Cleanup(e.closeAll)
	return e
}

// startManager runs the driver domain's daemon: a Manager with blkback on
// a fresh xenstore connection.
func (e *env) startManager() {
	e.startManagerLog(quietLog())
}

// stop stops the daemon as a crash would look to the guest: xenstore is left
// as it is, the host side is freed.
func (e *env) stop() {
	e.cancel()
	<-e.done
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func tempDisk(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) attach(t testing.TB, devid uint32, params, mode string, cfg blkfront.Config) (*blkfront.Front, blkfront.Disk) {
	t.Helper()
	ctx := ctxT(t)
	d := blkfront.Disk{BackDom: ddID, FrontDom: guestID, DevID: devid, Params: params, Mode: mode}
	if err := blkfront.AddDisk(ctx, e.d0, d); err != nil {
		t.Fatal(err)
	}
	f, err := blkfront.Attach(ctx, e.gstore, e.guest.Sharer(), e.guest.Evtchn(), d.FrontPath(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f, d
}

func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// modes are the ways data pages reach the backend, with its engines.
var modes = []struct {
	name       string
	persistent bool // the frontend offers feature-persistent
	tune       func(*blkback.Driver)
}{
	{"map", false, nil},
	{"persistent", true, nil},
	{"grant-copy", true, func(d *blkback.Driver) { d.GrantCopy = true }},
	{"map+uring", false, func(d *blkback.Driver) { d.Engine = blkback.EngineURing }},
	{"persistent+uring", true, func(d *blkback.Driver) { d.Engine = blkback.EngineURing }},
	{"persistent+uring-rings", true, func(d *blkback.Driver) { d.Engine, d.RingThreads = blkback.EngineURing, true }},
	{"grant-copy+uring", true, func(d *blkback.Driver) { d.GrantCopy, d.Engine = true, blkback.EngineURing }},
	// Four bounce buffers: a full ring also takes the frontend's pages.
	{"persistent+uring-fixed", true, func(d *blkback.Driver) { d.Engine, d.FixedBuffers = blkback.EngineURing, 4 }},
	{"map+uring-fixed", false, func(d *blkback.Driver) { d.Engine, d.FixedBuffers = blkback.EngineURing, 4 }},
}

var abis = []struct {
	name, proto string
}{{"no-protocol-key", ""}, {"x86_32", blkback.ProtoX86_32}, {"x86_64", blkback.ProtoX86_64}}

// TestOperationsBothABIs runs every operation through the whole stack, on
// both ABIs, with and without persistent grants, and checks the file.
func TestOperationsBothABIs(t *testing.T) {
	for _, abi := range abis {
		for _, mode := range modes {
			t.Run(abi.name+"/"+mode.name, func(t *testing.T) {
				e := newEnv(t, mode.tune)
				path := tempDisk(t, 8<<20)
				f, _ := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: abi.proto, Persistent: mode.persistent})
				persistent := mode.persistent && e.drv.GrantCopy == false
				ctx := ctxT(t)
				if f.Sectors != 8<<20/512 || f.SectorSize != 512 || f.Info != 0 {
					t.Fatalf("disk: sectors %d sector-size %d info %d", f.Sectors, f.SectorSize, f.Info)
				}
				if !f.FeatureFlush || !f.FeatureBarrier || !f.FeatureDiscard || f.MaxIndirect != 256 {
					t.Fatalf("features: flush %v barrier %v discard %v indirect %d", f.FeatureFlush, f.FeatureBarrier, f.FeatureDiscard, f.MaxIndirect)
				}
				if f.Persistent != persistent {
					t.Fatalf("persistent negotiated %v", f.Persistent)
				}
				// Write: 1 sector, 1 page, 11 pages, odd tail.
				writes := []struct {
					sector uint64
					n      int
				}{{0, 512}, {8, 4096}, {100, 11 * 4096}, {2000, 3*4096 + 1536}}
				for i, w := range writes {
					data := pattern(w.n, uint64(i+1))
					if err := f.Write(ctx, 0, w.sector, data); err != nil {
						t.Fatalf("write %d: %v", i, err)
					}
					got := make([]byte, w.n)
					if err := f.Read(ctx, 0, w.sector, got); err != nil {
						t.Fatalf("read %d: %v", i, err)
					}
					if !bytes.Equal(got, data) {
						t.Fatalf("read %d differs from what was written", i)
					}
				}
				if err := f.Flush(ctx, 0); err != nil {
					t.Fatalf("flush: %v", err)
				}
				// Between requests only the ring (and persistent grants) stay mapped.
				mapped := e.host.Grants.Mapped(ddID)
				switch {
				case persistent && mapped <= 1:
					t.Fatalf("persistent mode keeps %d pages mapped", mapped)
				case !persistent && mapped != 1:
					t.Fatalf("%s mode keeps %d pages mapped after the responses", mode.name, mapped)
				}
				// FLUSH_DISKCACHE and WRITE_BARRIER with data, as blkfront sends FUA writes.
				for op, sector := range map[uint8]uint64{blkback.OpFlushDiskcache: 4000, blkback.OpWriteBarrier: 4100} {
					data := pattern(8192, uint64(op)+50)
					if err := f.Transfer(ctx, 0, op, sector, data); err != nil {
						t.Fatalf("op %d with data: %v", op, err)
					}
					onDisk := readFile(t, path)
					if !bytes.Equal(onDisk[sector*512:sector*512+8192], data) {
						t.Fatalf("op %d data not on disk", op)
					}
				}
				rsp, err := f.Submit(ctx, 0, &blkback.Request{Operation: blkback.OpWriteBarrier})
				if err != nil || rsp.Status != 0 || rsp.Operation != blkback.OpWriteBarrier {
					t.Fatalf("barrier: %+v %v", rsp, err)
				}
				// The file holds what was written.
				onDisk := readFile(t, path)
				if !bytes.Equal(onDisk[100*512:100*512+11*4096], pattern(11*4096, 3)) {
					t.Fatal("file content differs")
				}
				// Discard punches the range.
				if err := f.Discard(ctx, 0, 100, 16, false); err != nil {
					t.Fatalf("discard: %v", err)
				}
				onDisk = readFile(t, path)
				if !bytes.Equal(onDisk[100*512:116*512], make([]byte, 16*512)) {
					t.Fatal("discarded range not zero")
				}
				if !bytes.Equal(onDisk[116*512:100*512+11*4096], pattern(11*4096, 3)[16*512:]) {
					t.Fatal("discard went beyond its range")
				}
				// A file cannot discard securely.
				if err := f.Discard(ctx, 0, 0, 8, true); !errors.Is(err, blkfront.ErrStatus(blkback.StatusEOPNOTSUPP)) {
					t.Fatalf("secure discard: %v", err)
				}
				if err := f.Close(ctx); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestIndirect256 moves 1 MiB in one request of 256 indirect segments.
func TestIndirect256(t *testing.T) {
	for _, abi := range abis[1:] {
		for _, mode := range modes {
			t.Run(abi.name+"/"+mode.name, func(t *testing.T) {
				e := newEnv(t, mode.tune)
				path := tempDisk(t, 4<<20)
				f, d := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: abi.proto, Persistent: mode.persistent})
				ctx := ctxT(t)
				data := pattern(256*4096, 7)
				if err := f.Write(ctx, 0, 2048, data); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(readFile(t, path)[2048*512:2048*512+len(data)], data) {
					t.Fatal("indirect write not on disk")
				}
				got := make([]byte, len(data))
				if err := f.Read(ctx, 0, 2048, got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, data) {
					t.Fatal("indirect read differs")
				}
				// 257 segments is refused by the frontend helper; by hand it is an error response.
				rsp, err := f.Submit(ctx, 0, &blkback.Request{Operation: blkback.OpIndirect, IndirectOp: blkback.OpRead, NrSegments: 257})
				if err != nil || rsp.Status != blkback.StatusError || rsp.Operation != blkback.OpRead {
					t.Fatalf("257 indirect segments: %+v %v", rsp, err)
				}
				st := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Indirect >= 3 })
				if st.BytesWritten != uint64(len(data)) || st.BytesRead != uint64(len(data)) {
					t.Fatalf("stats %+v", st)
				}
			})
		}
	}
}

// waitStats polls the drvdom-stats key until cond holds.
func waitStats(t testing.TB, e *env, d blkfront.Disk, cond func(blkback.StatsSnapshot) bool) blkback.StatsSnapshot {
	t.Helper()
	ctx := ctxT(t)
	var s blkback.StatsSnapshot
	for ctx.Err() == nil {
		v, err := e.d0.Read(ctx, d.BackPath()+"/"+blkback.StatsKey)
		if err == nil {
			if err := json.Unmarshal([]byte(v), &s); err != nil {
				t.Fatalf("stats %q: %v", v, err)
			}
			if cond(s) {
				return s
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("stats never satisfied the condition; last %+v", s)
	return s
}

// TestPersistentReuseAndPurge: repeated I/O reuses the mapped grants, and a
// bound smaller than the working set purges least recently used grants.
func TestPersistentReuseAndPurge(t *testing.T) {
	e := newEnv(t, func(d *blkback.Driver) { d.MaxPersistentGrants = 20 })
	path := tempDisk(t, 4<<20)
	f, d := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: blkback.ProtoX86_64, Persistent: true})
	ctx := ctxT(t)
	data := pattern(8*4096, 1)
	for i := 0; i < 10; i++ {
		if err := f.Write(ctx, 0, uint64(i*64), data); err != nil {
			t.Fatal(err)
		}
	}
	st := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Writes == 10 })
	if st.PersistentHits < 9*8 || st.PersistentMisses > 8 || st.PersistentPurged != 0 {
		t.Fatalf("reuse: %+v", st)
	}
	// Ring page + 8 persistent grants mapped, nothing else.
	if n := e.host.Grants.Mapped(ddID); n != 1+8 {
		t.Fatalf("mapped pages %d, want 9", n)
	}
	// 64 segments (indirect): more than the bound, some in use at once.
	big := pattern(64*4096, 2)
	for i := 0; i < 3; i++ {
		if err := f.Write(ctx, 0, 4096, big); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(big))
		if err := f.Read(ctx, 0, 4096, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, big) {
			t.Fatal("data differs across purges")
		}
	}
	st = waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Reads == 3 })
	if st.PersistentPurged == 0 || st.PersistentOverflow == 0 {
		t.Fatalf("no purge/overflow with a working set over the bound: %+v", st)
	}
	if n := e.host.Grants.Mapped(ddID); n > 1+20 {
		t.Fatalf("mapped pages %d exceed ring + bound", n)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "persistent grants unmapped", func() bool { return e.host.Grants.Mapped(ddID) == 0 })
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	// Longer than xenbus.DefaultResync: a coalesced watch event is caught
	// by the Manager's rescan.
	deadline := time.Now().Add(xenbus.DefaultResync + 5*time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMultiQueueMultiPage: 3 queues of 4-page rings, concurrent I/O on each.
func TestMultiQueueMultiPage(t *testing.T) {
	engines := []struct {
		name, want string // want: StatsSnapshot.Engine
		tune       func(*blkback.Driver)
	}{
		{"pool", "pool", func(d *blkback.Driver) { d.Engine = blkback.EnginePool }},
		{"uring", "uring", func(d *blkback.Driver) { d.Engine = blkback.EngineURing }},
		{"uring-rings", "uring-rings", func(d *blkback.Driver) { d.Engine, d.RingThreads = blkback.EngineURing, true }},
	}
	for _, abi := range abis[1:] {
		for _, eng := range engines {
			t.Run(abi.name+"/"+eng.name, func(t *testing.T) {
				testMultiQueueMultiPage(t, abi.proto, eng.tune, eng.want)
			})
		}
	}
}

// testMultiQueueMultiPage: three rings of four pages each, 40 writers per
// ring, each reading its data back through another ring.
func testMultiQueueMultiPage(t *testing.T, proto string, tune func(*blkback.Driver), engine string) {
	e := newEnv(t, tune)
	path := tempDisk(t, 16<<20)
	f, d := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: proto, Queues: 3, RingPageOrder: 2, Persistent: true})
	ctx := ctxT(t)
	if f.Queues() != 3 {
		t.Fatalf("queues %d", f.Queues())
	}
	if n := f.Ring(0).Size(); n != 128 {
		t.Fatalf("4-page ring has %d entries, want 128", n)
	}
	for _, k := range []string{"queue-0/ring-ref0", "queue-2/ring-ref3", "queue-1/event-channel", "ring-page-order", "multi-queue-num-queues"} {
		if _, err := e.d0.Read(ctx, d.FrontPath()+"/"+k); err != nil {
			t.Fatalf("frontend key %s: %v", k, err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3*40)
	for q := 0; q < 3; q++ {
		for w := 0; w < 40; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sector := uint64((q*40 + w) * 16)
				data := pattern(8192, sector+1)
				if err := f.Write(ctx, q, sector, data); err != nil {
					errs <- err
					return
				}
				got := make([]byte, 8192)
				if err := f.Read(ctx, (q+1)%3, sector, got); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("queue %d sector %d differs", q, sector)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Reads == 120 })
	if st.Queues != 3 || st.Writes != 120 || st.Errors != 0 || st.Engine != engine {
		t.Fatalf("stats %+v, want engine %s", st, engine)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestBadRequests: hostile requests get error responses, the ring keeps
// working, and another device is unaffected.
func TestBadRequests(t *testing.T) {
	for _, abi := range abis {
		for _, mode := range modes {
			t.Run(abi.name+"/"+mode.name, func(t *testing.T) {
				e := newEnv(t, mode.tune)
				path := tempDisk(t, 1<<20)
				f, d := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: abi.proto, Persistent: mode.persistent})
				other, _ := e.attach(t, 51728, tempDisk(t, 1<<20), "w", blkfront.Config{Protocol: blkback.ProtoX86_64, Persistent: true})
				ro, _ := e.attach(t, 51744, path, "r", blkfront.Config{Protocol: abi.proto})
				ctx := ctxT(t)
				if ro.Info&blkback.VDiskReadOnly == 0 {
					t.Fatalf("read-only disk info %#x", ro.Info)
				}
				page, err := f.Share(1, true)
				if err != nil {
					t.Fatal(err)
				}
				defer page.Close()
				ref := uint32(page.Refs()[0])
				seg := func(first, last uint8) [11]blkback.Segment {
					return [11]blkback.Segment{{Gref: ref, FirstSect: first, LastSect: last}}
				}
				cases := []struct {
					name string
					r    blkback.Request
					want int16
				}{
					{"past the end", blkback.Request{Operation: blkback.OpRead, NrSegments: 1, Sector: 2048 - 7, Segs: seg(0, 7)}, blkback.StatusError},
					{"huge sector", blkback.Request{Operation: blkback.OpWrite, NrSegments: 1, Sector: ^uint64(0) - 3, Segs: seg(0, 7)}, blkback.StatusError},
					{"last_sect 8", blkback.Request{Operation: blkback.OpRead, NrSegments: 1, Segs: seg(0, 8)}, blkback.StatusError},
					{"first > last", blkback.Request{Operation: blkback.OpRead, NrSegments: 1, Segs: seg(6, 2)}, blkback.StatusError},
					{"0 segments", blkback.Request{Operation: blkback.OpRead}, blkback.StatusError},
					{"12 segments", blkback.Request{Operation: blkback.OpRead, NrSegments: 12}, blkback.StatusError},
					{"bad grant", blkback.Request{Operation: blkback.OpRead, NrSegments: 1, Segs: [11]blkback.Segment{{Gref: 99999, LastSect: 7}}}, blkback.StatusError},
					{"reserved op", blkback.Request{Operation: blkback.OpReserved1, NrSegments: 1, Segs: seg(0, 7)}, blkback.StatusEOPNOTSUPP},
					{"op 77", blkback.Request{Operation: 77}, blkback.StatusEOPNOTSUPP},
					{"indirect bad page", blkback.Request{Operation: blkback.OpIndirect, IndirectOp: blkback.OpRead, NrSegments: 20, IndirectGrefs: [8]uint32{424242}}, blkback.StatusError},
					{"indirect flush", blkback.Request{Operation: blkback.OpIndirect, IndirectOp: blkback.OpFlushDiskcache, NrSegments: 1}, blkback.StatusError},
					{"discard past end", blkback.Request{Operation: blkback.OpDiscard, Sector: 1000, NrSectors: 2000}, blkback.StatusError},
				}
				for _, c := range cases {
					rsp, err := f.Submit(ctx, 0, &c.r)
					if err != nil {
						t.Fatalf("%s: %v", c.name, err)
					}
					if rsp.Status != c.want || rsp.Operation != c.r.Op() {
						t.Errorf("%s: response %+v, want status %d op %d", c.name, rsp, c.want, c.r.Op())
					}
				}
				// Read-only: a read grant the backend may only read from is refused for a read.
				roPage, _ := f.Share(1, false)
				defer roPage.Close()
				rsp, _ := f.Submit(ctx, 0, &blkback.Request{Operation: blkback.OpRead, NrSegments: 1,
					Segs: [11]blkback.Segment{{Gref: uint32(roPage.Refs()[0]), LastSect: 7}}})
				if rsp.Status != blkback.StatusError {
					t.Errorf("read into a read-only grant: %+v", rsp)
				}
				for _, op := range []func() error{
					func() error { return ro.Write(ctx, 0, 0, make([]byte, 512)) },
					func() error { return ro.Discard(ctx, 0, 0, 8, false) },
					func() error { return ro.Flush(ctx, 0) },
				} {
					if err := op(); !errors.Is(err, blkfront.ErrStatus(blkback.StatusError)) && !errors.Is(err, blkfront.ErrStatus(blkback.StatusEOPNOTSUPP)) {
						t.Errorf("read-only device accepted a write: %v", err)
					}
				}
				if err := ro.Read(ctx, 0, 0, make([]byte, 4096)); err != nil {
					t.Errorf("read-only read: %v", err)
				}
				// The same ring and the other device still work.
				data := pattern(4096, 9)
				if err := f.Write(ctx, 0, 64, data); err != nil {
					t.Fatalf("good write after bad ones: %v", err)
				}
				if err := other.Write(ctx, 0, 64, data); err != nil {
					t.Fatalf("other device: %v", err)
				}
				st := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Writes >= 2 })
				if st.Errors < 9 || st.NotSupported < 2 {
					t.Fatalf("error counters %+v", st)
				}
			})
		}
	}
}

// TestSector4096: a backing with 4096-byte logical blocks publishes
// sector-size 4096 and refuses transfers that are not whole blocks.
func TestSector4096(t *testing.T) {
	e := newEnv(t, func(d *blkback.Driver) {
		d.Open = func(p string, o blkback.OpenOptions) (blkback.Backing, error) {
			o.LogicalBlock = 4096
			return blkback.OpenBacking(p, o)
		}
	})
	path := tempDisk(t, 1<<20)
	f, _ := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: blkback.ProtoX86_64})
	ctx := ctxT(t)
	if f.SectorSize != 4096 || f.Sectors != 2048 {
		t.Fatalf("sector-size %d sectors %d", f.SectorSize, f.Sectors)
	}
	data := pattern(8192, 3)
	if err := f.Write(ctx, 0, 8, data); err != nil {
		t.Fatal(err)
	}
	if err := f.Write(ctx, 0, 4, data); !errors.Is(err, blkfront.ErrStatus(blkback.StatusError)) {
		t.Errorf("misaligned sector: %v", err)
	}
	if err := f.Write(ctx, 0, 8, data[:512]); !errors.Is(err, blkfront.ErrStatus(blkback.StatusError)) {
		t.Errorf("partial block: %v", err)
	}
}

// TestResize: growing the file updates sectors and rewrites state.
func TestResize(t *testing.T) {
	e := newEnv(t, nil)
	path := tempDisk(t, 1<<20)
	f, d := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: blkback.ProtoX86_64})
	ctx := ctxT(t)
	w, err := e.gstore.Watch(ctx, d.BackPath()+"/state", "resize")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	<-w.Events() // initial event
	if err := os.Truncate(path, 2<<20); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Events():
	case <-ctx.Done():
		t.Fatal("no state rewrite after resize")
	}
	waitFor(t, "sectors updated", func() bool {
		f.Reread(ctx)
		return f.Sectors == 4096
	})
	if s := f.BackendState(ctx); s != int(xenbus.Connected) {
		t.Fatalf("state %d after resize", s)
	}
	if err := f.Write(ctx, 0, 4000, make([]byte, 4096)); err != nil {
		t.Fatalf("write in the grown part: %v", err)
	}
}

// TestTeardownNoLeaks: after I/O, closing the frontend and removing the disk
// leave no mapped grant, bound port, goroutine or file descriptor.
func TestTeardownNoLeaks(t *testing.T) {
	for _, engine := range []string{blkback.EnginePool, blkback.EngineURing, "uring-rings"} {
		t.Run(engine, func(t *testing.T) { testTeardownNoLeaks(t, engine) })
	}
}

func testTeardownNoLeaks(t *testing.T, engine string) {
	fdsBefore := countFDs(t)
	gBefore := runtime.NumGoroutine()
	e := newEnv(t, func(d *blkback.Driver) {
		d.Engine = engine
		if engine == "uring-rings" {
			d.Engine, d.RingThreads = blkback.EngineURing, true
		}
	})
	ctx := ctxT(t)
	var disks []blkfront.Disk
	var fronts []*blkfront.Front
	for i, cfg := range []blkfront.Config{
		{Protocol: blkback.ProtoX86_64, Persistent: true, Queues: 2, RingPageOrder: 1},
		{Persistent: false},
	} {
		f, d := e.attach(t, uint32(51712+16*i), tempDisk(t, 1<<20), "w", cfg)
		for q := 0; q < f.Queues(); q++ {
			if err := f.Write(ctx, q, 0, pattern(64*1024, 1)); err != nil {
				t.Fatal(err)
			}
		}
		disks, fronts = append(disks, d), append(fronts, f)
	}
	if e.host.Grants.Mapped(ddID) == 0 || e.host.Events.BoundPorts(ddID) == 0 || countFDs(t) < fdsBefore+4 {
		t.Fatalf("nothing mapped, bound or open while connected (%d fds)", countFDs(t))
	}
	for i, f := range fronts {
		if err := f.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := blkfront.RemoveDisk(ctx, e.d0, disks[i]); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "grants unmapped", func() bool { return e.host.Grants.Mapped(ddID) == 0 })
	waitFor(t, "ports unbound", func() bool { return e.host.Events.BoundPorts(ddID) == 0 })
	for _, d := range disks {
		waitFor(t, "backend state Closed", func() bool {
			v, err := e.d0.Read(ctx, d.BackPath()+"/state")
			return err == nil && v == strconv.Itoa(int(xenbus.Closed)) || errors.Is(err, xenstore.ErrNotExist)
		})
	}
	if ents, err := os.ReadDir(e.drv.JournalDir); err != nil || len(ents) != 0 {
		t.Fatalf("journals left after a clean teardown: %v %v", ents, err)
	}
	e.closeAll()
	waitFor(t, "backing files closed", func() bool { return countFDs(t) == fdsBefore })
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > gBefore && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > gBefore {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines, %d before:\n%s", n, gBefore, buf[:runtime.Stack(buf, true)])
	}
}

func countFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	n := 0
	for _, e := range ents {
		// Backing files, io_uring instances (anon_inode:[io_uring]) and
		// eventfds (ring threads' stop, polled event channels).
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && (filepath.Base(l) == "disk.img" || strings.Contains(l, "io_uring") || strings.Contains(l, "eventfd")) {
			n++
		}
	}
	return n
}

// TestReconnect: the guest closes and comes back (reboot): the backend
// serves the new rings.
func TestReconnect(t *testing.T) {
	e := newEnv(t, nil)
	path := tempDisk(t, 1<<20)
	f, d := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: blkback.ProtoX86_64, Persistent: true})
	ctx := ctxT(t)
	data := pattern(4096, 5)
	if err := f.Write(ctx, 0, 0, data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "grants unmapped", func() bool { return e.host.Grants.Mapped(ddID) == 0 })
	waitFor(t, "backend Closed", func() bool { return f.BackendState(ctx) == int(xenbus.Closed) })
	// The guest reboots: its blkfront starts over from Initialising.
	if err := e.gstore.Write(ctx, d.FrontPath()+"/state", "1"); err != nil {
		t.Fatal(err)
	}
	f2, err := blkfront.Attach(ctx, e.gstore, e.guest.Sharer(), e.guest.Evtchn(), d.FrontPath(), blkfront.Config{})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := f2.Read(ctx, 0, 0, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after reconnect: %v", err)
	}
}

// TestBackendRestart: the backend process goes away and a new one takes
// over the Connected device; the guest notices nothing, and a request it
// pushed while no backend ran is served by the new one.
func TestBackendRestart(t *testing.T) {
	for _, abi := range abis[1:] {
		t.Run(abi.name, func(t *testing.T) {
			e := newEnv(t, nil)
			path := tempDisk(t, 1<<20)
			f, _ := e.attach(t, 51712, path, "w", blkfront.Config{Protocol: abi.proto, Persistent: true})
			ctx := ctxT(t)
			for i := 0; i < 40; i++ { // wrap past one ring's worth of indices
				if err := f.Write(ctx, 0, uint64(i*8), pattern(4096, uint64(i))); err != nil {
					t.Fatal(err)
				}
			}
			e.stop()
			waitFor(t, "old backend let go", func() bool {
				return e.host.Grants.Mapped(ddID) == 0 && e.host.Events.BoundPorts(ddID) == 0
			})
			data := pattern(8192, 99)
			res := make(chan error, 1)
			go func() { res <- f.Write(ctx, 0, 512, data) }()
			time.Sleep(20 * time.Millisecond) // the request sits on the ring, unanswered
			e.startManager()
			if err := <-res; err != nil {
				t.Fatalf("request pushed during the restart: %v", err)
			}
			got := make([]byte, len(data))
			if err := f.Read(ctx, 0, 512, got); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read after restart: %v", err)
			}
			if !bytes.Equal(readFile(t, path)[39*8*512:39*8*512+4096], pattern(4096, 39)) {
				t.Fatal("data from before the restart lost")
			}
		})
	}
}

// TestGuestDestroyed: the guest dies with requests mapped and persistent
// grants held; once the toolstack removes the backend directory nothing of
// it stays mapped or bound, and another guest's disk is untouched.
func TestGuestDestroyed(t *testing.T) {
	e := newEnv(t, nil)
	other := e.host.NewDomain(3)
	ostore := other.Xenstore()
	defer ostore.Close()
	ctx := ctxT(t)
	f, d := e.attach(t, 51712, tempDisk(t, 1<<20), "w", blkfront.Config{Protocol: blkback.ProtoX86_64, Persistent: true, Queues: 2})
	od := blkfront.Disk{BackDom: ddID, FrontDom: 3, DevID: 51712, Params: tempDisk(t, 1<<20), Mode: "w"}
	if err := blkfront.AddDisk(ctx, e.d0, od); err != nil {
		t.Fatal(err)
	}
	of, err := blkfront.Attach(ctx, ostore, other.Sharer(), other.Evtchn(), od.FrontPath(), blkfront.Config{Protocol: blkback.ProtoX86_64})
	if err != nil {
		t.Fatal(err)
	}
	for q := 0; q < 2; q++ {
		if err := f.Write(ctx, q, 0, pattern(32*1024, 1)); err != nil {
			t.Fatal(err)
		}
	}
	e.host.Destroy(guestID)
	if err := e.d0.Rm(ctx, d.BackPath()); err != nil {
		t.Fatal(err)
	}
	// What remains mapped and bound is the other guest's one ring.
	waitFor(t, "dead guest's grants unmapped and ports unbound", func() bool {
		m, p := e.host.Grants.Mapped(ddID), e.host.Events.BoundPorts(ddID)
		if m == 1 && p == 1 {
			return true
		}
		t.Logf("mapped %d, bound %d", m, p)
		time.Sleep(100 * time.Millisecond)
		return false
	})
	data := pattern(4096, 3)
	got := make([]byte, 4096)
	if err := of.Write(ctx, 0, 8, data); err != nil {
		t.Fatal(err)
	}
	if err := of.Read(ctx, 0, 8, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("other guest after the first died: %v", err)
	}
}

// TestLoopbackSelfTest runs blkfront.SelfTest as the lab does on real Xen:
// the driver domain serves a disk to itself.
func TestLoopbackSelfTest(t *testing.T) {
	e := newEnv(t, nil)
	store := e.dd.Xenstore()
	defer store.Close()
	sharer, evh := e.dd.Sharer(), e.dd.Evtchn()
	defer evh.Close()
	ctx := ctxT(t)
	for _, params := range []string{tempDisk(t, 4<<20), "null:1048576"} {
		if err := blkfront.SelfTest(ctx, store, ddID, sharer, evh, params, quietLog()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "loopback grants unmapped", func() bool { return e.host.Grants.Mapped(ddID) == 0 })
	waitFor(t, "loopback ports unbound", func() bool { return e.host.Events.BoundPorts(ddID) == 0 })
	if _, err := store.Read(ctx, blkfront.Disk{BackDom: ddID, FrontDom: ddID, DevID: blkfront.SelfTestDevID}.BackPath()); !errors.Is(err, xenstore.ErrNotExist) {
		t.Fatalf("self-test backend directory left behind: %v", err)
	}
}
