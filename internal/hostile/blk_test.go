package hostile

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"

	"drvdom/blkback"
)

// devSectors is the size of every hostile disk: 1 MiB.
const devSectors = 2048

// target is one way a hostile disk is served.
type target struct {
	name    string
	backDom uint16
	cfg     blkCfg
	file    bool // a real file opened by blkback (OpenTarget), not a window
}

var targets = []target{
	// Pages mapped per request, x86_64 ABI.
	{name: "map", backDom: dd1, cfg: blkCfg{Proto: blkback.ProtoX86_64}},
	// Persistent grants, no protocol key (x86_32 layout), a 2-page ring.
	{name: "persistent", backDom: dd1, cfg: blkCfg{Persistent: true, Order: 1}},
	// The grant-copy driver domain.
	{name: "grant-copy", backDom: dd2, cfg: blkCfg{Proto: blkback.ProtoX86_64, Persistent: true}},
	// A real file through blkback's own backing and its default engine
	// (io_uring on an O_DIRECT file).
	{name: "file", backDom: dd1, cfg: blkCfg{Proto: blkback.ProtoX86_32}, file: true},
	// The same in grant-copy mode.
	{name: "grant-copy-file", backDom: dd3, cfg: blkCfg{Proto: blkback.ProtoX86_64, Persistent: true}, file: true},
}

// fileDisk is a real backing file with sibling files: nothing may change
// the file's size or the siblings.
type fileDisk struct {
	path     string
	f        *os.File
	size     int64
	siblings []string
	sums     [][32]byte
}

func (r *rig) newFileDisk(t testing.TB, name string, sectors int64) *fileDisk {
	t.Helper()
	d := &fileDisk{path: filepath.Join(r.dir, name+".img"), size: sectors * blkback.SectorSize}
	for i, p := range []string{d.path + ".before", d.path, d.path + ".after"} {
		if err := os.WriteFile(p, pattern(int(d.size), uint64(i)+uint64(len(name))*31), 0o600); err != nil {
			t.Fatal(err)
		}
		if p != d.path {
			d.siblings = append(d.siblings, p)
			d.sums = append(d.sums, fileSum(t, p))
		}
	}
	f, err := os.Open(d.path)
	if err != nil {
		t.Fatal(err)
	}
	d.f = f
	r.mu.Lock()
	r.guards = append(r.guards, d)
	r.mu.Unlock()
	return d
}

func fileSum(t testing.TB, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func (d *fileDisk) sum(t testing.TB) [32]byte {
	t.Helper()
	return fileSum(t, d.path)
}

func (d *fileDisk) at(t testing.TB, sector uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := d.f.ReadAt(b, int64(sector)*blkback.SectorSize); err != nil {
		t.Fatal(err)
	}
	return b
}

func (d *fileDisk) check(t testing.TB) {
	t.Helper()
	st, err := d.f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != d.size {
		t.Fatalf("backing file %s grew or shrank: %d bytes, want %d", d.path, st.Size(), d.size)
	}
	for i, p := range d.siblings {
		if fileSum(t, p) != d.sums[i] {
			t.Fatalf("sibling file %s changed", p)
		}
	}
}

func (d *fileDisk) close() { d.f.Close() }

// diskFor creates the disk of a target and attaches it for the hostile
// guest with cfg (the target's, possibly changed).
func (r *rig) diskFor(t testing.TB, tg target, cfg blkCfg) (*rawBlk, guarded, *window) {
	t.Helper()
	name := fmt.Sprintf("%s-%d", tg.name, r.nextDev.Load()+1)
	var g guarded
	var w *window
	params := "win:" + name
	if tg.file {
		fd := r.newFileDisk(t, name, devSectors)
		g, params = fd, fd.path
	} else {
		w = r.newWindow(t, name, devSectors)
		g = w
	}
	rb := r.attachBlk(t, tg.backDom, params, cfg)
	rb.connected(t)
	return rb, g, w
}

// reqCase is one hostile request.
type reqCase struct {
	name string
	req  func(rb *rawBlk) blkback.Request
	// ok are the statuses allowed (nil: BLKIF_RSP_ERROR only).
	ok []int16
	// landed, for a request that may succeed: where its data must be then.
	landed func(rb *rawBlk) (sector uint64, data []byte)
}

const (
	end  = devSectors
	fill = 0xA5 // data pages before each case: a refused read leaves them so
)

var anyError = []int16{blkback.StatusError, blkback.StatusEOPNOTSUPP}

// segs8 returns n whole-page segments over the data pages 0..7.
func segs8(rb *rawBlk, n int) []blkback.Segment {
	s := make([]blkback.Segment, n)
	for i := range s {
		_, g := rb.page(i % 8)
		s[i] = blkback.Segment{Gref: g, LastSect: 7}
	}
	return s
}

// indirect builds an INDIRECT request whose segments are in data page 15.
func indirect(rb *rawBlk, op uint8, sector uint64, segs []blkback.Segment) blkback.Request {
	p, g := rb.page(15)
	clear(p)
	for i, s := range segs {
		if i < blkback.SegmentsPerIndirectPage {
			blkback.EncodeSegment(p[i*blkback.SegmentSize:], s)
		}
	}
	return blkback.Request{Operation: blkback.OpIndirect, IndirectOp: op, Sector: sector,
		NrSegments: uint16(len(segs)), IndirectGrefs: [8]uint32{g}}
}

func page(rb *rawBlk, i int) uint32 { _, g := rb.page(i); return g }

// outOfDevice are requests reaching at or past the end of the device, or
// wrapping around: every one must be refused and touch nothing.
var outOfDevice = []reqCase{
	{name: "read at the end", req: func(rb *rawBlk) blkback.Request {
		r := rw(blkback.OpRead, end, page(rb, 0))
		r.Segs[0].LastSect = 0
		return r
	}},
	{name: "read straddling the end", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpRead, end-1, page(rb, 0)) }},
	{name: "write straddling the end", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, end-4, page(rb, 0)) }},
	{name: "write at the end", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, end, page(rb, 0)) }},
	{name: "write at sector 2^64-1", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, ^uint64(0), page(rb, 0)) }},
	{name: "write whose end wraps to 0", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, ^uint64(0)-3, page(rb, 0)) }},
	{name: "write whose byte offset wraps to 0", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, 1<<55, page(rb, 0)) }},
	{name: "write whose byte offset wraps to 4096", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, 1<<55+8, page(rb, 0)) }},
	{name: "write whose byte offset is negative", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, 1<<54, page(rb, 0)) }},
	{name: "write whose byte offset wraps to -512", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, 1<<55-1, page(rb, 0)) }},
	{name: "11-segment read 1 sector past the end", req: func(rb *rawBlk) blkback.Request {
		r := blkback.Request{Operation: blkback.OpRead, Sector: end - 87, NrSegments: 11}
		copy(r.Segs[:], segs8(rb, 11))
		return r
	}},
	{name: "barrier write past the end", req: func(rb *rawBlk) blkback.Request {
		r := rw(blkback.OpWriteBarrier, end-1, page(rb, 0))
		return r
	}},
	{name: "flush with data past the end", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpFlushDiskcache, end, page(rb, 0)) }},
	{name: "discard past the end", ok: anyError, req: func(rb *rawBlk) blkback.Request {
		return blkback.Request{Operation: blkback.OpDiscard, Sector: end - 8, NrSectors: 16}
	}},
	{name: "discard of 2^64-1 sectors", ok: anyError, req: func(rb *rawBlk) blkback.Request {
		return blkback.Request{Operation: blkback.OpDiscard, NrSectors: ^uint64(0)}
	}},
	{name: "discard whose end wraps to 0", ok: anyError, req: func(rb *rawBlk) blkback.Request {
		return blkback.Request{Operation: blkback.OpDiscard, Sector: 8, NrSectors: ^uint64(0) - 7}
	}},
	{name: "discard whose byte length wraps to 0", ok: anyError, req: func(rb *rawBlk) blkback.Request {
		return blkback.Request{Operation: blkback.OpDiscard, NrSectors: 1 << 55}
	}},
	{name: "secure discard at sector 2^64-1", ok: anyError, req: func(rb *rawBlk) blkback.Request {
		return blkback.Request{Operation: blkback.OpDiscard, Sector: ^uint64(0), NrSectors: 1, Flag: blkback.DiscardSecure}
	}},
	{name: "indirect write of 256 pages, 1 sector past the end", req: func(rb *rawBlk) blkback.Request {
		return indirect(rb, blkback.OpWrite, 1, segs8(rb, 256))
	}},
	{name: "indirect read of 16 pages from 100 sectors before the end", req: func(rb *rawBlk) blkback.Request {
		return indirect(rb, blkback.OpRead, end-100, segs8(rb, 16))
	}},
	{name: "indirect write at a wrapping sector", req: func(rb *rawBlk) blkback.Request {
		return indirect(rb, blkback.OpWrite, ^uint64(0)-15, segs8(rb, 4))
	}},
	{name: "indirect with 257 segments", req: func(rb *rawBlk) blkback.Request {
		return indirect(rb, blkback.OpWrite, 0, segs8(rb, 257))
	}},
	{name: "indirect with 65535 segments", req: func(rb *rawBlk) blkback.Request {
		r := indirect(rb, blkback.OpRead, 0, segs8(rb, 512))
		r.NrSegments = 65535
		for i := range r.IndirectGrefs {
			r.IndirectGrefs[i] = page(rb, 15)
		}
		return r
	}},
	{name: "indirect with 0 segments", req: func(rb *rawBlk) blkback.Request { return indirect(rb, blkback.OpRead, 0, nil) }},
	{name: "indirect segment with last_sect 8", req: func(rb *rawBlk) blkback.Request {
		s := segs8(rb, 200)
		s[199].LastSect = 8
		return indirect(rb, blkback.OpWrite, 0, s)
	}},
	{name: "indirect segment with first_sect > last_sect", req: func(rb *rawBlk) blkback.Request {
		s := segs8(rb, 20)
		s[7].FirstSect, s[7].LastSect = 5, 4
		return indirect(rb, blkback.OpWrite, 0, s)
	}},
	{name: "indirect segment with last_sect 255", req: func(rb *rawBlk) blkback.Request {
		s := segs8(rb, 3)
		s[2].FirstSect, s[2].LastSect = 250, 255
		return indirect(rb, blkback.OpRead, 0, s)
	}},
	{name: "indirect flush", req: func(rb *rawBlk) blkback.Request { return indirect(rb, blkback.OpFlushDiskcache, 0, segs8(rb, 2)) }},
	{name: "indirect discard", req: func(rb *rawBlk) blkback.Request { return indirect(rb, blkback.OpDiscard, 0, segs8(rb, 2)) }},
	{name: "indirect indirect", req: func(rb *rawBlk) blkback.Request { return indirect(rb, blkback.OpIndirect, 0, segs8(rb, 2)) }},
	{name: "indirect op 255", req: func(rb *rawBlk) blkback.Request { return indirect(rb, 255, 0, segs8(rb, 2)) }},
	{name: "write with 0 segments", req: func(rb *rawBlk) blkback.Request { return blkback.Request{Operation: blkback.OpWrite} }},
	{name: "write with 12 segments", req: func(rb *rawBlk) blkback.Request {
		r := blkback.Request{Operation: blkback.OpWrite, NrSegments: 12}
		copy(r.Segs[:], segs8(rb, 11))
		return r
	}},
	{name: "read with 255 segments", req: func(rb *rawBlk) blkback.Request {
		r := blkback.Request{Operation: blkback.OpRead, NrSegments: 255}
		copy(r.Segs[:], segs8(rb, 11))
		return r
	}},
	{name: "barrier with 200 segments", req: func(rb *rawBlk) blkback.Request {
		r := blkback.Request{Operation: blkback.OpWriteBarrier, NrSegments: 200}
		copy(r.Segs[:], segs8(rb, 11))
		return r
	}},
	{name: "segment with last_sect 8", req: func(rb *rawBlk) blkback.Request {
		r := rw(blkback.OpWrite, 0, page(rb, 0))
		r.Segs[0].LastSect = 8
		return r
	}},
	{name: "segment with first_sect 7 > last_sect 0", req: func(rb *rawBlk) blkback.Request {
		r := rw(blkback.OpRead, 0, page(rb, 0))
		r.Segs[0].FirstSect, r.Segs[0].LastSect = 7, 0
		return r
	}},
	{name: "reserved operation 4", ok: []int16{blkback.StatusEOPNOTSUPP}, req: func(rb *rawBlk) blkback.Request {
		r := rw(blkback.OpWrite, 0, page(rb, 0))
		r.Operation = blkback.OpReserved1
		return r
	}},
	{name: "operation 7", ok: []int16{blkback.StatusEOPNOTSUPP}, req: func(rb *rawBlk) blkback.Request {
		return blkback.Request{Operation: 7, Sector: 0}
	}},
	{name: "operation 255", ok: []int16{blkback.StatusEOPNOTSUPP}, req: func(rb *rawBlk) blkback.Request {
		return blkback.Request{Operation: 255, Sector: end * 4}
	}},
}

// badGrants are requests naming grants the backend must not use.
var badGrants = []reqCase{
	{name: "read into a grant never made", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpRead, 0, 0xdeadbeef) }},
	{name: "write from grant 0", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, 0, 0) }},
	{name: "write from a reserved grant", req: func(rb *rawBlk) blkback.Request { return rw(blkback.OpWrite, 8, 7) }},
	{name: "read into a page granted to another domain", req: func(rb *rawBlk) blkback.Request {
		return rw(blkback.OpRead, 0, rb.foreign(otherID))
	}},
	{name: "write from a page granted to another domain", req: func(rb *rawBlk) blkback.Request {
		return rw(blkback.OpWrite, 16, rb.foreign(otherID))
	}},
	{name: "write from a page granted to the other driver domain", req: func(rb *rawBlk) blkback.Request {
		return rw(blkback.OpWrite, 16, rb.foreign(otherBackend(rb.disk.BackDom)))
	}},
	{name: "read into a read-only grant", req: func(rb *rawBlk) blkback.Request {
		_, g := rb.roPage(0)
		return rw(blkback.OpRead, 0, g)
	}},
	{name: "11-segment write, the last grant never made", req: func(rb *rawBlk) blkback.Request {
		r := blkback.Request{Operation: blkback.OpWrite, Sector: 64, NrSegments: 11}
		copy(r.Segs[:], segs8(rb, 11))
		r.Segs[10].Gref = 0xfffffff0
		return r
	}},
	{name: "11-segment read, segment 5 read-only", req: func(rb *rawBlk) blkback.Request {
		r := blkback.Request{Operation: blkback.OpRead, Sector: 64, NrSegments: 11}
		copy(r.Segs[:], segs8(rb, 11))
		_, r.Segs[5].Gref = rb.roPage(1)
		return r
	}},
	{name: "indirect page never granted", req: func(rb *rawBlk) blkback.Request {
		r := indirect(rb, blkback.OpRead, 0, segs8(rb, 20))
		r.IndirectGrefs[0] = 0xabcdef
		return r
	}},
	{name: "indirect page granted to another domain", req: func(rb *rawBlk) blkback.Request {
		r := indirect(rb, blkback.OpWrite, 0, segs8(rb, 20))
		r.IndirectGrefs[0] = rb.foreign(otherID)
		return r
	}},
	{name: "indirect read, segment 100 read-only", req: func(rb *rawBlk) blkback.Request {
		s := segs8(rb, 128)
		_, s[100].Gref = rb.roPage(2)
		return indirect(rb, blkback.OpRead, 0, s)
	}},
	{name: "indirect write, segment 255 never granted", req: func(rb *rawBlk) blkback.Request {
		s := segs8(rb, 256)
		s[255].Gref = 0x7777777
		return indirect(rb, blkback.OpWrite, 0, s)
	}},
	{name: "indirect write, segment 3 granted to another domain", req: func(rb *rawBlk) blkback.Request {
		s := segs8(rb, 16)
		s[3].Gref = rb.foreign(otherID)
		return indirect(rb, blkback.OpWrite, 256, s)
	}},
	// A read-only grant is a fine source for a write (Linux blkfront grants
	// them so without persistent grants); with persistent grants the
	// backend maps everything writable and may refuse it.
	{name: "write from a read-only grant", ok: []int16{0, blkback.StatusError}, req: func(rb *rawBlk) blkback.Request {
		p, g := rb.roPage(3)
		_ = p
		return rw(blkback.OpWrite, 512, g)
	}, landed: func(rb *rawBlk) (uint64, []byte) {
		p, _ := rb.roPage(3)
		return 512, p
	}},
}

func otherBackend(d uint16) uint16 {
	if d == dd1 {
		return dd2
	}
	return dd1
}

// foreign returns a page the hostile guest granted (writable) to domain to.
func (rb *rawBlk) foreign(to uint16) uint32 {
	sh, err := rb.r.hostile.Sharer().Share(to, 1, true)
	if err != nil {
		panic(err)
	}
	rb.shares = append(rb.shares, sh)
	return uint32(sh.Refs()[0])
}

// TestBlkRequests puts every hostile request on each kind of hostile disk:
// each gets an error response (never a panic, never a stuck ring), the
// device and the bytes around it are unchanged, a refused read leaves the
// guest's pages alone, and the honest guest keeps its verified I/O going.
func TestBlkRequests(t *testing.T) {
	r := newRig(t)
	groups := []struct {
		name  string
		cases []reqCase
	}{{"out-of-device", outOfDevice}, {"bad-grants", badGrants}}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			rb, disk, _ := r.diskFor(t, tg, tg.cfg)
			for i := 0; i < roPages; i++ {
				p, _ := rb.roPage(i)
				copy(p, pattern(4096, uint64(i)+99))
			}
			for _, gr := range groups {
				for _, c := range gr.cases {
					t.Run(gr.name+"/"+c.name, func(t *testing.T) {
						runReqCase(t, r, rb, disk, c, gr.name == "out-of-device")
					})
				}
			}
			t.Run("flood of full rings of bad requests", func(t *testing.T) { flood(t, r, rb, disk) })
			t.Run("full rings of random bytes", func(t *testing.T) { garbage(t, r, rb) })
			// The ring still serves.
			data := pattern(8192, 5)
			rb.write(t, 0, 40, data)
			if got := rb.read(t, 0, 40, 2); !bytes.Equal(got, data) {
				t.Fatal("read back after the hostile requests differs")
			}
		})
	}
}

// runReqCase runs one case. untouched: a refused request must not have
// written into the guest's data pages either (it was refused before any
// I/O; a read refused for a bad grant may have filled the good pages).
func runReqCase(t *testing.T, r *rig, rb *rawBlk, disk guarded, c reqCase, untouched bool) {
	for i := 0; i < dataPages; i++ {
		p, _ := rb.page(i)
		for j := range p {
			p[j] = fill
		}
	}
	ro := make([][]byte, roPages)
	for i := range ro {
		p, _ := rb.roPage(i)
		ro[i] = bytes.Clone(p)
	}
	before := disk.sum(t)
	req := c.req(rb)
	rsp := rb.do(t, 0, req)
	ok := c.ok
	if ok == nil {
		ok = []int16{blkback.StatusError}
	}
	if !slices.Contains(ok, rsp.Status) {
		t.Fatalf("status %d, want one of %v", rsp.Status, ok)
	}
	if rsp.Status == blkback.StatusOkay && c.landed != nil {
		sector, want := c.landed(rb)
		if !bytes.Equal(disk.at(t, sector, len(want)), want) {
			t.Fatalf("accepted write did not land at sector %d", sector)
		}
	} else {
		if disk.sum(t) != before {
			t.Fatal("a refused request changed the device")
		}
		for i := 0; untouched && i < dataPages-1; i++ { // page 15 may hold indirect segments
			if p, _ := rb.page(i); bytes.Count(p, []byte{fill}) != len(p) {
				t.Fatalf("a refused request wrote into the guest's data page %d", i)
			}
		}
	}
	for i := range ro {
		if p, _ := rb.roPage(i); !bytes.Equal(p, ro[i]) {
			t.Fatalf("read-only page %d changed", i)
		}
	}
	r.checkCase(t)
}

// TestBlkRewrittenRequest: the frontend rewrites a request's ring slot (and
// its indirect page) after pushing it. Deterministically, from inside the
// backend's I/O (the backend has certainly copied the request by then): the
// data lands where the original said, the response carries the original id
// and operation. Racing, right after the push, one byte of the sector: the
// data lands at exactly one of the two sectors, whole, or the request is
// refused; never anywhere else and never split.
func TestBlkRewrittenRequest(t *testing.T) {
	r := newRig(t)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			rb, disk, w := r.diskFor(t, tg, tg.cfg)
			if w != nil {
				t.Run("during-io/direct", func(t *testing.T) { rewriteDuringIO(t, r, rb, w, false) })
				t.Run("during-io/indirect", func(t *testing.T) { rewriteDuringIO(t, r, rb, w, true) })
			}
			t.Run("racing/valid-sector", func(t *testing.T) { rewriteRacing(t, r, rb, disk, 0x04, 1) })
			t.Run("racing/out-of-device-sector", func(t *testing.T) { rewriteRacing(t, r, rb, disk, 0x20, 1) })
		})
	}
}

// sectorOffset is the offset of sector_number in a request slot.
func sectorOffset(abi blkback.ABI) int {
	if abi == blkback.ABI32 {
		return 12
	}
	return 16
}

func rewriteDuringIO(t *testing.T, r *rig, rb *rawBlk, w *window, ind bool) {
	const s, other = 800, 1600
	n := 1
	if ind {
		n = 11 // pages 0..10; 12 is the rewrite's, 15 the indirect page
	}
	orig := pattern(n*4096, 77)
	for i := 0; i < n; i++ {
		p, _ := rb.page(i)
		copy(p, orig[i*4096:])
	}
	evil := pattern(4096, 78)
	pe, ge := rb.page(12)
	copy(pe, evil)
	otherBefore := w.at(t, other, n*4096)
	var req blkback.Request
	if ind {
		segs := make([]blkback.Segment, n)
		for i := range segs {
			segs[i] = blkback.Segment{Gref: page(rb, i), LastSect: 7}
		}
		req = indirect(rb, blkback.OpWrite, s, segs)
	} else {
		req = rw(blkback.OpWrite, s, page(rb, 0))
	}
	slot := rb.put(0, &req, false)
	var ran atomic.Bool
	evilID := req.ID ^ 0x5555
	hook := func(write bool, io *blkback.IO) {
		if !write || io.Off != s*blkback.SectorSize || ran.Swap(true) {
			return
		}
		// Rewrite the whole slot: another id, another sector, another page.
		bad := rw(blkback.OpWrite, other, ge)
		bad.ID = evilID
		blkback.EncodeRequest(rb.abi, slot, &bad)
		if ind {
			ip, _ := rb.page(15)
			for i := 0; i < n; i++ {
				blkback.EncodeSegment(ip[i*blkback.SegmentSize:], blkback.Segment{Gref: ge, FirstSect: 1, LastSect: 3})
			}
		}
	}
	w.hook.Store(&hook)
	defer w.hook.Store(nil)
	rb.push(t, 0)
	rsp, err := rb.wait(ctxFor(t), 0, req.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !ran.Load() {
		t.Fatal("the rewrite never ran: the write did not reach the backing at the original sector")
	}
	if rsp.Status != 0 || rsp.Operation != blkback.OpWrite {
		t.Fatalf("response %+v, want the original write's success", rsp)
	}
	if _, ok := rb.pending[evilID]; ok {
		t.Fatal("a response for the rewritten id")
	}
	if !bytes.Equal(w.at(t, s, n*4096), orig) {
		t.Fatal("the data at the original sector is not the original request's")
	}
	if !bytes.Equal(w.at(t, other, n*4096), otherBefore) {
		t.Fatal("the rewritten request's sector changed")
	}
	r.checkCase(t)
}

// rewriteRacing pushes a write and at once ORs bit into byte b of its
// sector field, 32 times. The rewritten sector either is another valid
// sector (bit 0x04 of byte 1: +1024) or lies outside the device (bit 0x20
// of byte 1: +8192; a bit of byte 7 would wrap back onto the same byte
// offset and hide a double fetch).
func rewriteRacing(t *testing.T, r *rig, rb *rawBlk, disk guarded, bit byte, b int) {
	var orig, rewritten, refused int
	for i := 0; i < 32; i++ {
		s := uint64(8 * i)
		alt := s | uint64(bit)<<(8*b)
		data := pattern(4096, uint64(i)+1000)
		p, g := rb.page(0)
		copy(p, data)
		atS := disk.at(t, s, 4096)
		var atAlt []byte
		if alt < end {
			atAlt = disk.at(t, alt, 4096)
		}
		req := rw(blkback.OpWrite, s, g)
		slot := rb.put(0, &req, false)
		rb.push(t, 0)
		for j := 0; j < i%8; j++ {
			runtime.Gosched() // give the backend a varying head start
		}
		slot[sectorOffset(rb.abi)+b] |= bit
		rsp, err := rb.wait(ctxFor(t), 0, req.ID)
		if err != nil {
			t.Fatal(err)
		}
		gotS := disk.at(t, s, 4096)
		var gotAlt []byte
		if alt < end {
			gotAlt = disk.at(t, alt, 4096)
		}
		switch {
		case rsp.Status == 0 && bytes.Equal(gotS, data) && bytes.Equal(gotAlt, atAlt):
			orig++
		case rsp.Status == 0 && alt < end && bytes.Equal(gotAlt, data) && bytes.Equal(gotS, atS):
			rewritten++
		case rsp.Status == blkback.StatusError && alt >= end && bytes.Equal(gotS, atS):
			refused++
		default:
			t.Fatalf("iteration %d: status %d, original sector holds new data %v, rewritten sector holds new data %v",
				i, rsp.Status, bytes.Equal(gotS, data), alt < end && bytes.Equal(gotAlt, data))
		}
	}
	t.Logf("outcomes: original %d, rewritten %d, refused %d", orig, rewritten, refused)
	r.checkCase(t)
}

// flood fills the ring with out-of-device direct requests, 20 times over,
// each ring-full pushed at once: every one is answered once, with an
// error, the device is unchanged, and the honest guest keeps going.
func flood(t *testing.T, r *rig, rb *rawBlk, disk guarded) {
	var direct []reqCase
	for _, c := range outOfDevice {
		if c.req(rb).Operation != blkback.OpIndirect {
			direct = append(direct, c)
		}
	}
	before := disk.sum(t)
	q := rb.qs[0]
	n := 0
	for round := 0; round < 20; round++ {
		ids := make([]uint64, 0, q.size)
		for i := uint32(0); i < q.size; i++ {
			req := direct[n%len(direct)].req(rb)
			n++
			rb.put(0, &req, false)
			ids = append(ids, req.ID)
		}
		rb.push(t, 0)
		for _, id := range ids {
			rsp, err := rb.wait(ctxFor(t), 0, id)
			if err != nil {
				t.Fatal(err)
			}
			if rsp.Status == 0 {
				t.Fatalf("round %d: a bad request (id %#x) succeeded", round, id)
			}
		}
		if len(rb.pending) != 0 {
			t.Fatalf("round %d: %d responses for ids not asked", round, len(rb.pending))
		}
	}
	if disk.sum(t) != before {
		t.Fatal("the flood changed the device")
	}
	r.checkCase(t)
}

// garbage fills the ring with random bytes, 8 times over: every slot is
// answered once, with its own id, its operation echoed and a defined
// status; nothing outside the device changes (checkCase).
func garbage(t *testing.T, r *rig, rb *rawBlk) {
	q := rb.qs[0]
	size := rb.abi.RequestSize()
	idOff := 8
	if rb.abi == blkback.ABI32 {
		idOff = 4
	}
	for round := 0; round < 8; round++ {
		type sent struct{ op uint8 }
		want := map[uint64]sent{}
		for i := uint32(0); i < q.size; i++ {
			b := pattern(size, uint64(round)<<8|uint64(i))
			id := uint64(0xee)<<56 | uint64(round)<<8 | uint64(i)
			binary.LittleEndian.PutUint64(b[idOff:], id)
			op := b[0]
			if op == blkback.OpIndirect {
				op = b[1]
			}
			want[id] = sent{op}
			rb.putRaw(0, b)
		}
		rb.push(t, 0)
		for id, w := range want {
			rsp, err := rb.wait(ctxFor(t), 0, id)
			if err != nil {
				t.Fatal(err)
			}
			if rsp.Operation != w.op || !slices.Contains([]int16{0, blkback.StatusError, blkback.StatusEOPNOTSUPP}, rsp.Status) {
				t.Fatalf("round %d: response %+v to a random slot with operation %d", round, rsp, w.op)
			}
		}
		if len(rb.pending) != 0 {
			t.Fatalf("round %d: %d responses for ids not sent", round, len(rb.pending))
		}
	}
	r.checkCase(t)
}
