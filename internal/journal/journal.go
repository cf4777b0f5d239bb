// Package journal keeps, for one shared ring, the backend's memory of the
// requests it has taken and not yet published an answer for, in a file that
// outlives the backend process (a MAP_SHARED mapping of a file in the driver
// domain's tmpfs). A restarted backend recovers from it the ring's private
// req_cons and the requests it must serve again, so that every request the
// frontend posted gets exactly one published response even when the process
// dies at any instant and responses complete out of order.
//
// # Why a journal
//
// Requests and responses share the ring's slots. With out-of-order
// completion a response written at rsp_prod_pvt lands in a slot that may
// still hold a request the backend has taken but not answered; a restarted
// backend that re-reads requests from the ring, starting at the published
// rsp_prod, reads responses as requests and loses the ones they replaced.
// So every taken request is copied into the journal before the backend acts
// on it, and replay never rereads a slot below the journal's req_cons.
//
// # Protocol (the caller serialises all calls: Journal is thread-compatible)
//
//	for each request at ring index r:   copy it, Taken(r, copy) -> h    (before any response can use its slot)
//	when it completes:                  write the response at slot k; Answered(h, k)  (k in increasing order)
//	after publishing rsp_prod = p:      Published(p)
//	after a restart:                    Recover(ident, shared rsp_prod) -> req_cons, requests to serve again
//
// # Replay rule
//
// An answered entry whose response slot is below the shared rsp_prod was
// published: it is retired. Every other entry (taken, or answered into a slot
// at or above rsp_prod, which the frontend never saw) is served again: the
// request is re-executed from its journaled copy and answered in a new slot
// from rsp_prod on. Re-execution instead of journaling response contents is
// deliberate: block READ, WRITE, FLUSH and DISCARD are idempotent for the
// frontend, which owns the request's pages until it sees the response (a
// re-executed WRITE writes the same data from the same grants, a READ fills
// the same pages again), and validation of the journaled copy gives the same
// verdict the first time. It keeps the journal's hot path to two small
// writes per request.
//
// # Crash consistency
//
// Each entry is committed by an atomic store of its state word after its
// data (index, request copy, CRC) is written, so a death between any two
// stores leaves a journal that Recover reads consistently: an entry whose
// data is half written is still free; an entry taken at or beyond the
// recorded req_cons (death between the commit and the req_cons store) is
// dropped and its request is read again from the ring, where it is intact
// because no response can have been written for it. Process death loses no
// executed store (the pages are the file's); a power loss is not a concern
// for a tmpfs journal, whose ring dies with the domain.
package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
)

// File layout. All integers little endian; the words marked atomic are
// accessed with sync/atomic through the mapping.
const (
	offMagic     = 0  // [8]byte Magic
	offVersion   = 8  // u32 Version
	offRingSize  = 12 // u32 ring entries, a power of two
	offEntrySize = 16 // u32 request bytes kept per entry
	offSlots     = 20 // u32 journal entries (= ring entries)
	offHdrCRC    = 24 // u32 CRC32C of bytes [0, 24)
	offValid     = 28 // u32 atomic: 1 once bound to a ring (ident, req_cons meaningful)
	offIdent     = 32 // u64 the ring this journal describes (caller's choice)
	offReqCons   = 40 // u32 atomic: the ring's private req_cons
	HeaderSize   = 64

	entState  = 0  // u32 atomic: stateFree, stateTaken, stateAnswered
	entCRC    = 4  // u32 CRC32C of bytes [entReqIdx, entData+entrySize): reqIdx and the request
	entRspIdx = 8  // u32 response slot, once answered
	entReqIdx = 12 // u32 ring index the request was taken from
	entData   = 16 // the request bytes
)

// Magic and Version identify a journal file.
const (
	Magic   = "drvdomJ1"
	Version = 1
)

// Limits on the geometry a journal accepts.
const (
	MaxRingSize  = 1 << 16
	MaxEntrySize = 4096
)

const (
	stateFree     = 0
	stateTaken    = 1
	stateAnswered = 2
)

// ErrCorrupt is returned for a journal file that is not one this package
// wrote, or whose contents contradict themselves.
var ErrCorrupt = errors.New("journal: corrupt")

// ErrMismatch is returned by Recover when the journal does not describe the
// ring's published state (another ring, or a frontend that reset it).
var ErrMismatch = errors.New("journal: does not match the ring")

// ErrFull is returned by Taken when every entry is in use: the caller took
// more requests than the ring can hold.
var ErrFull = errors.New("journal: full")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Handle names a journal entry from Taken to its retirement.
type Handle uint32

// Stride is the size of one entry for requests of entrySize bytes.
func Stride(entrySize int) int { return (entData + entrySize + 7) &^ 7 }

// Size is the size of a journal file for the geometry.
func Size(ringSize, entrySize int) int { return HeaderSize + ringSize*Stride(entrySize) }

// Journal is one ring's journal over its mapped file. Thread-compatible:
// the caller serialises every call (blkback holds its ring lock).
type Journal struct {
	mem       []byte
	w         words // atomic access to mem
	ringSize  uint32
	entrySize int
	stride    int
	free      []Handle // stack of free entries
	fifo      []Handle // answered, unretired entries in response-slot order
	head, n   int      // fifo window
	unmap     func() error
	hook      func() // tests: called before each store to the file
}

func geometryOK(ringSize, entrySize int) error {
	if ringSize <= 0 || ringSize > MaxRingSize || ringSize&(ringSize-1) != 0 {
		return fmt.Errorf("journal: ring size %d: %w", ringSize, ErrCorrupt)
	}
	if entrySize <= 0 || entrySize > MaxEntrySize {
		return fmt.Errorf("journal: entry size %d: %w", entrySize, ErrCorrupt)
	}
	return nil
}

// New returns a journal over mem, which must be exactly Size(ringSize,
// entrySize) bytes and 8-byte aligned. Memory of all zeroes (a new file) is
// formatted; anything else must be a valid journal of the same geometry.
func New(mem []byte, ringSize, entrySize int) (*Journal, error) {
	if err := geometryOK(ringSize, entrySize); err != nil {
		return nil, err
	}
	if len(mem) != Size(ringSize, entrySize) {
		return nil, fmt.Errorf("journal: %d bytes for a %dx%d journal: %w", len(mem), ringSize, entrySize, ErrCorrupt)
	}
	w, ok := wordsOf(mem)
	if !ok {
		return nil, fmt.Errorf("journal: memory not 8-byte aligned")
	}
	j := &Journal{mem: mem, w: w, ringSize: uint32(ringSize), entrySize: entrySize, stride: Stride(entrySize),
		free: make([]Handle, 0, ringSize), fifo: make([]Handle, ringSize)}
	if string(mem[offMagic:offMagic+8]) == "\x00\x00\x00\x00\x00\x00\x00\x00" {
		j.format()
	} else if err := Check(mem); err != nil {
		return nil, err
	} else if rs, es := binary.LittleEndian.Uint32(mem[offRingSize:]), binary.LittleEndian.Uint32(mem[offEntrySize:]); rs != uint32(ringSize) || es != uint32(entrySize) {
		return nil, fmt.Errorf("journal: geometry %dx%d, want %dx%d: %w", rs, es, ringSize, entrySize, ErrMismatch)
	}
	j.rebuild()
	return j, nil
}

// format writes an empty, unbound journal.
func (j *Journal) format() {
	clear(j.mem)
	copy(j.mem[offMagic:], Magic)
	le := binary.LittleEndian
	le.PutUint32(j.mem[offVersion:], Version)
	le.PutUint32(j.mem[offRingSize:], j.ringSize)
	le.PutUint32(j.mem[offEntrySize:], uint32(j.entrySize))
	le.PutUint32(j.mem[offSlots:], j.ringSize)
	le.PutUint32(j.mem[offHdrCRC:], crc32.Checksum(j.mem[:offHdrCRC], castagnoli))
}

// rebuild recomputes the free list from the entries' states; the fifo
// starts empty (Recover turns answered entries into redone ones).
func (j *Journal) rebuild() {
	j.free = j.free[:0]
	for i := int(j.ringSize) - 1; i >= 0; i-- {
		if j.w.load(j.entry(Handle(i))+entState) == stateFree {
			j.free = append(j.free, Handle(i))
		}
	}
	j.head, j.n = 0, 0
}

func (j *Journal) entry(h Handle) int { return HeaderSize + int(h)*j.stride }

func (j *Journal) store(off int, v uint32) {
	if j.hook != nil {
		j.hook()
	}
	j.w.store(off, v)
}

// ReqCons returns the ring's private req_cons as journaled.
func (j *Journal) ReqCons() uint32 { return j.w.load(offReqCons) }

// InFlight returns the number of entries taken and not retired.
func (j *Journal) InFlight() int { return int(j.ringSize) - len(j.free) }

// Full reports whether every entry is in use: answered entries are
// retired only by Published, so a caller that wrote responses without
// publishing them must publish before taking more than the ring holds.
func (j *Journal) Full() bool { return len(j.free) == 0 }

// Taken journals the request just copied off the ring at index reqIdx and
// advances the journaled req_cons past it. It must be called before any
// response is written for it, and in ring order.
func (j *Journal) Taken(reqIdx uint32, req []byte) (Handle, error) {
	if len(j.free) == 0 {
		return 0, ErrFull
	}
	h := j.free[len(j.free)-1]
	j.free = j.free[:len(j.free)-1]
	e := j.entry(h)
	data := j.mem[e+entData : e+entData+j.entrySize]
	n := copy(data, req)
	clear(data[n:])
	j.store(e+entReqIdx, reqIdx)
	j.store(e+entRspIdx, 0)
	j.store(e+entCRC, crc32.Checksum(j.mem[e+entReqIdx:e+entData+j.entrySize], castagnoli))
	j.store(e+entState, stateTaken) // commit
	j.store(offReqCons, reqIdx+1)
	return h, nil
}

// Answered records that h's response was written into ring slot rspIdx
// (not yet published). Calls must come in increasing rspIdx order, as
// rsp_prod_pvt hands the slots out.
func (j *Journal) Answered(h Handle, rspIdx uint32) {
	e := j.entry(h)
	j.store(e+entRspIdx, rspIdx)
	j.store(e+entState, stateAnswered)
	j.fifo[(j.head+j.n)%len(j.fifo)] = h
	j.n++
}

// Published retires every answered entry whose response slot is below
// rspProd, the rsp_prod just published to the frontend.
func (j *Journal) Published(rspProd uint32) {
	for j.n > 0 {
		h := j.fifo[j.head]
		e := j.entry(h)
		if !before(j.w.load(e+entRspIdx), rspProd) {
			return
		}
		j.store(e+entState, stateFree)
		j.free = append(j.free, h)
		j.head = (j.head + 1) % len(j.fifo)
		j.n--
	}
}

// before reports a < b in ring index arithmetic.
func before(a, b uint32) bool { return int32(a-b) < 0 }

// Reset empties the journal and binds it to the ring named ident whose
// private req_cons is reqCons (a new connection).
func (j *Journal) Reset(ident uint64, reqCons uint32) {
	j.store(offValid, 0)
	for i := 0; i < int(j.ringSize); i++ {
		j.store(j.entry(Handle(i))+entState, stateFree)
	}
	binary.LittleEndian.PutUint64(j.mem[offIdent:], ident)
	j.store(offReqCons, reqCons)
	j.store(offValid, 1)
	j.rebuild()
}

// Pending is a request to serve again after a restart.
type Pending struct {
	H      Handle
	ReqIdx uint32
	Req    []byte // the journaled copy; valid until the entry is retired
}

// Recovery is what Recover found.
type Recovery struct {
	Fresh   bool      // the journal did not describe this ring: it was reset
	ReqCons uint32    // resume the ring at req_cons = ReqCons, rsp_prod_pvt = the shared rsp_prod
	Redo    []Pending // oldest first; answer each exactly once (Answered, then Published)
}

// Recover reads the journal after a restart. ident names the ring (for
// example a hash of its grant references and event channel) and rspProd is
// the shared rsp_prod read from it. A journal bound to another ring, or an
// unbound one, is reset to start at rspProd and reported Fresh. Otherwise
// published entries are retired and the rest returned to be served again;
// the journal then holds them as taken. A journal whose count of
// outstanding requests disagrees with the ring (req_cons - rsp_prod) is
// ErrMismatch: the caller should Reset it and treat the ring as new.
func (j *Journal) Recover(ident uint64, rspProd uint32) (Recovery, error) {
	if j.w.load(offValid) != 1 || binary.LittleEndian.Uint64(j.mem[offIdent:]) != ident {
		j.Reset(ident, rspProd)
		return Recovery{Fresh: true, ReqCons: rspProd}, nil
	}
	reqCons := j.ReqCons()
	if reqCons-rspProd > j.ringSize {
		return Recovery{}, fmt.Errorf("journal: req_cons %d, rsp_prod %d: %w", reqCons, rspProd, ErrMismatch)
	}
	var redo []Pending
	for i := 0; i < int(j.ringSize); i++ {
		h := Handle(i)
		e := j.entry(h)
		st := j.w.load(e + entState)
		if st == stateFree {
			continue
		}
		reqIdx := j.w.load(e + entReqIdx)
		switch {
		case !before(reqIdx, reqCons):
			// Committed but req_cons not advanced: the ring still has it.
			j.store(e+entState, stateFree)
		case st == stateAnswered && before(j.w.load(e+entRspIdx), rspProd):
			j.store(e+entState, stateFree) // published
		default:
			if st == stateAnswered {
				j.store(e+entState, stateTaken) // its slot was never published
			}
			redo = append(redo, Pending{H: h, ReqIdx: reqIdx, Req: j.mem[e+entData : e+entData+j.entrySize]})
		}
	}
	j.rebuild()
	if uint32(len(redo)) != reqCons-rspProd {
		return Recovery{}, fmt.Errorf("journal: %d requests outstanding, ring says %d: %w", len(redo), reqCons-rspProd, ErrMismatch)
	}
	sort.Slice(redo, func(a, b int) bool { return before(redo[a].ReqIdx, redo[b].ReqIdx) })
	return Recovery{ReqCons: reqCons, Redo: redo}, nil
}

// Check validates a journal file image: header, geometry, size and every
// entry. It never panics, whatever b holds.
func Check(b []byte) error {
	le := binary.LittleEndian
	if len(b) < HeaderSize {
		return fmt.Errorf("journal: %d bytes: %w", len(b), ErrCorrupt)
	}
	if string(b[offMagic:offMagic+8]) != Magic {
		return fmt.Errorf("journal: bad magic: %w", ErrCorrupt)
	}
	if v := le.Uint32(b[offVersion:]); v != Version {
		return fmt.Errorf("journal: version %d: %w", v, ErrCorrupt)
	}
	if le.Uint32(b[offHdrCRC:]) != crc32.Checksum(b[:offHdrCRC], castagnoli) {
		return fmt.Errorf("journal: header checksum: %w", ErrCorrupt)
	}
	rs, es, slots := le.Uint32(b[offRingSize:]), le.Uint32(b[offEntrySize:]), le.Uint32(b[offSlots:])
	if rs > MaxRingSize || es > MaxEntrySize {
		return fmt.Errorf("journal: geometry %dx%d: %w", rs, es, ErrCorrupt)
	}
	if err := geometryOK(int(rs), int(es)); err != nil {
		return err
	}
	if slots != rs {
		return fmt.Errorf("journal: %d entries for a %d-entry ring: %w", slots, rs, ErrCorrupt)
	}
	if len(b) != Size(int(rs), int(es)) {
		return fmt.Errorf("journal: %d bytes for a %dx%d journal: %w", len(b), rs, es, ErrCorrupt)
	}
	valid := le.Uint32(b[offValid:])
	if valid > 1 {
		return fmt.Errorf("journal: valid word %d: %w", valid, ErrCorrupt)
	}
	stride := Stride(int(es))
	reqCons := le.Uint32(b[offReqCons:])
	live := make(map[uint32]bool)
	for i := 0; i < int(rs); i++ {
		e := HeaderSize + i*stride
		st := le.Uint32(b[e+entState:])
		if st > stateAnswered {
			return fmt.Errorf("journal: entry %d state %d: %w", i, st, ErrCorrupt)
		}
		if st == stateFree || valid == 0 {
			continue
		}
		reqIdx := le.Uint32(b[e+entReqIdx:])
		if le.Uint32(b[e+entCRC:]) != crc32.Checksum(b[e+entReqIdx:e+entData+int(es)], castagnoli) {
			return fmt.Errorf("journal: entry %d checksum: %w", i, ErrCorrupt)
		}
		if !before(reqIdx, reqCons) {
			continue // the commit-before-req_cons window
		}
		if live[reqIdx] {
			return fmt.Errorf("journal: request %d journaled twice: %w", reqIdx, ErrCorrupt)
		}
		live[reqIdx] = true
	}
	return nil
}

// Close unmaps a journal opened with Open; the file stays for the next
// process. The Journal must not be used afterwards.
func (j *Journal) Close() error {
	if j.unmap == nil {
		return nil
	}
	err := j.unmap()
	j.unmap, j.mem = nil, nil
	return err
}

// Entry is one live journal entry as Inspect reads it.
type Entry struct {
	Slot     int    // entry index in the file
	Answered bool   // a response was written (into ring slot RspIdx), maybe not published
	ReqIdx   uint32 // ring index the request was taken from
	RspIdx   uint32 // response slot, when Answered
	Req      []byte // the journaled request copy (aliases the image)
}

// Snapshot is what a journal file image says, for diagnostics (a test that
// finds requests lost reports which ones the journal holds).
type Snapshot struct {
	Valid   bool   // bound to a ring
	Ident   uint64 // the ring it describes
	ReqCons uint32 // the journaled private req_cons
	Entries []Entry
}

// Inspect reads a journal file image (Check must accept it) without
// changing it. Entries taken at or beyond ReqCons (the commit-before-
// req_cons window) are included: the caller sees the file as it is.
func Inspect(b []byte) (Snapshot, error) {
	if err := Check(b); err != nil {
		return Snapshot{}, err
	}
	le := binary.LittleEndian
	s := Snapshot{Valid: le.Uint32(b[offValid:]) == 1, Ident: le.Uint64(b[offIdent:]), ReqCons: le.Uint32(b[offReqCons:])}
	rs, es := int(le.Uint32(b[offRingSize:])), int(le.Uint32(b[offEntrySize:]))
	stride := Stride(es)
	for i := 0; i < rs; i++ {
		e := HeaderSize + i*stride
		st := le.Uint32(b[e+entState:])
		if st == stateFree {
			continue
		}
		s.Entries = append(s.Entries, Entry{Slot: i, Answered: st == stateAnswered,
			ReqIdx: le.Uint32(b[e+entReqIdx:]), RspIdx: le.Uint32(b[e+entRspIdx:]), Req: b[e+entData : e+entData+es]})
	}
	return s, nil
}
