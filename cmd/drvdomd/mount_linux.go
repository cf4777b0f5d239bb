package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// Filesystem magics (uapi/linux/magic.h).
const (
	procSuperMagic  = 0x9fa0
	sysfsMagic      = 0x62656572
	tmpfsMagic      = 0x01021994 // devtmpfs reports tmpfs's magic
	xenfsSuperMagic = 0xabba1974
)

type mountSpec struct {
	fstype, target string
	magic          int64
	flags          uintptr
}

var baseMounts = []mountSpec{
	{"proc", "/proc", procSuperMagic, unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{"sysfs", "/sys", sysfsMagic, unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{"devtmpfs", "/dev", tmpfsMagic, unix.MS_NOSUID},
}

var xenfsMount = mountSpec{"xenfs", "/proc/xen", xenfsSuperMagic, 0}

// ensureMount mounts m unless a filesystem of its kind is already there.
func ensureMount(m mountSpec, log *slog.Logger) error {
	var st unix.Statfs_t
	if err := unix.Statfs(m.target, &st); err == nil && int64(st.Type) == m.magic {
		return nil
	}
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m.target, err)
	}
	if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	log.Info("mounted", "fs", m.fstype, "on", m.target)
	return nil
}

func ensureBaseMounts(log *slog.Logger) {
	for _, m := range baseMounts {
		if err := ensureMount(m, log); err != nil {
			log.Error("mount failed", "err", err)
		}
	}
}
