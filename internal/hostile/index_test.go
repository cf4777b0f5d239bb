package hostile

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"drvdom/blkback"
)

// indexCase corrupts the request producer of ring 0 of a 2-ring disk.
type indexCase struct {
	name  string
	start uint32 // initial ring indices
	// before puts honest traffic on ring 0 first (requests answered).
	before int
	// prod returns the req_prod to publish, from the ring's state.
	prod func(q *rawQ) uint32
}

var indexCases = []indexCase{
	{name: "one past the ring", prod: func(q *rawQ) uint32 { return q.rspCons + q.size + 1 }},
	{name: "far ahead (+1000)", prod: func(q *rawQ) uint32 { return q.rspCons + 1000 }},
	{name: "half the index space ahead", prod: func(q *rawQ) uint32 { return q.rspCons + 1<<31 }},
	{name: "backwards by 3 after 5 requests", before: 5, prod: func(q *rawQ) uint32 { return q.prodPvt - 3 }},
	{name: "backwards by 1 after 3 requests", before: 3, prod: func(q *rawQ) uint32 { return q.rspCons - 1 }},
	{name: "backwards across the wrap", start: 2, before: 1, prod: func(q *rawQ) uint32 { return q.prodPvt - 10 }},
	{name: "one past the ring across the wrap", start: 0xfffffff8, prod: func(q *rawQ) uint32 { return q.rspCons + q.size + 1 }},
	{name: "2^32-1 ahead", prod: func(q *rawQ) uint32 { return q.rspCons - 1 }},
}

// TestBlkRingIndex: a frontend that corrupts its ring's request producer
// gets that ring halted, with the reason under error/ and in the log, once;
// the disk's other ring, the hostile guest's other disk and the honest
// guest keep being served. A ring whose indices legitimately wrap around
// 2^32, and a frontend scribbling on the indices only the backend writes,
// are served as usual.
func TestBlkRingIndex(t *testing.T) {
	r := newRig(t)
	for _, tg := range []target{targets[0], targets[2]} {
		t.Run(tg.name, func(t *testing.T) {
			// A bystander disk of the hostile guest on the same backend.
			by, _, _ := r.diskFor(t, tg, tg.cfg)
			for _, c := range indexCases {
				t.Run(c.name, func(t *testing.T) {
					cfg := tg.cfg
					cfg.Queues, cfg.Start = 2, c.start
					rb, disk, _ := r.diskFor(t, tg, cfg)
					ringHalted(t, r, rb, by, c)
					rb.close(t)
					r.retire(t, disk)
				})
			}
			t.Run("legitimate wrap-around", func(t *testing.T) {
				cfg := tg.cfg
				cfg.Start = 0xfffffff0
				rb, _, _ := r.diskFor(t, tg, cfg)
				q := rb.qs[0]
				for batch := 0; batch < 3; batch++ {
					ids := make([]uint64, 0, 16)
					for i := 0; i < 16; i++ {
						p, g := rb.page(i % 8)
						copy(p, pattern(4096, uint64(i%8)))
						req := rw(blkback.OpWrite, uint64(batch*16+i)*8, g)
						rb.put(0, &req, false)
						ids = append(ids, req.ID)
					}
					rb.push(t, 0)
					for _, id := range ids {
						rb.waitOK(t, 0, id)
					}
				}
				if q.prodPvt >= 0xfffffff0 || q.rspCons != q.prodPvt {
					t.Fatalf("indices did not wrap: req_prod %#x rsp_cons %#x", q.prodPvt, q.rspCons)
				}
				if got := rb.read(t, 0, 17*8, 1); !bytes.Equal(got, pattern(4096, 1)) {
					t.Fatal("data written across the wrap differs")
				}
				r.noError(t, tg.backDom, "vbd", hostileID, rb.disk.DevID)
				r.checkCase(t)
			})
			t.Run("frontend scribbles rsp_prod and the events", func(t *testing.T) {
				rb, _, _ := r.diskFor(t, tg, tg.cfg)
				q := rb.qs[0]
				q.setIdx(hdrRspProd, q.rspCons+12345)
				q.setIdx(hdrRspEvent, 0)
				q.setIdx(hdrReqEvent, 0xdeadbeef)
				data := pattern(4096, 3)
				rb.write(t, 0, 8, data)
				if !bytes.Equal(rb.read(t, 0, 8, 1), data) {
					t.Fatal("read back differs")
				}
				r.noError(t, tg.backDom, "vbd", hostileID, rb.disk.DevID)
				r.checkCase(t)
			})
		})
	}
}

func ringHalted(t *testing.T, r *rig, rb, bystander *rawBlk, c indexCase) {
	q := rb.qs[0]
	for i := 0; i < c.before; i++ {
		rb.write(t, 0, uint64(i)*8, pattern(4096, uint64(i)))
	}
	// Put a valid request in the next slot so a backend that ignored the
	// corruption would have something to act on.
	req := rw(blkback.OpWrite, 0, page(rb, 0))
	rb.put(0, &req, false)
	q.setIdx(hdrReqProd, c.prod(q))
	rb.kick(t, 0)
	msg := r.awaitError(t, rb.disk.BackDom, "vbd", hostileID, rb.disk.DevID)
	if !strings.Contains(msg, "overflow") {
		t.Errorf("error node %q does not say why", msg)
	}
	name := rb.name()
	logged := func() int {
		return r.logs.count(slog.LevelWarn, func(l logRec) bool { return l.attrs["dev"] == name })
	}
	first := logged()
	if first != 1 {
		t.Errorf("the halt was logged %d times at warning or above for %s, want once:\n%s",
			first, name, r.logs.dump(slog.LevelWarn))
	}
	// More kicks and requests on the halted ring change nothing.
	for i := 0; i < 20; i++ {
		rb.kick(t, 0)
	}
	// The other ring of the same disk keeps working.
	data := pattern(8192, 42)
	rb.write(t, 1, 64, data)
	if !bytes.Equal(rb.read(t, 1, 64, 2), data) {
		t.Fatal("ring 1 read back differs")
	}
	rb.collect(0)
	if rsp, ok := rb.pending[req.ID]; ok {
		t.Fatalf("the halted ring answered %+v", rsp)
	}
	if n := logged(); n != first {
		t.Errorf("%d more log records for the halted ring after more kicks", n-first)
	}
	// Another disk of the same guest on the same backend keeps working.
	bystander.write(t, 0, 8, data[:4096])
	if !bytes.Equal(bystander.read(t, 0, 8, 1), data[:4096]) {
		t.Fatal("bystander disk read back differs")
	}
	r.checkCase(t)
}
