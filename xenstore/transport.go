package xenstore

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// XenbusDevice is the Linux xenbus device (drivers/xen/xenbus/xenbus_dev_frontend.c).
// The kernel forwards each message written to it to xenstored; it needs a
// whole message per write() (the Client always writes one message per
// Write call) and returns replies and watch events as a byte stream. It
// restores the caller's req_id in replies, so req_id matching works.
const XenbusDevice = "/dev/xen/xenbus"

// SocketPaths are where xenstored listens, tried in order by DialSocket("").
var SocketPaths = []string{"/run/xenstored/socket", "/var/run/xenstored/socket"}

// OpenXenbus connects through XenbusDevice (the usual way from a domU,
// including a driver domain).
func OpenXenbus() (*Client, error) {
	f, err := os.OpenFile(XenbusDevice, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("xenstore: open %s: %w", XenbusDevice, err)
	}
	return newClient(f, true), nil
}

// DialSocket connects to xenstored's unix socket at path, or when path is
// empty at the first of SocketPaths that answers (dom0 only).
func DialSocket(path string) (*Client, error) {
	paths := SocketPaths
	if path != "" {
		paths = []string{path}
	}
	var errs []error
	for _, p := range paths {
		conn, err := net.Dial("unix", p)
		if err == nil {
			return NewClient(conn), nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("xenstore: dial xenstored: %w", errors.Join(errs...))
}

// Open connects through XenbusDevice if it exists, else through the socket.
func Open() (*Client, error) {
	if _, err := os.Stat(XenbusDevice); err == nil {
		return OpenXenbus()
	}
	c, err := DialSocket("")
	if err != nil {
		return nil, fmt.Errorf("xenstore: no %s and no socket: %w", XenbusDevice, err)
	}
	return c, nil
}
