package blkback

import (
	"context"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/journal"
	"drvdom/ring"
	"drvdom/xenstore/xenbus"
)

// TestJournalReplayOutOfOrder: a backend process answered requests 0, 1, 2,
// 4 and 7 of 10 (published), answered 3 without publishing, and died. The
// next process, from the journal alone, answers exactly 3, 5, 6, 8 and 9:
// nothing lost, nothing twice, although the shared slots of the unanswered
// requests now hold responses.
func TestJournalReplayOutOfOrder(t *testing.T) {
	gs, es := grant.NewSim(), evtchn.NewSim()
	const frontDom, backDom = 2, 1
	ringShare, err := gs.Sharer(frontDom).Share(backDom, 1, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ringShare.Close()
	dataShare, err := gs.Sharer(frontDom).Share(backDom, 1, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dataShare.Close()
	front, err := ring.NewFront(ringShare.Bytes(), RequestSize64)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		EncodeRequest(ABI64, front.Request(), &Request{Operation: OpRead, NrSegments: 1, ID: uint64(i), Sector: uint64(i * 8),
			Segs: [11]Segment{{Gref: uint32(dataShare.Refs()[0]), LastSect: 7}}})
	}
	front.PushRequests()

	dir := t.TempDir()
	fh := es.Open(frontDom)
	fport, err := fh.BindUnbound(backDom)
	if err != nil {
		t.Fatal(err)
	}
	id := journalIdentity{size: 32, entry: RequestSize64, ringRef: uint32(ringShare.Refs()[0]), port: uint32(fport)}

	// The process that dies.
	m1, err := gs.Mapper(backDom).Map(frontDom, ringShare.Refs(), true)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := ring.NewBack(m1.Bytes(), RequestSize64)
	j, _, err := openJournal(dir, "vbd-2-51712-q0", 32, RequestSize64)
	if err != nil {
		t.Fatal(err)
	}
	j.Reset(id.key(), 0)
	if n, _ := old.Unconsumed(); n != 10 {
		t.Fatalf("%d requests on the ring", n)
	}
	var hs [10]journal.Handle
	for i := 0; i < 10; i++ {
		idx := old.ReqCons()
		if hs[i], err = j.Taken(idx, old.Request()); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{0, 1, 2, 4, 7} {
		j.Answered(hs[i], old.RspProdPvt())
		EncodeResponse(old.Response(), uint64(i), OpRead, StatusOkay)
	}
	old.PushResponses()
	j.Published(old.RspProdPvt())
	j.Answered(hs[3], old.RspProdPvt()) // written, never published
	EncodeResponse(old.Response(), 3, OpRead, StatusOkay)
	j.Close()
	m1.Unmap()

	got := func() []uint64 {
		var ids []uint64
		for front.Unconsumed() > 0 {
			ids = append(ids, DecodeResponse(front.Response()).ID)
		}
		return ids
	}
	if ids := got(); !slices.Equal(ids, []uint64{0, 1, 2, 4, 7}) {
		t.Fatalf("published before the crash: %v", ids)
	}

	// The next process.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dev := &Device{drv: &Driver{Grants: gs.Mapper(backDom), JournalDir: dir}, log: log,
		backing: NewNullDisk(1<<20, 0), frontDom: frontDom, logical: 512,
		dev: &xenbus.Dev{Type: "vbd", FrontDom: frontDom, DevID: 51712}}
	dev.sectors.Store(2048)
	dev.resuming = true // the frontend is still Connected
	m2, err := gs.Mapper(backDom).Map(frontDom, ringShare.Refs(), true)
	if err != nil {
		t.Fatal(err)
	}
	bh := es.Open(backDom)
	local, err := bh.BindInterdomain(frontDom, fport)
	if err != nil {
		t.Fatal(err)
	}
	q, err := newQueue(dev, 0, ABI64, m2, bh, local, false, journalIdentity{ringRef: id.ringRef, port: id.port})
	if err != nil {
		t.Fatal(err)
	}
	if q.ring.ReqCons() != 10 || len(q.replay) != 5 {
		t.Fatalf("resumed at req_cons %d with %d to replay", q.ring.ReqCons(), len(q.replay))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		q.run(ctx)
	}()
	var ids []uint64
	deadline := time.Now().Add(5 * time.Second)
	for len(ids) < 5 && time.Now().Before(deadline) {
		ids = append(ids, got()...)
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	ids = append(ids, got()...)
	slices.Sort(ids)
	if !slices.Equal(ids, []uint64{3, 5, 6, 8, 9}) {
		t.Fatalf("after the restart: responses for %v, want [3 5 6 8 9]", ids)
	}
	// And the ring goes on: one more request.
	EncodeRequest(ABI64, front.Request(), &Request{Operation: OpRead, NrSegments: 1, ID: 10,
		Segs: [11]Segment{{Gref: uint32(dataShare.Refs()[0]), LastSect: 7}}})
	if front.PushRequests() {
		fh.Notify(fport)
	}
	deadline = time.Now().Add(5 * time.Second)
	for ids = nil; len(ids) == 0 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		ids = got()
	}
	if !slices.Equal(ids, []uint64{10}) {
		t.Fatalf("next request: %v", ids)
	}
	cancel()
	wg.Wait()
	if err := q.jrn.Close(); err != nil {
		t.Fatal(err)
	}
	m2.Unmap()
	bh.Close()
	fh.Close()
}

// TestJournalIgnoresOtherRing: a journal of another ring (a guest that
// rebooted meanwhile) or of a new connection is reset, not replayed.
func TestJournalIgnoresOtherRing(t *testing.T) {
	dir := t.TempDir()
	j, _, err := openJournal(dir, "x", 32, RequestSize64)
	if err != nil {
		t.Fatal(err)
	}
	a := journalIdentity{32, RequestSize64, 8, 5}
	j.Reset(a.key(), 7)
	if _, err := j.Taken(7, make([]byte, RequestSize64)); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, _, err = openJournal(dir, "x", 32, RequestSize64)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if rec, err := j.Recover(journalIdentity{32, RequestSize64, 9, 5}.key(), 7); err != nil || !rec.Fresh {
		t.Fatalf("journal taken for another ring: %+v %v", rec, err)
	}
	j.Reset(a.key(), 7)
	if _, err := j.Taken(7, make([]byte, RequestSize64)); err != nil {
		t.Fatal(err)
	}
	if rec, err := j.Recover(a.key(), 7); err != nil || rec.Fresh || rec.ReqCons != 8 || len(rec.Redo) != 1 {
		t.Fatalf("journal of this ring not replayed: %+v %v", rec, err)
	}
	if (journalIdentity{32, RequestSize64, 8, 5}).key() == (journalIdentity{32, RequestSize32, 8, 5}).key() {
		t.Fatal("identity ignores the ABI")
	}
}

// A corrupt journal file is refused by the decoder and replaced.
func TestJournalCorruptReplaced(t *testing.T) {
	dir := t.TempDir()
	j, p, err := openJournal(dir, "x", 32, RequestSize64)
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	if err := os.WriteFile(p, make([]byte, journal.Size(32, RequestSize64)), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	copy(b, "garbage!")
	os.WriteFile(p, b, 0o600)
	j, _, err = openJournal(dir, "x", 32, RequestSize64)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if rec, err := j.Recover(1, 0); err != nil || !rec.Fresh {
		t.Fatalf("%+v %v", rec, err)
	}
}
