package blkback

// Geometry is what validation needs to know about the device.
type Geometry struct {
	// Sectors is the device size in 512-byte sectors.
	Sectors uint64
	// LogicalBlock is the logical block size in bytes (512 or a power of two
	// up to 4096); every transfer must cover whole logical blocks.
	LogicalBlock uint32
	ReadOnly     bool
	// Discard and SecureDiscard say which discards the backing supports.
	Discard       bool
	SecureDiscard bool
}

// RequestError is why a request was refused, with the status its response
// carries. The values below are preallocated: refusing a flood of bad
// requests allocates nothing.
type RequestError struct {
	Status int16
	Reason string
}

func (e *RequestError) Error() string { return "blkback: bad request: " + e.Reason }

// Reasons a request is refused.
var (
	ErrUnknownOp       = &RequestError{StatusEOPNOTSUPP, "unknown operation"}
	ErrBadIndirectOp   = &RequestError{StatusError, "indirect_op is neither read nor write"}
	ErrNrSegments      = &RequestError{StatusError, "segment count out of range"}
	ErrSegmentSectors  = &RequestError{StatusError, "segment first_sect/last_sect out of range"}
	ErrMisaligned      = &RequestError{StatusError, "transfer not aligned to the logical block size"}
	ErrOutOfRange      = &RequestError{StatusError, "sector range beyond the end of the device"}
	ErrReadOnly        = &RequestError{StatusError, "write to a read-only device"}
	ErrNoDiscard       = &RequestError{StatusEOPNOTSUPP, "discard not supported"}
	ErrNoSecureDiscard = &RequestError{StatusEOPNOTSUPP, "secure discard not supported"}
	ErrBadGrant        = &RequestError{StatusError, "grant could not be mapped or copied"}
	ErrIO              = &RequestError{StatusError, "I/O error on the backing"}
)

// StatusOf returns the response status for err: 0 for nil, the
// RequestError's status, StatusError for anything else.
func StatusOf(err error) int16 {
	if err == nil {
		return StatusOkay
	}
	if re, ok := err.(*RequestError); ok {
		return re.Status
	}
	return StatusError
}

func isWrite(op uint8) bool {
	return op == OpWrite || op == OpWriteBarrier || op == OpFlushDiskcache
}

// ValidateHeader checks everything about a request that does not need its
// segments: the operation, the segment count, read-only mode and, for
// discard, the range. It runs before indirect pages are touched.
func ValidateHeader(r *Request, g *Geometry) error {
	switch r.Operation {
	case OpRead, OpWrite:
		if r.NrSegments < 1 || r.NrSegments > MaxSegmentsPerRequest {
			return ErrNrSegments
		}
	case OpWriteBarrier, OpFlushDiskcache:
		if r.NrSegments > MaxSegmentsPerRequest {
			return ErrNrSegments
		}
	case OpIndirect:
		if r.IndirectOp != OpRead && r.IndirectOp != OpWrite {
			return ErrBadIndirectOp
		}
		if r.NrSegments < 1 || r.NrSegments > MaxIndirectSegments {
			return ErrNrSegments
		}
	case OpDiscard:
		if !g.Discard {
			return ErrNoDiscard
		}
		if r.Flag&DiscardSecure != 0 && !g.SecureDiscard {
			return ErrNoSecureDiscard
		}
		if g.ReadOnly {
			return ErrReadOnly
		}
		if err := checkRange(r.Sector, r.NrSectors, g); err != nil {
			return err
		}
		return nil
	default:
		return ErrUnknownOp
	}
	if isWrite(r.Op()) && g.ReadOnly {
		return ErrReadOnly
	}
	return nil
}

// ValidateSegments checks the segments of a validated read/write/flush
// request (the direct ones or those copied out of the indirect pages) and
// returns the total transfer in 512-byte sectors.
func ValidateSegments(r *Request, segs []Segment, g *Geometry) (uint64, error) {
	k := uint8(g.LogicalBlock / SectorSize)
	if k == 0 {
		k = 1
	}
	if len(segs) == 0 {
		return 0, nil // a pure flush or barrier: sector_number is ignored
	}
	var total uint64
	for i := range segs {
		s := segs[i]
		if s.LastSect >= SectorsPerPage || s.FirstSect > s.LastSect {
			return 0, ErrSegmentSectors
		}
		if s.FirstSect%k != 0 || (s.LastSect+1)%k != 0 {
			return 0, ErrMisaligned
		}
		total += uint64(s.Sectors())
	}
	if err := checkRange(r.Sector, total, g); err != nil {
		return 0, err
	}
	return total, nil
}

// checkRange checks [sector, sector+n) against the device and the logical
// block alignment.
func checkRange(sector, n uint64, g *Geometry) error {
	k := uint64(g.LogicalBlock / SectorSize)
	if k > 1 && (sector%k != 0 || n%k != 0) {
		return ErrMisaligned
	}
	end := sector + n
	if end < sector || end > g.Sectors {
		return ErrOutOfRange
	}
	return nil
}
