//go:build !linux

package blkback

import "fmt"

type ioScratch struct{}

// OpenBacking is only implemented on Linux.
func OpenBacking(path string, o OpenOptions) (Backing, error) {
	return nil, fmt.Errorf("%w: %s: files and block devices are only served on Linux", ErrBacking, path)
}

func allocPages(n int) ([]byte, func() error, error) {
	return make([]byte, n*PageSize), func() error { return nil }, nil
}

func newURingExec(dev *Device, queues []*queue, slots []*slot) (executor, error) {
	return nil, fmt.Errorf("io_uring is Linux only")
}

func preferURing(Backing) bool { return false }

func newRingLoops(dev *Device, queues []*queue) ([]ringRunner, error) {
	return nil, fmt.Errorf("io_uring is Linux only")
}

func mapFile(path string, size int) ([]byte, func() error, error) {
	return nil, nil, fmt.Errorf("the journal needs Linux")
}
