package grant

import (
	"encoding/binary"
	"fmt"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"drvdom/evtchn"
)

// ioctl numbers of include/uapi/xen/gntalloc.h: _IOC(_IOC_NONE, 'G', nr, size).
const (
	ioctlGntallocAllocGref      = 0x00184705 // nr 5, sizeof(struct ioctl_gntalloc_alloc_gref) = 24
	ioctlGntallocDeallocGref    = 0x00104706 // nr 6, sizeof(struct ioctl_gntalloc_dealloc_gref) = 16
	ioctlGntallocSetUnmapNotify = 0x00104707 // nr 7, sizeof(struct ioctl_gntalloc_unmap_notify) = 16
)

// struct ioctl_gntalloc_alloc_gref { u16 domid; u16 flags; u32 count; u64 index; u32 gref_ids[1]; }
const (
	gntallocAllocDomid = 0
	gntallocAllocFlags = 2
	gntallocAllocCount = 4
	gntallocAllocIndex = 8
	gntallocAllocRefs  = 16
	gntallocAllocSize  = 24 // with one gref_id, padded to 8

	gntallocFlagWritable = 1 // GNTALLOC_FLAG_WRITABLE
)

// struct ioctl_gntalloc_dealloc_gref { u64 index; u32 count; }
const (
	gntallocDeallocIndex = 0
	gntallocDeallocCount = 8
	gntallocDeallocSize  = 16
)

type gntalloc struct{ dev *devFD }

// OpenGntalloc opens /dev/xen/gntalloc.
func OpenGntalloc() (Sharer, error) {
	d, err := openDev(GntallocPath)
	if err != nil {
		return nil, err
	}
	return &gntalloc{dev: d}, nil
}

// Share allocates and grants pages (IOCTL_GNTALLOC_ALLOC_GREF) and maps
// them read-write at the returned index.
func (a *gntalloc) Share(remote uint16, pages int, writable bool) (Share, error) {
	if pages <= 0 || pages > maxSharePages {
		return nil, fmt.Errorf("grant: share %d pages: %w", pages, syscall.EINVAL)
	}
	b := make([]byte, max(gntallocAllocSize, gntallocAllocRefs+4*pages))
	le := binary.LittleEndian
	le.PutUint16(b[gntallocAllocDomid:], remote)
	if writable {
		le.PutUint16(b[gntallocAllocFlags:], gntallocFlagWritable)
	}
	le.PutUint32(b[gntallocAllocCount:], uint32(pages))
	if _, err := a.dev.ioctl(ioctlGntallocAllocGref, unsafe.Pointer(&b[0])); err != nil {
		return nil, fmt.Errorf("grant: share %d pages with d%d: %w", pages, remote, err)
	}
	index := le.Uint64(b[gntallocAllocIndex:])
	refs := make([]Ref, pages)
	for i := range refs {
		refs[i] = Ref(le.Uint32(b[gntallocAllocRefs+4*i:]))
	}
	sh := &gntallocShare{a: a, index: index, refs: refs}
	mem, err := a.dev.mmap(index, pages, unix.PROT_READ|unix.PROT_WRITE)
	if err != nil {
		_ = sh.dealloc()
		return nil, fmt.Errorf("grant: map %d shared pages: %w", pages, err)
	}
	sh.mem = mem
	return sh, nil
}

func (a *gntalloc) Close() error { return a.dev.close() }

type gntallocShare struct {
	a     *gntalloc
	mu    sync.Mutex
	mem   []byte
	index uint64
	refs  []Ref
	done  bool
}

func (s *gntallocShare) Refs() []Ref   { return s.refs }
func (s *gntallocShare) Bytes() []byte { return s.mem }

func (s *gntallocShare) dealloc() error {
	var b [gntallocDeallocSize]byte
	binary.LittleEndian.PutUint64(b[gntallocDeallocIndex:], s.index)
	binary.LittleEndian.PutUint32(b[gntallocDeallocCount:], uint32(len(s.refs)))
	_, err := s.a.dev.ioctl(ioctlGntallocDeallocGref, unsafe.Pointer(&b[0]))
	return err
}

// Close unmaps and deallocates; the kernel ends foreign access once no
// other domain has the pages mapped.
func (s *gntallocShare) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return ErrClosed
	}
	s.done = true
	if err := unix.Munmap(s.mem); err != nil {
		return fmt.Errorf("grant: munmap gntalloc index %#x: %w", s.index, err)
	}
	if err := s.dealloc(); err != nil && err != ErrClosed {
		return fmt.Errorf("grant: dealloc gntalloc index %#x: %w", s.index, err)
	}
	return nil
}

func (s *gntallocShare) SetUnmapNotify(offset uint32, action UnmapAction, port evtchn.Port) error {
	return s.a.dev.setUnmapNotify(ioctlGntallocSetUnmapNotify, s.index, len(s.refs)*PageSize, offset, action, port)
}
