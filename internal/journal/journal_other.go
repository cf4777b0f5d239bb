//go:build !linux

package journal

import "errors"

// DefaultDir is where drvdomd keeps its journals.
const DefaultDir = "/run/drvdom/journal"

// Open needs Linux's mmap.
func Open(path string, ringSize, entrySize int) (*Journal, error) {
	return nil, errors.New("journal: file journals need Linux")
}
