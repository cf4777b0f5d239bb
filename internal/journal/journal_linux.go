package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DefaultDir is where drvdomd keeps its journals: tmpfs in the driver
// domain, so they survive the backend process but not the domain.
const DefaultDir = "/run/drvdom/journal"

// Open maps the journal file at path (MAP_SHARED, so every store is in the
// file the moment it is made and survives the process), creating and
// formatting it if it does not exist. A file of another geometry is
// reformatted (it described a ring that is gone); a corrupt one is refused
// with ErrCorrupt.
func Open(path string, ringSize, entrySize int) (*Journal, error) {
	if err := geometryOK(ringSize, entrySize); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	defer f.Close() // the mapping keeps the file
	size := Size(ringSize, entrySize)
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	if st.Size() != int64(size) {
		// A new file, or one for a ring of another geometry: start empty.
		if err := f.Truncate(0); err != nil {
			return nil, fmt.Errorf("journal %s: %w", path, err)
		}
		if err := f.Truncate(int64(size)); err != nil {
			return nil, fmt.Errorf("journal %s: %w", path, err)
		}
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("journal %s: mmap: %w", path, err)
	}
	j, err := New(mem, ringSize, entrySize)
	if errors.Is(err, ErrMismatch) {
		clear(mem) // same size, other geometry
		j, err = New(mem, ringSize, entrySize)
	}
	if err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	j.unmap = func() error { return unix.Munmap(mem) }
	return j, nil
}
