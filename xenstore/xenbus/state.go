// Package xenbus is the backend device lifecycle that drvdom's backends
// (blkback, netback) share: it discovers
// /local/domain/<self>/backend/<type>/<frontdom>/<devid>, runs the XenbusState
// handshake with the frontend the way Linux's xenbus_probe_backend.c and the
// kernel backends do, and tells a Driver when to probe, connect, disconnect
// and close a device.
//
// Everything a frontend writes into xenstore is hostile input: a state that
// does not parse is Unknown, never a panic.
package xenbus

import (
	"strconv"
	"strings"
)

// A state node holds one decimal digit; Linux reads it with "%d", so a
// leading zero or sign would parse there, but no Xen component writes one.

// State is a XenbusState (xen/include/public/io/xenbus.h).
type State int

// XenbusState values, pinned by TestStateValues to the Xen header.
const (
	Unknown       State = 0
	Initialising  State = 1
	InitWait      State = 2 // backend: waiting for the frontend's details
	Initialised   State = 3 // frontend: ring and event channel published
	Connected     State = 4
	Closing       State = 5
	Closed        State = 6
	Reconfiguring State = 7
	Reconfigured  State = 8
)

var stateNames = [...]string{
	Unknown:       "Unknown",
	Initialising:  "Initialising",
	InitWait:      "InitWait",
	Initialised:   "Initialised",
	Connected:     "Connected",
	Closing:       "Closing",
	Closed:        "Closed",
	Reconfiguring: "Reconfiguring",
	Reconfigured:  "Reconfigured",
}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// ParseState parses a state node's value as written by the other end. It
// accepts surrounding white space (Linux writes "%d"; some toolstacks add a
// newline) and reports ok=false for anything that is not 0..8.
func ParseState(v string) (State, bool) {
	v = strings.TrimSpace(v)
	if len(v) != 1 || v[0] < '0' || v[0] > '8' {
		return Unknown, false
	}
	return State(v[0] - '0'), true
}
