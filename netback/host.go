package netback

import (
	"context"
	"errors"
	"fmt"
)

// Host is the host side of vifs: TAP devices bridged to the uplink. The
// backend logic never knows which implementation it has: LinuxHost (a real
// TAP through /dev/net/tun and netlink) or MemHost (frames in memory, for the
// simulator).
type Host interface {
	// CreateTap creates a TAP device that carries virtio-net headers, named
	// name, enslaves it to bridge (created if missing) and sets it up.
	CreateTap(name, bridge string) (Tap, error)
}

// Tap is one vif's host device.
type Tap interface {
	// Name is the device's name on the host.
	Name() string
	// SetQueues makes queues 0..n-1 available (multi-queue TAP).
	SetQueues(n int) error
	// Queue returns queue i (i < the last SetQueues, or 0).
	Queue(i int) TapQueue
	// SetOffload tells the device which offloads the reader accepts
	// (TUN_F_* flags): frames read will carry only those.
	SetOffload(flags uint32) error
	// SetCarrier turns the link's carrier on (the guest is connected) or
	// off (it is not: the bridge stops forwarding to it, as Linux netback
	// does with netif_carrier_off, so no stale frames pile up).
	SetCarrier(on bool) error
	// Close removes the device.
	Close() error
}

// TapQueue carries frames, each preceded by its VnetHdrSize-byte
// virtio-net header. One reader and one writer at a time.
type TapQueue interface {
	// Read reads one frame into b and returns its length (header included).
	// It blocks until a frame arrives, ctx ends (ctx.Err()) or the device
	// is closed (ErrTapClosed).
	Read(ctx context.Context, b []byte) (int, error)
	// Write sends one frame (header included) to the host.
	Write(b []byte) (int, error)
}

// BatchWriter is an optional TapQueue extension: several frames handed to
// the host with one system call (io_uring on Linux) instead of one each,
// what costs most in a PV driver domain. The tx path uses it for a batch of
// two frames or more.
type BatchWriter interface {
	// WriteBatch sends every frame (header included), in order, and sets
	// errs[i] to frames[i]'s error (nil: sent); len(errs) >= len(frames).
	WriteBatch(frames [][]byte, errs []error)
}

// BatchReader is an optional TapQueue extension: the frames waiting in
// the queue read with one system call (io_uring on Linux) instead of one
// read(2) each plus one that finds the queue empty. The rx path uses it
// for every wakeup.
type BatchReader interface {
	// ReadBatch blocks until a frame is waiting (or ctx ends: ctx.Err(),
	// or the device is closed: ErrTapClosed), then reads up to len(bufs)
	// of the frames waiting, in order, the i-th into bufs[i] with its
	// length (header included) in ns[i] (len(ns) >= len(bufs)), and
	// returns how many. It may swap entries of bufs (a frame lands in the
	// buffer its read was given). A frame read is never lost: an error
	// after some frames returns them and shows again on the next call.
	ReadBatch(ctx context.Context, bufs [][]byte, ns []int) (int, error)
}

// ErrTapClosed is returned by TapQueue methods after the Tap was closed.
var ErrTapClosed = errors.New("netback: tap closed")

// TUN_F_* offload flags (include/uapi/linux/if_tun.h) for Tap.SetOffload.
const (
	TunFCsum   uint32 = 0x01
	TunFTSO4   uint32 = 0x02
	TunFTSO6   uint32 = 0x04
	TunFTSOECN uint32 = 0x08
	TunFUFO    uint32 = 0x10
)

// ifNameMax is IFNAMSIZ-1: the longest Linux interface name.
const ifNameMax = 15

// TapName is the host name of a vif's TAP: "vif<dom>.<devid>" as the Linux
// hotplug scripts name it, cut to the 15 characters Linux allows.
func TapName(frontDom uint16, devID uint32) string {
	n := fmt.Sprintf("vif%d.%d", frontDom, devID)
	if len(n) > ifNameMax {
		n = n[:ifNameMax]
	}
	return n
}

// offloadFor returns the TUN_F_* flags to read frames with, given what the
// frontend accepts.
func offloadFor(f frontFeatures) uint32 {
	if f.noCsumOffload {
		return 0 // the guest wants full checksums: no partial csum, no TSO
	}
	o := TunFCsum
	if f.sg && f.gsoTCPv4 {
		o |= TunFTSO4 | TunFTSOECN
	}
	if f.sg && f.gsoTCPv6 && f.ipv6Csum {
		o |= TunFTSO6 | TunFTSOECN
	}
	return o
}
