package netfront

import (
	"context"
	"fmt"
	"strconv"

	"drvdom/internal/xensim"
	"drvdom/xenstore"
)

// Nic is what the toolstack (libxl in dom0) writes for one vif.
type Nic struct {
	BackDom, FrontDom uint16
	DevID             uint32
	MAC               string // "00:16:3e:..."
	Bridge            string // empty: no bridge key (the backend's default)
	Rate              string // "<bytes>,<usec>", empty for none
	Extra             map[string]string
}

// BackPath is the backend directory.
func (n Nic) BackPath() string {
	return fmt.Sprintf("/local/domain/%d/backend/vif/%d/%d", n.BackDom, n.FrontDom, n.DevID)
}

// FrontPath is the frontend directory.
func (n Nic) FrontPath() string {
	return fmt.Sprintf("/local/domain/%d/device/vif/%d", n.FrontDom, n.DevID)
}

// AddNic writes both directories as libxl does, with a privileged client
// (dom0): each owned by its domain and readable by the other, both in state
// Initialising, the backend online.
func AddNic(ctx context.Context, dom0 *xenstore.Client, n Nic) error {
	bp, fp := n.BackPath(), n.FrontPath()
	back := map[string]string{
		"frontend": fp, "frontend-id": strconv.Itoa(int(n.FrontDom)), "online": "1", "state": "1",
		"script": "vif-bridge", "mac": n.MAC, "handle": strconv.FormatUint(uint64(n.DevID), 10), "type": "vif",
	}
	if n.Bridge != "" {
		back["bridge"] = n.Bridge
	}
	if n.Rate != "" {
		back["rate"] = n.Rate
	}
	for k, v := range n.Extra {
		back[k] = v
	}
	front := map[string]string{
		"backend": bp, "backend-id": strconv.Itoa(int(n.BackDom)), "state": "1",
		"handle": strconv.FormatUint(uint64(n.DevID), 10), "mac": n.MAC,
	}
	return xensim.AddDevice(ctx, dom0, bp, fp, n.BackDom, n.FrontDom, back, front)
}

// RemoveNic takes the vif offline as the toolstack does on detach.
func RemoveNic(ctx context.Context, dom0 *xenstore.Client, n Nic) error {
	return dom0.Write(ctx, n.BackPath()+"/online", "0")
}
