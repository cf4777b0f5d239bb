//go:build linux

package grant

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// simChunkPages is how many pages the simulator's memfd grows by; each chunk
// is also mapped once read-write for the simulator's own copies.
const simChunkPages = 256

// simMem is the simulator's physical memory: one memfd whose pages are
// handed to domains, plus a direct map of it in chunks.
type simMem struct {
	fd     int
	chunks [][]byte
}

func (m *simMem) pages() int { return len(m.chunks) * simChunkPages }

// grow adds a chunk of zeroed pages.
func (m *simMem) grow() error {
	if m.fd == 0 {
		fd, err := unix.MemfdCreate("drvdom-grant-sim", unix.MFD_CLOEXEC)
		if err != nil {
			return fmt.Errorf("grant sim: memfd_create: %w", err)
		}
		m.fd = fd
	}
	off := int64(m.pages()) * PageSize
	size := int64(simChunkPages) * PageSize
	if err := unix.Ftruncate(m.fd, off+size); err != nil {
		return fmt.Errorf("grant sim: grow memfd to %d bytes: %w", off+size, err)
	}
	b, err := unix.Mmap(m.fd, off, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("grant sim: map memfd chunk at %d: %w", off, err)
	}
	m.chunks = append(m.chunks, b)
	return nil
}

// close unmaps the direct map and closes the memfd; regions mapped from it
// stay valid.
func (m *simMem) close() error {
	var first error
	for _, c := range m.chunks {
		if err := unix.Munmap(c); err != nil && first == nil {
			first = err
		}
	}
	m.chunks = nil
	if m.fd != 0 {
		if err := unix.Close(m.fd); err != nil && first == nil {
			first = err
		}
		m.fd = 0
	}
	if first != nil {
		return fmt.Errorf("grant sim: close: %w", first)
	}
	return nil
}

// page returns the direct-map bytes of page idx.
func (m *simMem) page(idx int) []byte {
	c := m.chunks[idx/simChunkPages]
	o := (idx % simChunkPages) * PageSize
	return c[o : o+PageSize : o+PageSize]
}

// mapPages maps the memfd pages idx, in order, into one fresh contiguous
// region: read-only mappings are PROT_READ, so a write faults as it would on
// a read-only grant map.
func (m *simMem) mapPages(idx []int, writable bool) ([]byte, error) {
	n := uintptr(len(idx)) * PageSize
	base, err := unix.MmapPtr(-1, 0, nil, n, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("grant sim: reserve %d pages: %w", len(idx), err)
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	for i, p := range idx {
		at := unsafe.Add(base, uintptr(i)*PageSize)
		if _, err := unix.MmapPtr(m.fd, int64(p)*PageSize, at, PageSize, prot, unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
			_ = unix.MunmapPtr(base, n)
			return nil, fmt.Errorf("grant sim: map page %d: %w", p, err)
		}
	}
	return unsafe.Slice((*byte)(base), n), nil
}

// unmapRegion releases a region made by mapPages.
func unmapRegion(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)))
}

// scrubRegion replaces a region's pages by private anonymous memory with the
// same protection: code of a destroyed domain still holding the slice can no
// longer reach the pages it had mapped or shared, and does not fault either.
func scrubRegion(b []byte, writable bool) error {
	if len(b) == 0 {
		return nil
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	_, err := unix.MmapPtr(-1, 0, unsafe.Pointer(unsafe.SliceData(b)), uintptr(len(b)), prot,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED)
	return err
}
