//go:build !linux

package grant

import "errors"

var errSimUnsupported = errors.New("grant sim: needs Linux (memfd shared memory)")

type simMem struct{}

func (m *simMem) pages() int                                        { return 0 }
func (m *simMem) close() error                                      { return nil }
func (m *simMem) grow() error                                       { return errSimUnsupported }
func (m *simMem) page(int) []byte                                   { return nil }
func (m *simMem) mapPages(idx []int, writable bool) ([]byte, error) { return nil, errSimUnsupported }
func unmapRegion([]byte) error                                      { return nil }
func scrubRegion([]byte, bool) error                                { return nil }
