package blkfront

import (
	"context"
	"fmt"
	"strconv"

	"drvdom/internal/xensim"
	"drvdom/xenstore"
)

// Disk is what the toolstack (libxl in dom0) writes for one virtual disk.
type Disk struct {
	BackDom, FrontDom uint16
	DevID             uint32 // e.g. 51712 for xvda
	Params            string // backing path, or null:<bytes>
	Mode              string // "w" or "r"
	// Extra backend keys (discard-enable, device-type, ...).
	Extra map[string]string
}

// BackPath is the backend directory.
func (d Disk) BackPath() string {
	return fmt.Sprintf("/local/domain/%d/backend/vbd/%d/%d", d.BackDom, d.FrontDom, d.DevID)
}

// FrontPath is the frontend directory.
func (d Disk) FrontPath() string {
	return fmt.Sprintf("/local/domain/%d/device/vbd/%d", d.FrontDom, d.DevID)
}

// AddDisk writes both directories as libxl does, with a privileged client
// (dom0): the backend directory owned by the backend domain and readable by
// the frontend, and the other way round; both in state Initialising, the
// backend online.
func AddDisk(ctx context.Context, dom0 *xenstore.Client, d Disk) error {
	bp, fp := d.BackPath(), d.FrontPath()
	mode := d.Mode
	if mode == "" {
		mode = "w"
	}
	back := map[string]string{
		"frontend": fp, "frontend-id": strconv.Itoa(int(d.FrontDom)), "params": d.Params,
		"online": "1", "removable": "0", "bootable": "1", "state": "1", "dev": "xvda",
		"type": "phy", "mode": mode, "device-type": "disk", "discard-enable": "1",
	}
	for k, v := range d.Extra {
		back[k] = v
	}
	front := map[string]string{
		"backend": bp, "backend-id": strconv.Itoa(int(d.BackDom)), "state": "1",
		"virtual-device": strconv.FormatUint(uint64(d.DevID), 10), "device-type": "disk",
	}
	return xensim.AddDevice(ctx, dom0, bp, fp, d.BackDom, d.FrontDom, back, front)
}

// RemoveDisk takes the disk offline as the toolstack does on detach.
func RemoveDisk(ctx context.Context, dom0 *xenstore.Client, d Disk) error {
	return dom0.Write(ctx, d.BackPath()+"/online", "0")
}
