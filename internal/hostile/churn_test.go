package hostile

import (
	"bytes"
	"testing"

	"drvdom/blkback"
	"drvdom/internal/xensim/netfront"
)

// TestBlkGrantChurn: a frontend with persistent grants that names far more
// distinct grants than the backend keeps (1056 per ring) has every request
// served, while the pages the driver domain maps stay bounded.
func TestBlkGrantChurn(t *testing.T) {
	r := newRig(t)
	base := r.resources()
	tg := targets[1] // persistent
	rb, disk, _ := r.diskFor(t, tg, tg.cfg)
	const pages = 1400
	sh, err := r.hostile.Sharer().Share(dd1, pages, true)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	mem, refs := sh.Bytes(), sh.Refs()
	peak := 0
	for i := 0; i+11 <= pages; i += 11 {
		req := blkback.Request{Operation: blkback.OpWrite, Sector: uint64(i%176) * 8, NrSegments: 11}
		for j := 0; j < 11; j++ {
			copy(mem[(i+j)*4096:(i+j+1)*4096], pattern(4096, uint64(i+j)))
			req.Segs[j] = blkback.Segment{Gref: uint32(refs[i+j]), LastSect: 7}
		}
		if rsp := rb.do(t, 0, req); rsp.Status != 0 {
			t.Fatalf("request %d: status %d", i/11, rsp.Status)
		}
		peak = max(peak, r.host.Grants.Mapped(dd1))
	}
	want := bytes.Join([][]byte{pattern(4096, 1386), pattern(4096, 1387)}, nil)
	if got := disk.at(t, uint64(1386%176)*8, 8192); !bytes.Equal(got, want) {
		t.Fatal("the last request's data did not land")
	}
	// The honest disk maps at most 17 pages at a time; the hostile ring
	// 2; its persistent grants at most blkback.DefaultMaxPersistentGrants.
	limit := base.mapped[0] + 17 + 2 + blkback.DefaultMaxPersistentGrants
	if peak > limit {
		t.Fatalf("driver domain mapped %d pages at the peak, bound %d", peak, limit)
	}
	t.Logf("peak of pages mapped by the driver domain: %d (bound %d)", peak, limit)
	r.checkCase(t)
}

// TestBlkRingPageAsData: a frontend that names its own ring page as the
// buffer of a read overwrites its indices with disk data. That harms only
// itself: its ring is served or halted, the backend does not crash, and the
// honest guest and another disk of the same guest are unaffected.
func TestBlkRingPageAsData(t *testing.T) {
	r := newRig(t)
	for _, tg := range []target{targets[0], targets[1], targets[2]} {
		t.Run(tg.name, func(t *testing.T) {
			by, _, _ := r.diskFor(t, tg, tg.cfg)
			rb, _, _ := r.diskFor(t, tg, tg.cfg)
			ringRef := uint32(rb.qs[0].share.Refs()[0])
			req := rw(blkback.OpRead, 0, ringRef)
			rb.put(0, &req, false)
			rb.push(t, 0)
			// Whatever happens to that ring, the bystander is served.
			data := pattern(4096, 11)
			by.write(t, 0, 0, data)
			if !bytes.Equal(by.read(t, 0, 0, 1), data) {
				t.Fatal("bystander read back differs")
			}
			for i := 0; i < 100; i++ {
				rb.kick(t, 0)
			}
			by.write(t, 0, 8, data)
			r.checkCase(t)
		})
	}
}

// TestEventStorm: a frontend that notifies its disk's and its vif's event
// channels tens of thousands of times gets nothing but wasted wakeups; the
// honest guest keeps its verified I/O going and the disk still serves.
func TestEventStorm(t *testing.T) {
	r := newRig(t)
	rb, _, _ := r.diskFor(t, targets[0], targets[0].cfg)
	v := r.hostileVif(t, netfront.Config{})
	for i := 0; i < 20000; i++ {
		rb.kick(t, 0)
		if err := v.f.Kick(0); err != nil {
			t.Fatal(err)
		}
	}
	data := pattern(4096, 12)
	rb.write(t, 0, 0, data)
	if !bytes.Equal(rb.read(t, 0, 0, 1), data) {
		t.Fatal("read back differs")
	}
	v.marker(t, 1)
	r.checkCase(t)
}

// TestBlkGrantCopyPoolFull: in grant-copy mode a ring whose batch needs
// more bounce pages than are free at once (two 256-segment indirect writes
// against a 256-page pool) is still served: the second request waits for
// the first one's pages, so the first must have been started. Run on the
// default engine of a real O_DIRECT file (io_uring where available) and on
// a window (worker pool).
func TestBlkGrantCopyPoolFull(t *testing.T) {
	r := newRig(t)
	for _, tg := range []target{
		{name: "file-default-engine", backDom: dd3, cfg: blkCfg{Proto: blkback.ProtoX86_64}, file: true},
		{name: "window-pool", backDom: dd2, cfg: blkCfg{Proto: blkback.ProtoX86_64}},
		// Two rings share the device's pool: each waits for the other's pages.
		{name: "file-default-engine-2-rings", backDom: dd3, cfg: blkCfg{Proto: blkback.ProtoX86_64, Queues: 2}, file: true},
		{name: "window-pool-2-rings", backDom: dd2, cfg: blkCfg{Proto: blkback.ProtoX86_64, Queues: 2}},
	} {
		t.Run(tg.name, func(t *testing.T) {
			rb, disk, _ := r.diskFor(t, tg, tg.cfg)
			for i := 0; i < 8; i++ {
				p, _ := rb.page(i)
				copy(p, pattern(4096, uint64(i)))
			}
			type qid struct {
				q  int
				id uint64
			}
			var ids []qid
			for q := range rb.qs {
				for k := 0; k < 2; k++ {
					req := indirect(rb, blkback.OpWrite, 0, segs8(rb, 256))
					rb.put(q, &req, false)
					ids = append(ids, qid{q, req.ID})
				}
			}
			for q := range rb.qs {
				rb.push(t, q)
			}
			for _, x := range ids {
				rb.waitOK(t, x.q, x.id)
			}
			if got := disk.at(t, 8*9, 4096); !bytes.Equal(got, pattern(4096, 1)) {
				t.Fatal("data did not land")
			}
			r.checkCase(t)
		})
	}
}

// TestBlkBarrierAfterWrite: a WRITE_BARRIER pushed in the same batch as
// the writes before it waits for them, so they must have been started: on
// every kind of disk both are answered.
func TestBlkBarrierAfterWrite(t *testing.T) {
	r := newRig(t)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			rb, disk, _ := r.diskFor(t, tg, tg.cfg)
			var ids []uint64
			for i := 0; i < 4; i++ {
				p, g := rb.page(i)
				copy(p, pattern(4096, uint64(i)+60))
				req := rw(blkback.OpWrite, uint64(i)*8, g)
				if i == 3 {
					req.Operation = blkback.OpWriteBarrier
				}
				rb.put(0, &req, false)
				ids = append(ids, req.ID)
			}
			rb.push(t, 0)
			for _, id := range ids {
				rb.waitOK(t, 0, id)
			}
			if !bytes.Equal(disk.at(t, 24, 4096), pattern(4096, 63)) {
				t.Fatal("the barrier's data did not land")
			}
			r.checkCase(t)
		})
	}
}
