package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// blockDevice is one disk the driver domain sees (passed through or not).
type blockDevice struct {
	Name     string
	Sectors  uint64 // 512-byte units, as /sys/block/*/size counts
	Logical  uint64 // queue/logical_block_size
	ReadOnly bool
}

// blockInventory lists the disks under sysBlock (/sys/block), leaving out
// the kernel's virtual loop and ram disks, sorted by name.
func blockInventory(sysBlock string) ([]blockDevice, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, err
	}
	var out []blockDevice
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "loop") || strings.HasPrefix(n, "ram") {
			continue
		}
		d := blockDevice{Name: n}
		d.Sectors = readSysUint(filepath.Join(sysBlock, n, "size"))
		d.Logical = readSysUint(filepath.Join(sysBlock, n, "queue", "logical_block_size"))
		d.ReadOnly = readSysUint(filepath.Join(sysBlock, n, "ro")) == 1
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func readSysUint(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// logBlockDevices prints the disks this domain can serve, one line each
// (the lab checks the passed-through NVMe by this line), or says that
// there is none: a missing passthrough is a clear log line, not a hang.
func logBlockDevices(sysBlock string, log *slog.Logger) {
	devs, err := blockInventory(sysBlock)
	if err != nil {
		log.Warn("cannot list block devices", "err", err)
		return
	}
	if len(devs) == 0 {
		log.Warn("no block device: is a disk passed through (xl pci-assignable-add, pci=[...]) and its driver in the modules list?")
		return
	}
	for _, d := range devs {
		log.Info("block device", "name", d.Name, "bytes", d.Sectors*512, "logical_block", d.Logical, "ro", d.ReadOnly)
	}
}
