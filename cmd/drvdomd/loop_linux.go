package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Loop device ioctls and struct loop_info64 (uapi/linux/loop.h), pinned by
// TestLoopABI.
const (
	loopSetFD       = 0x4C00 // LOOP_SET_FD
	loopClrFD       = 0x4C01 // LOOP_CLR_FD
	loopSetStatus64 = 0x4C04 // LOOP_SET_STATUS64
	loopCtlGetFree  = 0x4C82 // LOOP_CTL_GET_FREE

	loFlagsReadOnly  = 1 // LO_FLAGS_READ_ONLY (follows the backing fd's mode)
	loFlagsAutoclear = 4 // LO_FLAGS_AUTOCLEAR: detach when the last opener closes

	loopMajor = 7

	// struct loop_info64
	loInfo64Size     = 232
	loOffDevice      = 0  // __u64 lo_device
	loOffInode       = 8  // __u64 lo_inode
	loOffRdevice     = 16 // __u64 lo_rdevice
	loOffOffset      = 24 // __u64 lo_offset
	loOffSizelimit   = 32 // __u64 lo_sizelimit
	loOffNumber      = 40 // __u32 lo_number
	loOffEncryptType = 44 // __u32 lo_encrypt_type
	loOffEncryptKeyN = 48 // __u32 lo_encrypt_key_size
	loOffFlags       = 52 // __u32 lo_flags
	loOffFileName    = 56 // __u8 lo_file_name[64]
	loOffCryptName   = 120
	loOffEncryptKey  = 184
	loOffInit        = 216
	loNameSize       = 64
)

// encodeLoopInfo64 is a struct loop_info64 naming file, with flags.
func encodeLoopInfo64(file string, flags uint32) [loInfo64Size]byte {
	var b [loInfo64Size]byte
	binary.LittleEndian.PutUint32(b[loOffFlags:], flags)
	name := file
	if len(name) > loNameSize-1 {
		name = name[len(name)-(loNameSize-1):] // keep the informative tail
	}
	copy(b[loOffFileName:loOffFileName+loNameSize-1], name)
	return b
}

func ioctlPtr(fd uintptr, req uintptr, p unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(p)); e != 0 {
		return e
	}
	return nil
}

// loopDevice is an attached loop device.
type loopDevice struct {
	Path         string // /dev/loopN
	Major, Minor uint32
}

// attachLoop binds a free loop device to file (LOOP_CTL_GET_FREE,
// LOOP_SET_FD, LOOP_SET_STATUS64). It does not set autoclear: that would
// detach the device when drvdomd closes its handle, before blkback opens it.
// detachLoop clears it when the backend goes away.
func attachLoop(file string, readOnly bool) (*loopDevice, error) {
	mode := os.O_RDWR
	if readOnly {
		mode = os.O_RDONLY
	}
	backing, err := os.OpenFile(file, mode, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: open backing file: %w", err)
	}
	defer backing.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: %w (is the loop module loaded?)", err)
	}
	defer ctl.Close()

	var lastErr error
	for attempt := 0; attempt < 8; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), loopCtlGetFree)
		if err != nil {
			return nil, fmt.Errorf("loop: LOOP_CTL_GET_FREE: %w", err)
		}
		path := "/dev/loop" + strconv.Itoa(n)
		dev, err := openLoopNode(path, n, mode)
		if err != nil {
			return nil, err
		}
		err = unix.IoctlSetInt(int(dev.Fd()), loopSetFD, int(backing.Fd()))
		if errors.Is(err, unix.EBUSY) { // someone else took it: ask again
			dev.Close()
			lastErr = err
			continue
		}
		if err != nil {
			dev.Close()
			return nil, fmt.Errorf("loop: LOOP_SET_FD %s: %w", path, err)
		}
		info := encodeLoopInfo64(file, 0)
		if err := ioctlPtr(dev.Fd(), loopSetStatus64, unsafe.Pointer(&info[0])); err != nil {
			_ = unix.IoctlSetInt(int(dev.Fd()), loopClrFD, 0)
			dev.Close()
			return nil, fmt.Errorf("loop: LOOP_SET_STATUS64 %s: %w", path, err)
		}
		var st unix.Stat_t
		err = unix.Fstat(int(dev.Fd()), &st)
		dev.Close()
		if err != nil {
			return nil, fmt.Errorf("loop: stat %s: %w", path, err)
		}
		return &loopDevice{Path: path, Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev)}, nil
	}
	return nil, fmt.Errorf("loop: no free device after retries: %w", lastErr)
}

// openLoopNode opens /dev/loopN, creating the node if devtmpfs has not yet.
func openLoopNode(path string, n int, mode int) (*os.File, error) {
	for i := 0; i < 50; i++ {
		f, err := os.OpenFile(path, mode, 0)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("loop: open %s: %w", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(loopMajor, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("loop: mknod %s: %w", path, err)
	}
	f, err := os.OpenFile(path, mode, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: open %s: %w", path, err)
	}
	return f, nil
}

// detachLoop clears the loop device (LOOP_CLR_FD). If the device is still
// open elsewhere the kernel marks it autoclear instead; either way it goes.
func detachLoop(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("loop: open %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), loopClrFD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("loop: LOOP_CLR_FD %s: %w", path, err)
	}
	return nil
}

// blockDevNumber reports whether path is a block device and its number.
func blockDevNumber(path string) (major, minor uint32, isBlock bool, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, false, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, false, nil
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev), true, nil
}
