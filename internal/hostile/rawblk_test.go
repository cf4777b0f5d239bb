package hostile

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"testing"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/xensim/blkfront"
	"drvdom/xenstore"
)

// Shared ring header offsets (ring.h), written here by hand: this frontend
// is hostile and keeps its own indices, so it can put anything there.
const (
	hdrReqProd  = 0
	hdrReqEvent = 4
	hdrRspProd  = 8
	hdrRspEvent = 12
	hdrSize     = 64
)

// rmKey as a key's value in blkCfg.Edit deletes the key.
const rmKey = "\x00rm"

// blkCfg is what the hostile blkfront publishes.
type blkCfg struct {
	Proto      string // protocol key; "" writes none (x86_32)
	Order      int    // ring-page-order (0: the single ring-ref key)
	Queues     int    // multi-queue-num-queues when > 1
	Persistent bool
	// Start is the initial value of every ring index (wrap-around tests).
	Start uint32
	// Edit changes the keys before they are published (rmKey deletes).
	Edit func(rb *rawBlk, keys map[string]string)
}

// rawBlk is a blkif frontend that drives its rings by hand: the ring
// indices are plain little-endian words in the shared page (the race
// detector does not see the mmap'd grant pages; x86's ordering of plain
// stores suffices for a frontend that is allowed to be wrong anyway).
// Single goroutine.
type rawBlk struct {
	r       *rig
	disk    blkfront.Disk
	abi     blkback.ABI
	evh     evtchn.Handle
	qs      []*rawQ
	data    grant.Share // 16 writable pages granted to the backend
	ro      grant.Share // 4 read-only pages granted to the backend
	shares  []grant.Share
	ports   []evtchn.Port
	state   string // backend state after the handshake
	nextID  uint64
	pending map[uint64]blkback.Response
	closed  bool
}

type rawQ struct {
	share   grant.Share
	mem     []byte
	size    uint32
	port    evtchn.Port
	prodPvt uint32
	rspCons uint32
}

const (
	dataPages = 16
	roPages   = 4
)

// attachBlk adds a disk for the hostile guest and runs the handshake with
// cfg; it returns once the backend is Connected or refused (Closing or
// Closed): rb.state says which.
// publish writes a raw frontend's keys (leaving out those whose value is
// rmKey) and then its state in one transaction, as a frontend publishes its
// rings, and waits for the backend at back to connect or give up: it
// returns the backend's state, Connected, Closing or Closed.
func (r *rig) publish(t testing.TB, front, back string, keys map[string]string, state string) string {
	t.Helper()
	ctx := ctxFor(t)
	err := r.hstore.Transaction(ctx, func(tx *xenstore.Tx) error {
		for k, v := range keys {
			if v == rmKey {
				continue
			}
			if err := tx.Write(ctx, front+"/"+k, v); err != nil {
				return err
			}
		}
		return tx.Write(ctx, front+"/state", state)
	})
	if err != nil {
		t.Fatalf("publish %s: %v", front, err)
	}
	return r.await(t, back+"/state", "Connected or Closing", func(v string, err error) bool {
		return v == "4" || v == "5" || v == "6"
	})
}

func (r *rig) attachBlk(t testing.TB, backDom uint16, params string, cfg blkCfg) *rawBlk {
	t.Helper()
	ctx := ctxFor(t)
	g := r.hostile
	rb := &rawBlk{r: r, evh: g.Evtchn(), pending: map[uint64]blkback.Response{}}
	rb.disk = blkfront.Disk{BackDom: backDom, FrontDom: hostileID, DevID: r.devID(), Params: params, Mode: "w"}
	t.Cleanup(func() { rb.close(t) })
	abi, err := blkback.ParseProtocol(cfg.Proto)
	if err != nil {
		abi = blkback.ABI64 // a nonsense protocol key: the backend must refuse it
	}
	rb.abi = abi
	if err := blkfront.AddDisk(ctx, r.d0, rb.disk); err != nil {
		t.Fatal(err)
	}
	bp := rb.disk.BackPath()
	r.await(t, bp+"/state", "InitWait", func(v string, err error) bool { return v == "2" })
	sharer := g.Sharer()
	share := func(n int, writable bool, to uint16) grant.Share {
		sh, err := sharer.Share(to, n, writable)
		if err != nil {
			t.Fatal(err)
		}
		rb.shares = append(rb.shares, sh)
		return sh
	}
	rb.data = share(dataPages, true, backDom)
	rb.ro = share(roPages, false, backDom)
	nq := max(cfg.Queues, 1)
	keys := map[string]string{}
	pages := 1 << cfg.Order
	for i := 0; i < nq; i++ {
		sh := share(pages, true, backDom)
		q := &rawQ{share: sh, mem: sh.Bytes(), size: ringEntries(pages, abi.RequestSize()), prodPvt: cfg.Start, rspCons: cfg.Start}
		le := binary.LittleEndian
		le.PutUint32(q.mem[hdrReqProd:], cfg.Start)
		le.PutUint32(q.mem[hdrRspProd:], cfg.Start)
		le.PutUint32(q.mem[hdrReqEvent:], cfg.Start+1)
		le.PutUint32(q.mem[hdrRspEvent:], cfg.Start+1)
		if q.port, err = rb.evh.BindUnbound(backDom); err != nil {
			t.Fatal(err)
		}
		rb.ports = append(rb.ports, q.port)
		rb.qs = append(rb.qs, q)
		dir := ""
		if nq > 1 {
			dir = "queue-" + strconv.Itoa(i) + "/"
		}
		if cfg.Order == 0 {
			keys[dir+"ring-ref"] = strconv.Itoa(int(sh.Refs()[0]))
		} else {
			for j, ref := range sh.Refs() {
				keys[dir+"ring-ref"+strconv.Itoa(j)] = strconv.Itoa(int(ref))
			}
		}
		keys[dir+"event-channel"] = strconv.Itoa(int(q.port))
	}
	if cfg.Order > 0 {
		keys["ring-page-order"] = strconv.Itoa(cfg.Order)
	}
	if nq > 1 {
		keys["multi-queue-num-queues"] = strconv.Itoa(nq)
	}
	if cfg.Proto != "" {
		keys["protocol"] = cfg.Proto
	}
	keys["feature-persistent"] = map[bool]string{true: "1", false: "0"}[cfg.Persistent]
	if cfg.Edit != nil {
		cfg.Edit(rb, keys)
	}
	fp := rb.disk.FrontPath()
	rb.state = r.publish(t, fp, bp, keys, "3")
	if rb.state == "4" {
		if err := r.hstore.Write(ctx, fp+"/state", "4"); err != nil {
			t.Fatal(err)
		}
	}
	return rb
}

// ringEntries is __RING_SIZE for pages ring pages (rounded to a power of 2).
func ringEntries(pages, entry int) uint32 {
	n := (pages*4096 - hdrSize) / entry
	p := uint32(1)
	for int(p)*2 <= n {
		p *= 2
	}
	return p
}

func (rb *rawBlk) connected(t testing.TB) {
	t.Helper()
	if rb.state != "4" {
		t.Fatalf("disk %d did not connect (state %s, error %q)", rb.disk.DevID, rb.state, rb.errNode())
	}
}

func (rb *rawBlk) errNode() string {
	v, _ := rb.r.d0.Read(context.Background(), errorPath(rb.disk.BackDom, "vbd", hostileID, rb.disk.DevID))
	return v
}

func (rb *rawBlk) name() string { return fmt.Sprintf("vbd %d/%d", hostileID, rb.disk.DevID) }

// close runs the frontend's side of closing (Closing, Closed), takes the
// disk offline and waits for the backend to close, then ends every grant
// and port.
func (rb *rawBlk) close(t testing.TB) {
	if rb.closed {
		return
	}
	rb.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	fp, bp := rb.disk.FrontPath(), rb.disk.BackPath()
	st := rb.r.hstore
	if _, err := st.Directory(ctx, fp); err == nil { // the guest may have removed it
		st.Write(ctx, fp+"/state", "5")
		st.Write(ctx, fp+"/state", "6")
	}
	blkfront.RemoveDisk(ctx, rb.r.d0, rb.disk)
	rb.r.await(t, bp+"/state", "Closed", func(v string, err error) bool { return v == "6" || err != nil })
	rb.r.removeNodes(ctx, rb.disk.BackDom, "vbd", rb.disk.DevID, bp, fp)
	for _, p := range rb.ports {
		rb.evh.Unbind(p)
	}
	rb.evh.Close()
	for _, sh := range rb.shares {
		sh.Close()
	}
	rb.shares = nil
}

func (q *rawQ) slot(i uint32, entry int) []byte {
	off := hdrSize + int(i&(q.size-1))*entry
	return q.mem[off : off+entry]
}

func (q *rawQ) idx(off int) uint32       { return binary.LittleEndian.Uint32(q.mem[off:]) }
func (q *rawQ) setIdx(off int, v uint32) { binary.LittleEndian.PutUint32(q.mem[off:], v) }

// put writes request r (its ID set to a fresh one unless keepID) in the
// next slot of ring qi without publishing it; it returns the slot.
func (rb *rawBlk) put(qi int, r *blkback.Request, keepID bool) []byte {
	q := rb.qs[qi]
	if !keepID {
		rb.nextID++
		r.ID = rb.nextID | 0xab<<56
	}
	s := q.slot(q.prodPvt, rb.abi.RequestSize())
	blkback.EncodeRequest(rb.abi, s, r)
	q.prodPvt++
	return s
}

// putRaw writes raw slot bytes.
func (rb *rawBlk) putRaw(qi int, b []byte) []byte {
	q := rb.qs[qi]
	s := q.slot(q.prodPvt, rb.abi.RequestSize())
	copy(s, b)
	q.prodPvt++
	return s
}

// push publishes what put wrote and kicks the backend.
func (rb *rawBlk) push(t testing.TB, qi int) {
	t.Helper()
	q := rb.qs[qi]
	q.setIdx(hdrReqProd, q.prodPvt)
	rb.kick(t, qi)
}

func (rb *rawBlk) kick(t testing.TB, qi int) {
	t.Helper()
	if err := rb.evh.Notify(rb.qs[qi].port); err != nil {
		t.Fatalf("notify: %v", err)
	}
}

// collect consumes the responses on ring qi now published.
func (rb *rawBlk) collect(qi int) {
	q := rb.qs[qi]
	prod := q.idx(hdrRspProd)
	if prod-q.rspCons > q.size {
		return // our own scribbling; wait for the backend to rewrite rsp_prod
	}
	for q.rspCons != prod {
		r := blkback.DecodeResponse(q.slot(q.rspCons, rb.abi.RequestSize()))
		rb.pending[r.ID] = r
		q.rspCons++
	}
}

// wait returns the response to id on ring qi.
func (rb *rawBlk) wait(ctx context.Context, qi int, id uint64) (blkback.Response, error) {
	q := rb.qs[qi]
	ports := make([]evtchn.Port, 8)
	for {
		rb.collect(qi)
		if r, ok := rb.pending[id]; ok {
			delete(rb.pending, id)
			return r, nil
		}
		// RING_FINAL_CHECK_FOR_RESPONSES: ask for an event at the next
		// response, then look again before sleeping.
		q.setIdx(hdrRspEvent, q.rspCons+1)
		if q.idx(hdrRspProd) != q.rspCons {
			continue
		}
		n, err := rb.evh.Wait(ctx, ports)
		if err != nil {
			return blkback.Response{}, fmt.Errorf("%s: no response to %#x (ring %d: req_prod %#x rsp_prod %#x req_event %#x rsp_event %#x, ours: prod %#x cons %#x, %d other responses): %w",
				rb.name(), id, qi, q.idx(hdrReqProd), q.idx(hdrRspProd), q.idx(hdrReqEvent), q.idx(hdrRspEvent),
				q.prodPvt, q.rspCons, len(rb.pending), err)
		}
		for _, p := range ports[:n] {
			rb.evh.Unmask(p)
		}
	}
}

// waitOK waits for the response to id on ring qi and fails the test
// unless it is a success.
func (rb *rawBlk) waitOK(t testing.TB, qi int, id uint64) {
	t.Helper()
	rsp, err := rb.wait(ctxFor(t), qi, id)
	if err != nil {
		t.Fatal(err)
	}
	if rsp.Status != 0 {
		t.Fatalf("%s: response to %#x on ring %d: status %d", rb.name(), id, qi, rsp.Status)
	}
}

// do puts one request on ring qi and returns its response.
func (rb *rawBlk) do(t testing.TB, qi int, r blkback.Request) blkback.Response {
	t.Helper()
	rb.put(qi, &r, false)
	rb.push(t, qi)
	rsp, err := rb.wait(ctxFor(t), qi, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rsp.Operation != r.Op() {
		t.Fatalf("response operation %d for operation %d", rsp.Operation, r.Op())
	}
	return rsp
}

// page returns data page i and its grant.
func (rb *rawBlk) page(i int) ([]byte, uint32) {
	return rb.data.Bytes()[i*4096 : (i+1)*4096], uint32(rb.data.Refs()[i])
}

func (rb *rawBlk) roPage(i int) ([]byte, uint32) {
	return rb.ro.Bytes()[i*4096 : (i+1)*4096], uint32(rb.ro.Refs()[i])
}

// rw is a read or write of the whole pages given, at sector.
func rw(op uint8, sector uint64, grefs ...uint32) blkback.Request {
	r := blkback.Request{Operation: op, Sector: sector, NrSegments: uint16(len(grefs))}
	for i, g := range grefs {
		r.Segs[i] = blkback.Segment{Gref: g, LastSect: 7}
	}
	return r
}

// write writes data (whole pages, at most 11) at sector through the data
// pages, as an honest request; it fails the test unless it succeeds.
func (rb *rawBlk) write(t testing.TB, qi int, sector uint64, data []byte) {
	t.Helper()
	var grefs []uint32
	for i := 0; i*4096 < len(data); i++ {
		p, g := rb.page(i)
		copy(p, data[i*4096:])
		grefs = append(grefs, g)
	}
	if rsp := rb.do(t, qi, rw(blkback.OpWrite, sector, grefs...)); rsp.Status != 0 {
		t.Fatalf("%s: honest write at %d: status %d", rb.name(), sector, rsp.Status)
	}
}

// read reads n pages at sector.
func (rb *rawBlk) read(t testing.TB, qi int, sector uint64, pages int) []byte {
	t.Helper()
	var grefs []uint32
	for i := 0; i < pages; i++ {
		_, g := rb.page(i)
		grefs = append(grefs, g)
	}
	if rsp := rb.do(t, qi, rw(blkback.OpRead, sector, grefs...)); rsp.Status != 0 {
		t.Fatalf("%s: honest read at %d: status %d", rb.name(), sector, rsp.Status)
	}
	out := make([]byte, pages*4096)
	for i := 0; i < pages; i++ {
		p, _ := rb.page(i)
		copy(out[i*4096:], p)
	}
	return out
}
