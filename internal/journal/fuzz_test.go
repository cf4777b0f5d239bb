package journal_test

import (
	"encoding/binary"
	"testing"

	"drvdom/internal/journal"
)

// seedJournal is a valid journal image with requests in every state.
func seedJournal() []byte {
	mem := alignedMem(journal.Size(4, 16))
	j, _ := journal.New(mem, 4, 16)
	_, _ = j.Recover(3, 10)
	h0, _ := j.Taken(10, req(1))
	h1, _ := j.Taken(11, req(2))
	_, _ = j.Taken(12, req(3))
	j.Answered(h1, 10)
	j.Published(11)
	j.Answered(h0, 11)
	return append([]byte(nil), mem...)
}

// FuzzCheck: a journal file is read back by a restarted process; whatever it
// holds (a torn or corrupted file), Check refuses it or New and Recover
// accept it without panicking and hand out only in-bounds requests.
func FuzzCheck(f *testing.F) {
	f.Add(seedJournal(), uint64(3), uint32(11))
	f.Add(seedJournal(), uint64(4), uint32(0))
	f.Add(make([]byte, journal.Size(4, 16)), uint64(0), uint32(0))
	f.Fuzz(func(t *testing.T, b []byte, ident uint64, rspProd uint32) {
		if journal.Check(b) != nil {
			return
		}
		rs := int(binary.LittleEndian.Uint32(b[12:]))
		es := int(binary.LittleEndian.Uint32(b[16:]))
		mem := alignedMem(len(b))
		copy(mem, b)
		j, err := journal.New(mem, rs, es)
		if err != nil {
			t.Fatalf("Check accepted what New refuses: %v", err)
		}
		rec, err := j.Recover(ident, rspProd)
		if err != nil {
			return
		}
		if len(rec.Redo) > rs {
			t.Fatalf("%d requests to redo on a %d-entry ring", len(rec.Redo), rs)
		}
		for _, p := range rec.Redo {
			if len(p.Req) != es {
				t.Fatalf("request of %d bytes, want %d", len(p.Req), es)
			}
			j.Answered(p.H, rspProd)
			rspProd++
		}
		j.Published(rspProd)
		if j.InFlight() != 0 {
			t.Fatalf("%d entries left after answering everything", j.InFlight())
		}
	})
}
