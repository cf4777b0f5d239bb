package blkback

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"

	"drvdom/internal/journal"
)

// The crash-only journal of one ring (DESIGN.md, "Crash-only backends"),
// kept by internal/journal in a memory file in the driver domain's tmpfs
// (Driver.JournalDir): every request taken off the ring and not yet
// answered in a published response, as a copy, with the response slot it
// was given once answered, and the ring's private req_cons. A process that
// dies keeps its journal; the next one resumes the ring at the journal's
// req_cons and rsp_prod_pvt = the shared rsp_prod, and serves again, from
// their journaled copies, exactly the requests without a published
// response (re-executing a block request is idempotent for the frontend,
// which owns its pages until it sees the response). Out-of-order completion
// stays allowed: nothing is ever reread from a slot a response may have
// overwritten.
//
// The queue calls the journal under its lock: Taken in the batch copy loop
// (before any response can reuse the request's slot), Answered where the
// response is written, Published after every push.

// journalIdentity names the ring a journal belongs to; a journal of another
// ring (a guest that rebooted while no backend ran) is reset, not replayed.
type journalIdentity struct {
	size, entry, ringRef, port uint32
}

func (id journalIdentity) key() uint64 {
	var b [16]byte
	le := binary.LittleEndian
	le.PutUint32(b[0:], id.size)
	le.PutUint32(b[4:], id.entry)
	le.PutUint32(b[8:], id.ringRef)
	le.PutUint32(b[12:], id.port)
	h := fnv.New64a()
	h.Write(b[:])
	return h.Sum64()
}

// openJournal opens (creating, or reformatting one that is corrupt or of
// another geometry) the journal file of a ring.
func openJournal(dir, name string, ringSize, entrySize int) (*journal.Journal, string, error) {
	p := filepath.Join(dir, name)
	j, err := journal.Open(p, ringSize, entrySize)
	if errors.Is(err, journal.ErrCorrupt) {
		if rerr := os.Remove(p); rerr != nil {
			return nil, p, fmt.Errorf("blkback: %w (and removing it: %v)", err, rerr)
		}
		j, err = journal.Open(p, ringSize, entrySize)
	}
	if err != nil {
		return nil, p, fmt.Errorf("blkback: %w", err)
	}
	return j, p, nil
}
