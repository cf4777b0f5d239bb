package blkback

// ioLimits is what one transfer may be for the block layer to issue it as
// a single bio, unsplit. It matters for io_uring: an O_DIRECT transfer
// submitted without blocking (IOCB_NOWAIT, io_uring's first attempt) that
// needs a second bio or a split fails with EAGAIN after its pages were
// pinned, and io_uring issues it again from a kernel worker thread
// (Linux 6.1 stable: "block: don't allow splitting of a REQ_NOWAIT bio",
// "block: dont allow multiple bios for IOCB_NOWAIT issue"). A 1 MiB
// request of 256 guest pages exceeds an NVMe's 127 segments, so every one
// took that path. Submitted in pieces within these limits, each goes to
// the device from the submitting call. Zero fields: no limit known.
type ioLimits struct {
	maxBytes int    // queue/max_sectors_kb
	maxSegs  int    // queue/max_segments
	boundary uint64 // queue/virt_boundary_mask: a gap at such an address splits
}

// readIOLimits reads a block device's queue limits through attr (a sysfs
// attribute under the device's directory). A device without a virtual
// boundary attribute is treated as having a page boundary: splitting where
// it was not needed costs one more submission entry, not a split bio.
func readIOLimits(attr func(string) (uint64, bool)) ioLimits {
	var l ioLimits
	if kb, ok := attr("queue/max_sectors_kb"); ok && kb >= PageSize/1024 && kb <= 1<<22 {
		l.maxBytes = int(kb) * 1024
	}
	if n, ok := attr("queue/max_segments"); ok && n >= 1 && n <= 1<<16 {
		l.maxSegs = int(n)
	}
	l.boundary = PageSize - 1
	if m, ok := attr("queue/virt_boundary_mask"); ok && m < PageSize {
		l.boundary = m
	}
	return l
}

// maxPieces bounds the pieces one request is cut into. A request that
// would need more (sub-page segments, from a guest that means to cost us
// submissions) goes whole, and the kernel splits it from a worker thread.
const maxPieces = 8

// piece is one part of a transfer: iovecs [from, to) at byte offset off
// into the request.
type piece struct {
	from, to int
	off      int64
}

// split cuts a transfer of n buffers (their addresses and lengths by
// index) into pieces that fit l, in dst's storage. It returns a single
// piece (the whole transfer) when no limit applies or more than maxPieces
// would be needed.
func (l ioLimits) split(dst []piece, n int, addr func(i int) uint64, length func(i int) int) []piece {
	if n == 0 || l.maxBytes == 0 && l.maxSegs == 0 && l.boundary == 0 {
		return append(dst[:0], piece{0, n, 0})
	}
	out := dst[:0]
	from, bytes, off := 0, 0, int64(0)
	for i := 0; i < n; i++ {
		if i > from {
			gap := l.boundary != 0 && ((addr(i-1)+uint64(length(i-1)))&l.boundary != 0 || addr(i)&l.boundary != 0)
			if gap || l.maxSegs != 0 && i-from >= l.maxSegs || l.maxBytes != 0 && bytes+length(i) > l.maxBytes {
				if len(out) == maxPieces-1 {
					return append(dst[:0], piece{0, n, 0})
				}
				out = append(out, piece{from, i, off})
				off += int64(bytes)
				from, bytes = i, 0
			}
		}
		bytes += length(i)
	}
	return append(out, piece{from, n, off})
}
