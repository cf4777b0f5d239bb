package blkback

// OpenWithIOLimits opens like OpenTarget and gives a file backing the
// queue limits of a block device, so the simulator drives io_uring's
// split (ioLimits) without one.
func OpenWithIOLimits(maxBytes, maxSegs int, boundary uint64) func(string, OpenOptions) (Backing, error) {
	return func(params string, o OpenOptions) (Backing, error) {
		b, err := OpenTarget(params, o)
		if err != nil {
			return nil, err
		}
		if d, ok := b.(*fileDisk); ok {
			d.limits = ioLimits{maxBytes: maxBytes, maxSegs: maxSegs, boundary: boundary}
		}
		return b, nil
	}
}
