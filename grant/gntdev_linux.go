package grant

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"drvdom/evtchn"
)

// ioctl numbers of include/uapi/xen/gntdev.h: _IOC(_IOC_NONE, 'G', nr, size).
const (
	ioctlGntdevMapGrantRef    = 0x00184700 // nr 0, sizeof(struct ioctl_gntdev_map_grant_ref) = 24
	ioctlGntdevUnmapGrantRef  = 0x00104701 // nr 1, sizeof(struct ioctl_gntdev_unmap_grant_ref) = 16
	ioctlGntdevSetUnmapNotify = 0x00104707 // nr 7, sizeof(struct ioctl_gntdev_unmap_notify) = 16
	ioctlGntdevGrantCopy      = 0x00104708 // nr 8, sizeof(struct ioctl_gntdev_grant_copy) = 16
)

// struct ioctl_gntdev_grant_ref { u32 domid; u32 ref; }
const (
	gntdevGrantRefDomid = 0
	gntdevGrantRefRef   = 4
	gntdevGrantRefSize  = 8
)

// struct ioctl_gntdev_map_grant_ref { u32 count; u32 pad; u64 index; struct ioctl_gntdev_grant_ref refs[1]; }
const (
	gntdevMapCount = 0
	gntdevMapIndex = 8
	gntdevMapRefs  = 16
	gntdevMapSize  = 24 // with one ref; the device reads count refs from gntdevMapRefs
)

// struct ioctl_gntdev_unmap_grant_ref { u64 index; u32 count; u32 pad; }
const (
	gntdevUnmapIndex = 0
	gntdevUnmapCount = 8
	gntdevUnmapSize  = 16
)

// struct ioctl_gntdev_unmap_notify (and ioctl_gntalloc_unmap_notify):
// { u64 index; u32 action; u32 event_channel_port; }
const (
	unmapNotifyIndex  = 0
	unmapNotifyAction = 8
	unmapNotifyPort   = 12
	unmapNotifySize   = 16
)

// struct gntdev_grant_copy_segment { union { void *virt; struct { u32 ref;
// u16 offset; u16 domid; } foreign; } source, dest; u16 len; u16 flags; s16 status; }
const (
	copySegSource     = 0
	copySegDest       = 8
	copySegLen        = 16
	copySegFlags      = 18
	copySegStatus     = 20
	copySegSize       = 24
	copyForeignRef    = 0 // within source/dest
	copyForeignOffset = 4
	copyForeignDomid  = 6

	gntcopySourceGref = 1 << 0 // GNTCOPY_source_gref
	gntcopyDestGref   = 1 << 1 // GNTCOPY_dest_gref
)

// struct ioctl_gntdev_grant_copy { unsigned int count; struct gntdev_grant_copy_segment *segments; }
const (
	gntdevCopyCount    = 0
	gntdevCopySegments = 8
	gntdevCopySize     = 16
)

// ioctl issues one ioctl whose argument is the buffer at arg.
func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return r, e
	}
	return r, nil
}

// devFD is an open device shared by its handle and the mappings made
// through it: ioctls hold mu for reading, Close for writing.
type devFD struct {
	mu     sync.RWMutex
	fd     int
	closed bool
}

func openDev(path string) (*devFD, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("grant: open %s: %w", path, err)
	}
	return &devFD{fd: fd}, nil
}

// ioctl runs an ioctl unless the device was closed.
func (d *devFD) ioctl(req uintptr, arg unsafe.Pointer) (uintptr, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return 0, ErrClosed
	}
	return ioctl(d.fd, req, arg)
}

// rawIoctl is ioctl entered with RawSyscall, for the data path's grant
// copy: it pins the pages and makes its hypercalls without sleeping, but
// under emulation it often outlasts the 20 µs after which Go's runtime
// hands the calling goroutine's P to another thread (futex wake-ups and
// thread switches for nothing on a one-vCPU driver domain).
func (d *devFD) rawIoctl(req uintptr, arg unsafe.Pointer) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return ErrClosed
	}
	if _, _, e := unix.RawSyscall(unix.SYS_IOCTL, uintptr(d.fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

func (d *devFD) mmap(index uint64, pages int, prot int) ([]byte, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return nil, ErrClosed
	}
	return unix.Mmap(d.fd, int64(index), pages*PageSize, prot, unix.MAP_SHARED)
}

func (d *devFD) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.closed = true
	return unix.Close(d.fd)
}

// setUnmapNotify is IOCTL_GNTDEV_SET_UNMAP_NOTIFY / IOCTL_GNTALLOC_SET_UNMAP_NOTIFY
// (same number and layout) for the byte at index+offset.
func (d *devFD) setUnmapNotify(req uintptr, index uint64, size int, offset uint32, action UnmapAction, port evtchn.Port) error {
	if int64(offset) >= int64(size) {
		return fmt.Errorf("grant: unmap notify offset %d of %d bytes: %w", offset, size, syscall.EINVAL)
	}
	var b [unmapNotifySize]byte
	binary.LittleEndian.PutUint64(b[unmapNotifyIndex:], index+uint64(offset))
	binary.LittleEndian.PutUint32(b[unmapNotifyAction:], uint32(action))
	binary.LittleEndian.PutUint32(b[unmapNotifyPort:], uint32(port))
	if _, err := d.ioctl(req, unsafe.Pointer(&b[0])); err != nil {
		return fmt.Errorf("grant: set unmap notify: %w", err)
	}
	return nil
}

// gntdev is a Mapper on /dev/xen/gntdev.
type gntdev struct {
	dev     *devFD
	scratch sync.Pool // *copyScratch
}

// copyScratch is the kernel-format batch of one Copy, reused across calls.
type copyScratch struct {
	hdr    [gntdevCopySize]byte
	segs   []byte // copySegSize per submitted segment
	index  []int  // submitted segment -> caller's segment
	pinner runtime.Pinner
}

// OpenGntdev opens /dev/xen/gntdev.
func OpenGntdev() (Mapper, error) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		return nil, fmt.Errorf("grant: gntdev layouts here are for 64-bit kernels: %w", syscall.ENOTSUP)
	}
	d, err := openDev(GntdevPath)
	if err != nil {
		return nil, err
	}
	return &gntdev{dev: d}, nil
}

// Map inserts the refs (IOCTL_GNTDEV_MAP_GRANT_REF) and maps them with one
// mmap at the returned index; the hypervisor map happens in mmap, which
// fails with EINVAL if any grant is refused.
func (g *gntdev) Map(dom uint16, refs []Ref, writable bool) (Mapping, error) {
	if len(refs) == 0 || len(refs) > maxSharePages {
		return nil, fmt.Errorf("grant: map %d refs of d%d: %w", len(refs), dom, syscall.EINVAL)
	}
	b := make([]byte, gntdevMapRefs+gntdevGrantRefSize*len(refs))
	binary.LittleEndian.PutUint32(b[gntdevMapCount:], uint32(len(refs)))
	for i, r := range refs {
		e := b[gntdevMapRefs+i*gntdevGrantRefSize:]
		binary.LittleEndian.PutUint32(e[gntdevGrantRefDomid:], uint32(dom))
		binary.LittleEndian.PutUint32(e[gntdevGrantRefRef:], uint32(r))
	}
	if _, err := g.dev.ioctl(ioctlGntdevMapGrantRef, unsafe.Pointer(&b[0])); err != nil {
		return nil, fmt.Errorf("grant: map %d refs of d%d: %w", len(refs), dom, err)
	}
	index := binary.LittleEndian.Uint64(b[gntdevMapIndex:])
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	mem, err := g.dev.mmap(index, len(refs), prot)
	if err != nil {
		_ = g.unmapIndex(index, len(refs))
		return nil, fmt.Errorf("grant: map %d refs of d%d (first %d): %w", len(refs), dom, refs[0], err)
	}
	return &gntdevMapping{g: g, mem: mem, index: index, count: len(refs)}, nil
}

func (g *gntdev) unmapIndex(index uint64, count int) error {
	var b [gntdevUnmapSize]byte
	binary.LittleEndian.PutUint64(b[gntdevUnmapIndex:], index)
	binary.LittleEndian.PutUint32(b[gntdevUnmapCount:], uint32(count))
	_, err := g.dev.ioctl(ioctlGntdevUnmapGrantRef, unsafe.Pointer(&b[0]))
	return err
}

// Copy validates each segment's shape itself (gntdev would fail the whole
// batch with EINVAL), giving bad ones GNTST_bad_copy_arg, and submits the
// rest in one IOCTL_GNTDEV_GRANT_COPY with the Local buffers pinned. Its
// scratch is pooled: a batch allocates nothing, except that
// runtime.Pinner allocates once for a batch with more than five Go-heap
// Local buffers.
func (g *gntdev) Copy(segs []CopySeg) error {
	sc, _ := g.scratch.Get().(*copyScratch)
	if sc == nil {
		sc = new(copyScratch)
	}
	defer g.scratch.Put(sc)
	defer sc.pinner.Unpin()
	n := sc.encode(segs)
	if n == 0 {
		return nil
	}
	err := g.dev.rawIoctl(ioctlGntdevGrantCopy, unsafe.Pointer(&sc.hdr[0]))
	runtime.KeepAlive(sc)
	if err != nil {
		return fmt.Errorf("grant: copy %d segments: %w", n, err)
	}
	sc.decode(segs)
	return nil
}

// encode checks every segment, sets the status of those not submitted
// (bad shape: GNTST_bad_copy_arg; empty: okay), writes the others in the
// kernel's format with their Local buffers pinned, fills the ioctl header
// and returns how many it submits.
func (sc *copyScratch) encode(segs []CopySeg) int {
	if cap(sc.segs) < len(segs)*copySegSize {
		sc.segs = make([]byte, len(segs)*copySegSize)
		sc.index = make([]int, 0, len(segs))
	}
	sc.index = sc.index[:0]
	le := binary.LittleEndian
	n := 0
	for i := range segs {
		sg := &segs[i]
		if st := checkSeg(sg); st != StatusOkay || sg.Len == 0 {
			sg.Status = int16(st)
			continue
		}
		e := sc.segs[n*copySegSize : (n+1)*copySegSize]
		var flags uint16
		if sc.put(e[copySegSource:copySegDest], &sg.Src) {
			flags |= gntcopySourceGref
		}
		if sc.put(e[copySegDest:copySegLen], &sg.Dst) {
			flags |= gntcopyDestGref
		}
		le.PutUint16(e[copySegLen:], sg.Len)
		le.PutUint16(e[copySegFlags:], flags)
		le.PutUint16(e[copySegStatus:], 0)
		sc.index = append(sc.index, i)
		n++
	}
	le.PutUint32(sc.hdr[gntdevCopyCount:], uint32(n))
	le.PutUint64(sc.hdr[gntdevCopySegments:], uint64(uintptr(unsafe.Pointer(unsafe.SliceData(sc.segs)))))
	return n
}

// decode copies the kernel's per-segment statuses back to the caller's segments.
func (sc *copyScratch) decode(segs []CopySeg) {
	for k, i := range sc.index {
		segs[i].Status = int16(binary.LittleEndian.Uint16(sc.segs[k*copySegSize+copySegStatus:]))
	}
}

// put encodes one side into the 8-byte union and reports whether it is a grant.
func (sc *copyScratch) put(u []byte, p *CopyPtr) bool {
	if p.Local != nil {
		ptr := unsafe.Pointer(unsafe.SliceData(p.Local))
		sc.pinner.Pin(ptr)
		binary.LittleEndian.PutUint64(u, uint64(uintptr(ptr)))
		return false
	}
	binary.LittleEndian.PutUint32(u[copyForeignRef:], uint32(p.Ref))
	binary.LittleEndian.PutUint16(u[copyForeignOffset:], p.Offset)
	binary.LittleEndian.PutUint16(u[copyForeignDomid:], p.Dom)
	return true
}

func (g *gntdev) Close() error { return g.dev.close() }

type gntdevMapping struct {
	g     *gntdev
	mu    sync.Mutex
	mem   []byte
	index uint64
	count int
}

func (m *gntdevMapping) Bytes() []byte { return m.mem }

// Unmap munmaps, then removes the grants from gntdev (the order gntdev.h
// requires). After the device was closed only the munmap is needed.
func (m *gntdevMapping) Unmap() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mem == nil {
		return ErrClosed
	}
	if err := unix.Munmap(m.mem); err != nil {
		return fmt.Errorf("grant: munmap gntdev index %#x: %w", m.index, err)
	}
	m.mem = nil
	if err := m.g.unmapIndex(m.index, m.count); err != nil && err != ErrClosed {
		return fmt.Errorf("grant: unmap gntdev index %#x: %w", m.index, err)
	}
	return nil
}

func (m *gntdevMapping) SetUnmapNotify(offset uint32, action UnmapAction, port evtchn.Port) error {
	return m.g.dev.setUnmapNotify(ioctlGntdevSetUnmapNotify, m.index, m.count*PageSize, offset, action, port)
}
