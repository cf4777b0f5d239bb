// Package grant maps, copies and shares Xen grant references.
//
// A backend maps the pages a frontend granted it (Mapper.Map, through
// /dev/xen/gntdev: OpenGntdev) or copies to and from them without mapping
// (Mapper.Copy, the hypervisor's grant copy). A frontend, or a test playing
// one, shares its own pages (Sharer.Share, through /dev/xen/gntalloc:
// OpenGntalloc). Sim is a simulated host-wide grant table whose pages are
// real shared memory, with Xen's refusals (NewSim).
//
// Map errors wrap syscall.EINVAL (what gntdev's mmap returns for any failed
// grant map) and, where known, the GNTST Status Xen reported, so callers can
// branch with errors.Is on either.
package grant

import (
	"errors"
	"fmt"

	"drvdom/evtchn"
)

// Ref is a grant reference: an index into the granting domain's grant table.
type Ref uint32

// PageSize is the Xen page size; every grant covers one page.
const PageSize = 4096

// Device files (OpenGntdev, OpenGntalloc).
const (
	GntdevPath   = "/dev/xen/gntdev"
	GntallocPath = "/dev/xen/gntalloc"
)

// ErrClosed is returned by every method of a Mapper, Sharer or mapping after
// it was closed (or its domain destroyed in the simulator).
var ErrClosed = errors.New("grant: closed")

// Mapper maps and copies grants of other domains (backend side). Safe for
// concurrent use.
type Mapper interface {
	// Map maps the pages refs of domain dom, in order, into one contiguous
	// slice of len(refs)*PageSize bytes, writable or read-only.
	Map(dom uint16, refs []Ref, writable bool) (Mapping, error)
	// Copy performs a batch of grant copies; segs[i].Status receives each
	// segment's GNTST result. The error is non-nil only if the batch as a
	// whole failed, in which case no Status is meaningful.
	Copy(segs []CopySeg) error
	Close() error
}

// Mapping is one Map result. Bytes is invalid after Unmap.
type Mapping interface {
	Bytes() []byte
	Unmap() error
}

// CopySeg is one grant copy segment: Len bytes from Src to Dst.
type CopySeg struct {
	Src, Dst CopyPtr
	Len      uint16
	Status   int16 // out: 0 (GNTST_okay) or a negative Status
}

// CopyPtr is one side of a CopySeg: local memory (Local non-nil, Local[:Len]
// is used) or a grant (Ref of domain Dom, at Offset; Offset+Len <= PageSize).
type CopyPtr struct {
	Local  []byte
	Ref    Ref
	Dom    uint16
	Offset uint16
}

// Sharer grants this domain's pages to another (frontend side).
type Sharer interface {
	// Share allocates pages zeroed pages and grants each to remote.
	Share(remote uint16, pages int, writable bool) (Share, error)
	Close() error
}

// Share is a set of granted pages. Close ends foreign access and frees them.
type Share interface {
	Refs() []Ref
	Bytes() []byte
	Close() error
}

// UnmapAction says what happens when a mapping or share with an unmap
// notification goes away (also when its process dies): the values of
// UNMAP_NOTIFY_* in the Linux gntdev.h/gntalloc.h uapi.
type UnmapAction uint32

const (
	NotifyClearByte UnmapAction = 0x1 // clear the byte at the offset
	NotifySendEvent UnmapAction = 0x2 // notify the event channel port
)

// UnmapNotifier is implemented by the Mappings and Shares of every Mapper and
// Sharer in this package (IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
// IOCTL_GNTALLOC_SET_UNMAP_NOTIFY). offset is a byte offset into Bytes();
// port is a local port of this domain whose remote end is notified. One
// notification per page; a later call for the same page replaces it.
type UnmapNotifier interface {
	SetUnmapNotify(offset uint32, action UnmapAction, port evtchn.Port) error
}

// Status is a GNTST_* grant operation status from Xen's public grant_table.h.
type Status int16

const (
	StatusOkay             Status = 0
	StatusGeneralError     Status = -1
	StatusBadDomain        Status = -2
	StatusBadGntref        Status = -3
	StatusBadHandle        Status = -4
	StatusBadVirtAddr      Status = -5
	StatusBadDevAddr       Status = -6
	StatusNoDeviceSpace    Status = -7
	StatusPermissionDenied Status = -8
	StatusBadPage          Status = -9
	StatusBadCopyArg       Status = -10
	StatusAddressTooBig    Status = -11
	StatusEagain           Status = -12
)

var statusText = [...]string{
	"okay",
	"undefined error",
	"unrecognised domain id",
	"invalid grant reference",
	"invalid mapping handle",
	"invalid virtual address",
	"invalid device address",
	"no spare translation slot in the I/O MMU",
	"permission denied",
	"bad page",
	"copy arguments cross page boundary",
	"page address size too large",
	"operation not done; try again",
}

func (s Status) Error() string {
	if s <= 0 && int(-s) < len(statusText) {
		return "GNTST " + statusText[-s]
	}
	return fmt.Sprintf("GNTST %d", int16(s))
}

// checkSeg validates a segment's shape the way gntdev and Xen do before any
// grant is touched: exactly one side may be local (gntdev refuses
// local-to-local), a local side must hold Len bytes, a grant side must not
// cross its page. It returns StatusOkay or StatusBadCopyArg.
func checkSeg(s *CopySeg) Status {
	if s.Src.Local != nil && s.Dst.Local != nil {
		return StatusBadCopyArg
	}
	if !sideOK(&s.Src, s.Len) || !sideOK(&s.Dst, s.Len) {
		return StatusBadCopyArg
	}
	return StatusOkay
}

func sideOK(p *CopyPtr, n uint16) bool {
	if p.Local != nil {
		return len(p.Local) >= int(n)
	}
	return int(p.Offset)+int(n) <= PageSize
}
