package blkback

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Backing is what a virtual disk is served from: a raw file, a block device
// (OpenBacking) or the null disk (NewNullDisk). Methods other than Close are
// safe for concurrent use.
type Backing interface {
	// Size returns the current size in bytes (it may grow: online resize).
	Size() (int64, error)
	// LogicalBlockSize is the smallest unit of I/O in bytes (sector-size).
	LogicalBlockSize() uint32
	// PhysicalBlockSize is physical-sector-size.
	PhysicalBlockSize() uint32
	// Discard reports discard support: whether discards work at all, whether
	// secure discards do, and the granularity in bytes.
	DiscardInfo() (ok, secure bool, granularity uint32)
	// ReadV fills io.Bufs, in order, from byte offset io.Off.
	ReadV(io *IO) error
	// WriteV writes io.Bufs, in order, at byte offset io.Off.
	WriteV(io *IO) error
	// Flush makes completed writes durable (fdatasync).
	Flush() error
	// Discard deallocates [off, off+n).
	Discard(off, n int64, secure bool) error
	// Inline reports that I/O completes at once and should run on the
	// ring's goroutine instead of a worker (the null disk).
	Inline() bool
	Close() error
}

// IO is one vectored transfer. It carries per-platform scratch space so a
// transfer allocates nothing; reuse one IO per in-flight request.
type IO struct {
	Bufs [][]byte
	Off  int64
	sys  ioScratch
}

// ErrBacking wraps failures to open or use a backing.
var ErrBacking = errors.New("blkback: backing")

// OpenOptions tune OpenBacking.
type OpenOptions struct {
	ReadOnly bool
	// NoDirect disables O_DIRECT.
	NoDirect bool
	// LogicalBlock overrides a regular file's logical block size (default
	// 512); block devices report their own.
	LogicalBlock uint32
}

// OpenTarget opens what the backend's params key names: "null:<bytes>" is
// the null disk (for benchmarks), anything else a path (file or block
// device) for OpenBacking.
func OpenTarget(params string, o OpenOptions) (Backing, error) {
	if rest, ok := strings.CutPrefix(params, "null:"); ok {
		n, err := strconv.ParseInt(rest, 0, 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%w: null disk size %q", ErrBacking, rest)
		}
		return NewNullDisk(n, o.LogicalBlock), nil
	}
	return OpenBacking(params, o)
}

// NullDisk is a disk of a fixed size whose writes go nowhere and whose reads
// leave the buffers as they are (like Linux's null_blk): for benchmarks of
// the protocol path.
type NullDisk struct {
	size  int64
	block uint32
}

// NewNullDisk returns a null disk of size bytes and the given logical block
// size (512 if 0).
func NewNullDisk(size int64, block uint32) *NullDisk {
	if block == 0 {
		block = SectorSize
	}
	return &NullDisk{size: size, block: block}
}

func (d *NullDisk) Size() (int64, error)                    { return d.size, nil }
func (d *NullDisk) LogicalBlockSize() uint32                { return d.block }
func (d *NullDisk) PhysicalBlockSize() uint32               { return d.block }
func (d *NullDisk) DiscardInfo() (bool, bool, uint32)       { return true, true, d.block }
func (d *NullDisk) ReadV(*IO) error                         { return nil }
func (d *NullDisk) WriteV(*IO) error                        { return nil }
func (d *NullDisk) Flush() error                            { return nil }
func (d *NullDisk) Discard(off, n int64, secure bool) error { return nil }
func (d *NullDisk) Inline() bool                            { return true }
func (d *NullDisk) Close() error                            { return nil }
