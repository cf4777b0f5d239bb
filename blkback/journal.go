package blkback

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
)

// The crash-only journal of one ring (DESIGN.md, "Crash-only backends"): a
// memory file in the driver domain's tmpfs holding every request taken off
// the ring and not yet answered in a published response, with the response
// slot it was given. A process that dies keeps its journal (the file's
// pages outlive it); the next one replays what the journal says is
// unanswered, even when completions were out of order and responses
// overwrote the requests' slots in the shared ring.
//
// Layout (little endian): a 64-byte header, then one 128-byte record per
// request slot of the ring (the backend's slot index, not the ring index).
const (
	jrnMagic       = "DRVDJRN1"
	jrnOffMagic    = 0
	jrnOffSize     = 8  // ring entries, u32
	jrnOffEntry    = 12 // entry size (the ABI), u32
	jrnOffRingRef  = 16 // first ring grant reference, u32
	jrnOffPort     = 20 // the frontend's event channel port, u32
	jrnOffReqCons  = 24 // req_cons after the last batch taken, u32
	jrnHeaderSize  = 64
	jrnRecordSize  = 128
	jrnRecOffState = 0 // jrnFree, jrnTaken, jrnAnswered
	jrnRecOffRsp   = 4 // response slot (ring index) once answered, u32
	jrnRecOffReq   = 8 // the request as copied off the ring (up to 112 bytes)

	jrnFree     = 0
	jrnTaken    = 1
	jrnAnswered = 2
)

// journal is one ring's journal: mem is the mapped file (nil: no journal).
type journal struct {
	path  string
	mem   []byte
	unmap func() error
}

// journalIdentity names the ring a journal belongs to.
type journalIdentity struct {
	size, entry, ringRef, port uint32
}

// openJournal maps (creating or resizing) the journal file of a ring.
func openJournal(dir, name string, slots int) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("blkback: journal dir: %w", err)
	}
	p := filepath.Join(dir, name)
	mem, unmap, err := mapFile(p, jrnHeaderSize+slots*jrnRecordSize)
	if err != nil {
		return nil, fmt.Errorf("blkback: journal %s: %w", p, err)
	}
	return &journal{path: p, mem: mem, unmap: unmap}, nil
}

func (j *journal) identity() journalIdentity {
	le := binary.LittleEndian
	return journalIdentity{le.Uint32(j.mem[jrnOffSize:]), le.Uint32(j.mem[jrnOffEntry:]),
		le.Uint32(j.mem[jrnOffRingRef:]), le.Uint32(j.mem[jrnOffPort:])}
}

func (j *journal) valid(id journalIdentity) bool {
	return string(j.mem[:len(jrnMagic)]) == jrnMagic && j.identity() == id
}

// reset starts a fresh journal for the ring id, whose requests up to
// reqCons are answered.
func (j *journal) reset(id journalIdentity, reqCons uint32) {
	clear(j.mem)
	le := binary.LittleEndian
	le.PutUint32(j.mem[jrnOffSize:], id.size)
	le.PutUint32(j.mem[jrnOffEntry:], id.entry)
	le.PutUint32(j.mem[jrnOffRingRef:], id.ringRef)
	le.PutUint32(j.mem[jrnOffPort:], id.port)
	le.PutUint32(j.mem[jrnOffReqCons:], reqCons)
	copy(j.mem[jrnOffMagic:], jrnMagic)
}

func (j *journal) record(slot int) []byte {
	off := jrnHeaderSize + slot*jrnRecordSize
	return j.mem[off : off+jrnRecordSize : off+jrnRecordSize]
}

// take records a request copied off the ring into slot.
func (j *journal) take(slot int, raw []byte) {
	r := j.record(slot)
	copy(r[jrnRecOffReq:], raw)
	binary.LittleEndian.PutUint32(r[jrnRecOffRsp:], 0)
	r[jrnRecOffState] = jrnTaken
}

// setReqCons records how far the ring has been consumed.
func (j *journal) setReqCons(v uint32) { binary.LittleEndian.PutUint32(j.mem[jrnOffReqCons:], v) }

func (j *journal) reqCons() uint32 { return binary.LittleEndian.Uint32(j.mem[jrnOffReqCons:]) }

// answer records that slot's response went to ring index rsp.
func (j *journal) answer(slot int, rsp uint32) {
	r := j.record(slot)
	binary.LittleEndian.PutUint32(r[jrnRecOffRsp:], rsp)
	r[jrnRecOffState] = jrnAnswered
}

// unanswered returns the slots whose requests have no published response,
// given the ring's published rsp_prod.
func (j *journal) unanswered(slots int, rspProd uint32) []int {
	var out []int
	for i := 0; i < slots; i++ {
		r := j.record(i)
		switch r[jrnRecOffState] {
		case jrnTaken:
			out = append(out, i)
		case jrnAnswered:
			// Published when its response slot is below rsp_prod.
			if int32(rspProd-binary.LittleEndian.Uint32(r[jrnRecOffRsp:])) <= 0 {
				out = append(out, i)
			}
		}
	}
	return out
}

// request returns the journaled copy of slot's request.
func (j *journal) request(slot int) []byte { return j.record(slot)[jrnRecOffReq:] }

// close unmaps the journal; remove also deletes the file (the ring was shut
// down cleanly: nothing to replay).
func (j *journal) close(remove bool) error {
	err := j.unmap()
	if remove {
		if e := os.Remove(j.path); e != nil && err == nil {
			err = e
		}
	}
	return err
}
