package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestLoopABI(t *testing.T) {
	// ioctl numbers: uapi/linux/loop.h
	for name, c := range map[string][2]uintptr{
		"LOOP_SET_FD":       {loopSetFD, unix.LOOP_SET_FD},
		"LOOP_CLR_FD":       {loopClrFD, unix.LOOP_CLR_FD},
		"LOOP_SET_STATUS64": {loopSetStatus64, unix.LOOP_SET_STATUS64},
		"LOOP_CTL_GET_FREE": {loopCtlGetFree, unix.LOOP_CTL_GET_FREE},
	} {
		if c[0] != c[1] {
			t.Errorf("%s = %#x, want %#x", name, c[0], c[1])
		}
	}
	if loFlagsReadOnly != unix.LO_FLAGS_READ_ONLY || loFlagsAutoclear != unix.LO_FLAGS_AUTOCLEAR {
		t.Errorf("LO_FLAGS wrong")
	}
	var li unix.LoopInfo64
	for name, c := range map[string][2]uintptr{
		"sizeof":           {loInfo64Size, unsafe.Sizeof(li)},
		"lo_device":        {loOffDevice, unsafe.Offsetof(li.Device)},
		"lo_inode":         {loOffInode, unsafe.Offsetof(li.Inode)},
		"lo_rdevice":       {loOffRdevice, unsafe.Offsetof(li.Rdevice)},
		"lo_offset":        {loOffOffset, unsafe.Offsetof(li.Offset)},
		"lo_sizelimit":     {loOffSizelimit, unsafe.Offsetof(li.Sizelimit)},
		"lo_number":        {loOffNumber, unsafe.Offsetof(li.Number)},
		"lo_encrypt_type":  {loOffEncryptType, unsafe.Offsetof(li.Encrypt_type)},
		"lo_encrypt_key_n": {loOffEncryptKeyN, unsafe.Offsetof(li.Encrypt_key_size)},
		"lo_flags":         {loOffFlags, unsafe.Offsetof(li.Flags)},
		"lo_file_name":     {loOffFileName, unsafe.Offsetof(li.File_name)},
		"lo_crypt_name":    {loOffCryptName, unsafe.Offsetof(li.Crypt_name)},
		"lo_encrypt_key":   {loOffEncryptKey, unsafe.Offsetof(li.Encrypt_key)},
		"lo_init":          {loOffInit, unsafe.Offsetof(li.Init)},
	} {
		if c[0] != c[1] {
			t.Errorf("loop_info64 %s = %d, want %d", name, c[0], c[1])
		}
	}
	if loInfo64Size != 232 {
		t.Errorf("sizeof(struct loop_info64) = %d, want 232", loInfo64Size)
	}
	b := encodeLoopInfo64("/srv/disk.img", loFlagsAutoclear)
	li = *(*unix.LoopInfo64)(unsafe.Pointer(&b[0]))
	if li.Flags != loFlagsAutoclear || unix.ByteSliceToString(li.File_name[:]) != "/srv/disk.img" {
		t.Errorf("encoded %+v", li)
	}
	long := "/" + strings.Repeat("x", 100) + "/tail.img"
	b = encodeLoopInfo64(long, 0)
	li = *(*unix.LoopInfo64)(unsafe.Pointer(&b[0]))
	if got := unix.ByteSliceToString(li.File_name[:]); len(got) != 63 || !strings.HasSuffix(got, "tail.img") {
		t.Errorf("long name encoded as %q", got)
	}
}

// TestAttachLoop attaches a real loop device (root and /dev/loop-control).
func TestAttachLoop(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no /dev/loop-control (loop module not loaded)")
	}
	f := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(f, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	ld, err := attachLoop(f, false)
	if err != nil {
		t.Fatal(err)
	}
	detached := false
	t.Cleanup(func() {
		if !detached {
			detachLoop(ld.Path)
		}
	})
	if ld.Major != loopMajor {
		t.Errorf("major = %d, want 7", ld.Major)
	}
	name := filepath.Base(ld.Path)
	back, err := os.ReadFile("/sys/block/" + name + "/loop/backing_file")
	if err != nil {
		t.Fatalf("sysfs backing_file: %v", err)
	}
	if strings.TrimSpace(string(back)) != f {
		t.Errorf("backing_file = %q, want %q", back, f)
	}
	maj, min, isBlk, err := blockDevNumber(ld.Path)
	if err != nil || !isBlk || maj != ld.Major || min != ld.Minor {
		t.Errorf("blockDevNumber(%s) = %d:%d %v %v", ld.Path, maj, min, isBlk, err)
	}
	if err := detachLoop(ld.Path); err != nil {
		t.Fatal(err)
	}
	detached = true
	if _, err := os.Stat("/sys/block/" + name + "/loop/backing_file"); err == nil {
		t.Errorf("%s still bound after detach", ld.Path)
	}
	if _, _, isBlk, err := blockDevNumber(f); err != nil || isBlk {
		t.Errorf("regular file reported as block device: %v %v", isBlk, err)
	}
}
