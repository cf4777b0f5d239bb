//go:build linux

package blkback

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Block device ioctls from <linux/fs.h> (pinned by TestIoctlNumbers).
const (
	ioctlBLKSSZGET     = 0x1268     // _IO(0x12,104): logical block size, int
	ioctlBLKGETSIZE64  = 0x80081272 // _IOR(0x12,114,size_t): size in bytes, u64
	ioctlBLKDISCARD    = 0x1277     // _IO(0x12,119): u64[2]{start, len}
	ioctlBLKPBSZGET    = 0x127b     // _IO(0x12,123): physical block size, unsigned int
	ioctlBLKSECDISCARD = 0x127d     // _IO(0x12,125): u64[2]{start, len}
)

// maxIOV is the most buffers one transfer has: 256 indirect segments.
const maxIOV = MaxIndirectSegments

// ioScratch is the iovec array of one transfer.
type ioScratch struct {
	iov [maxIOV]unix.Iovec
}

// fileDisk is a raw file or a block device.
type fileDisk struct {
	path     string
	f        *os.File // O_DIRECT if direct
	buffered *os.File // same file without O_DIRECT, for transfers O_DIRECT refuses; nil if !direct
	direct   bool
	device   bool
	logical  uint32
	physical uint32
	discard  bool
	secure   bool
	gran     uint32
	size     atomic.Int64 // block devices: cached, refreshed by Size
	fallback atomic.Bool  // logged the first O_DIRECT refusal
}

// OpenBacking opens a raw file or block device, with O_DIRECT where the
// filesystem allows it (falling back, with a log line saying why).
func OpenBacking(path string, o OpenOptions) (Backing, error) {
	flags := unix.O_RDWR
	if o.ReadOnly {
		flags = unix.O_RDONLY
	}
	flags |= unix.O_CLOEXEC
	d := &fileDisk{path: path}
	var f *os.File
	var err error
	if !o.NoDirect {
		f, err = os.OpenFile(path, flags|unix.O_DIRECT, 0)
		if err == nil {
			d.direct = true
		} else if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			slog.Info("blkback: O_DIRECT refused, using buffered I/O", "path", path, "reason", err)
		} else {
			return nil, fmt.Errorf("%w: open %s: %w", ErrBacking, path, err)
		}
	}
	if f == nil {
		f, err = os.OpenFile(path, flags, 0)
		if err != nil {
			return nil, fmt.Errorf("%w: open %s: %w", ErrBacking, path, err)
		}
	}
	d.f = f
	if d.direct {
		if d.buffered, err = os.OpenFile(path, flags, 0); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: open %s: %w", ErrBacking, path, err)
		}
	}
	if err := d.probe(o); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *fileDisk) probe(o OpenOptions) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(d.f.Fd()), &st); err != nil {
		return fmt.Errorf("%w: stat %s: %w", ErrBacking, d.path, err)
	}
	fd := int(d.f.Fd())
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		d.device = true
		lbs, err := unix.IoctlGetInt(fd, ioctlBLKSSZGET)
		if err != nil {
			return fmt.Errorf("%w: BLKSSZGET %s: %w", ErrBacking, d.path, err)
		}
		pbs, err := unix.IoctlGetUint32(fd, ioctlBLKPBSZGET)
		if err != nil {
			pbs = uint32(lbs)
		}
		d.logical, d.physical = uint32(lbs), pbs
		if _, err := d.Size(); err != nil {
			return err
		}
		if !o.ReadOnly {
			// A zero-length discard fails with EOPNOTSUPP before anything
			// else when the device cannot do it (EINVAL or nothing at all
			// otherwise); sysfs says the same for plain discard.
			d.discard = sysfsUint(st.Rdev, "queue/discard_max_bytes") > 0 ||
				!errors.Is(d.ioctlDiscard(ioctlBLKDISCARD, 0, 0), unix.EOPNOTSUPP)
			d.secure = !errors.Is(d.ioctlDiscard(ioctlBLKSECDISCARD, 0, 0), unix.EOPNOTSUPP)
		}
		d.gran = d.physical
		if g := sysfsUint(st.Rdev, "queue/discard_granularity"); g >= uint64(d.logical) && g <= 1<<30 {
			d.gran = uint32(g)
		}
	case unix.S_IFREG:
		d.logical = SectorSize
		if o.LogicalBlock != 0 {
			d.logical = o.LogicalBlock
		}
		d.physical = d.logical
		if d.physical < uint32(st.Blksize) && st.Blksize <= 1<<16 {
			d.physical = uint32(st.Blksize)
		}
		if !o.ReadOnly {
			// Punching beyond the end of the file changes nothing, and tells
			// whether the filesystem can punch holes at all.
			d.discard = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, st.Size+1<<20, PageSize) == nil
		}
		d.gran = max(d.logical, uint32(st.Blksize))
	default:
		return fmt.Errorf("%w: %s is neither a regular file nor a block device", ErrBacking, d.path)
	}
	if d.logical < SectorSize || d.logical > PageSize || d.logical&(d.logical-1) != 0 {
		return fmt.Errorf("%w: %s: logical block size %d unsupported", ErrBacking, d.path, d.logical)
	}
	return nil
}

func sysfsUint(rdev uint64, attr string) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/%s", unix.Major(rdev), unix.Minor(rdev), attr))
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return v
}

func (d *fileDisk) Size() (int64, error) {
	if d.device {
		var n uint64
		_, _, e := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), ioctlBLKGETSIZE64, uintptr(unsafe.Pointer(&n)))
		if e != 0 {
			return 0, fmt.Errorf("%w: BLKGETSIZE64 %s: %w", ErrBacking, d.path, e)
		}
		d.size.Store(int64(n))
		return int64(n), nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(d.f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("%w: stat %s: %w", ErrBacking, d.path, err)
	}
	return st.Size, nil
}

func (d *fileDisk) LogicalBlockSize() uint32  { return d.logical }
func (d *fileDisk) PhysicalBlockSize() uint32 { return d.physical }
func (d *fileDisk) DiscardInfo() (bool, bool, uint32) {
	return d.discard, d.secure, d.gran
}
func (d *fileDisk) Inline() bool { return false }

func (d *fileDisk) ReadV(io *IO) error  { return d.transfer(io, unix.SYS_PREADV) }
func (d *fileDisk) WriteV(io *IO) error { return d.transfer(io, unix.SYS_PWRITEV) }

// transfer runs one preadv/pwritev over io.Bufs, finishing a short transfer
// buffer by buffer, and retries on the buffered descriptor what O_DIRECT
// refuses (EINVAL: alignment the filesystem will not take).
func (d *fileDisk) transfer(io *IO, nr uintptr) error {
	if len(io.Bufs) > maxIOV {
		return fmt.Errorf("%w: %d buffers in one transfer", ErrBacking, len(io.Bufs))
	}
	f := d.f
	err := d.vector(f, io, nr)
	if errors.Is(err, unix.EINVAL) && d.buffered != nil {
		if !d.fallback.Swap(true) {
			slog.Info("blkback: O_DIRECT refused a transfer, retrying buffered", "path", d.path, "off", io.Off, "reason", err)
		}
		err = d.vector(d.buffered, io, nr)
	}
	if err != nil {
		return fmt.Errorf("%w: %s at %d: %w", ErrBacking, d.path, io.Off, err)
	}
	return nil
}

func (d *fileDisk) vector(f *os.File, io *IO, nr uintptr) error {
	total := 0
	n := 0
	for _, b := range io.Bufs {
		if len(b) == 0 {
			continue
		}
		io.sys.iov[n].Base = &b[0]
		io.sys.iov[n].SetLen(len(b))
		n++
		total += len(b)
	}
	if n == 0 {
		return nil
	}
	var done int
	for {
		r, _, e := unix.Syscall6(nr, f.Fd(), uintptr(unsafe.Pointer(&io.sys.iov[0])), uintptr(n),
			uintptr(io.Off), uintptr(uint64(io.Off)>>32), 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		done = int(r)
		break
	}
	if done == total {
		return nil
	}
	return d.finish(f, io, nr, done)
}

// finish completes a short vectored transfer one buffer at a time.
func (d *fileDisk) finish(f *os.File, io *IO, nr uintptr, done int) error {
	off := io.Off
	for _, b := range io.Bufs {
		if done >= len(b) {
			done -= len(b)
			off += int64(len(b))
			continue
		}
		b = b[done:]
		off += int64(done)
		done = 0
		for len(b) > 0 {
			var k int
			var err error
			if nr == unix.SYS_PREADV {
				k, err = unix.Pread(int(f.Fd()), b, off)
				if err == nil && k == 0 {
					clear(b) // beyond the end of a file that shrank: zeroes
					k = len(b)
				}
			} else {
				k, err = unix.Pwrite(int(f.Fd()), b, off)
			}
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			b = b[k:]
			off += int64(k)
		}
	}
	return nil
}

func (d *fileDisk) Flush() error {
	if err := unix.Fdatasync(int(d.f.Fd())); err != nil {
		return fmt.Errorf("%w: fdatasync %s: %w", ErrBacking, d.path, err)
	}
	return nil
}

func (d *fileDisk) Discard(off, n int64, secure bool) error {
	if n == 0 {
		return nil
	}
	var err error
	switch {
	case d.device && secure:
		err = d.ioctlDiscard(ioctlBLKSECDISCARD, uint64(off), uint64(n))
	case d.device:
		err = d.ioctlDiscard(ioctlBLKDISCARD, uint64(off), uint64(n))
	case secure:
		err = unix.EOPNOTSUPP
	default:
		err = unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}
	if err != nil {
		return fmt.Errorf("%w: discard %s [%d,+%d): %w", ErrBacking, d.path, off, n, err)
	}
	return nil
}

func (d *fileDisk) ioctlDiscard(req uintptr, off, n uint64) error {
	r := [2]uint64{off, n}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), req, uintptr(unsafe.Pointer(&r)))
	if e != 0 {
		return e
	}
	return nil
}

func (d *fileDisk) Close() error {
	var err error
	if d.buffered != nil {
		err = d.buffered.Close()
	}
	if e := d.f.Close(); e != nil && err == nil {
		err = e
	}
	return err
}

// allocPages returns n zeroed, page-aligned pages (O_DIRECT-safe bounce
// memory) and the function that frees them.
func allocPages(n int) ([]byte, func() error, error) {
	b, err := unix.Mmap(-1, 0, n*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, fmt.Errorf("blkback: bounce pages: %w", err)
	}
	return b, func() error { return unix.Munmap(b) }, nil
}

// mapFile maps size bytes of the file at path (created, and grown to size,
// as needed) shared, for the crash-only journal: the pages outlive the
// process.
func mapFile(path string, size int) ([]byte, func() error, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	if err := f.Truncate(int64(size)); err != nil {
		return nil, nil, err
	}
	b, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return b, func() error { return unix.Munmap(b) }, nil
}
