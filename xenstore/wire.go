// Package xenstore implements the xenstore wire protocol (Xen's
// xen/include/public/io/xs_wire.h and docs/misc/xenstore.txt) and a client
// for it.
//
// A Client multiplexes any number of concurrent requests over one
// connection (OpenXenbus for /dev/xen/xenbus in a domU or driver domain,
// DialSocket for xenstored's unix socket in dom0, Open for whichever is
// there, NewClient for anything else such as a pipe to the in-memory
// server in package xenstored). ERROR replies come back as *Error, which
// unwraps to a sentinel (errors.Is(err, ErrNotExist)); a connection that
// breaks the protocol is torn down and everything on it fails with
// ErrClosed. Transaction retries on ErrAgain. Watches deliver events on a
// buffered channel and never block the connection; see Watch for what
// happens when a subscriber falls behind.
package xenstore

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MsgType is the type field of a xenstore message header (enum xsd_sockmsg_type).
type MsgType uint32

// Message types, numbered as in xs_wire.h (pinned by TestMsgTypeNumbers).
const (
	MsgControl            MsgType = 0 // XS_CONTROL (formerly XS_DEBUG)
	MsgDirectory          MsgType = 1
	MsgRead               MsgType = 2
	MsgGetPerms           MsgType = 3
	MsgWatch              MsgType = 4
	MsgUnwatch            MsgType = 5
	MsgTransactionStart   MsgType = 6
	MsgTransactionEnd     MsgType = 7
	MsgIntroduce          MsgType = 8
	MsgRelease            MsgType = 9
	MsgGetDomainPath      MsgType = 10
	MsgWrite              MsgType = 11
	MsgMkdir              MsgType = 12
	MsgRm                 MsgType = 13
	MsgSetPerms           MsgType = 14
	MsgWatchEvent         MsgType = 15
	MsgError              MsgType = 16
	MsgIsDomainIntroduced MsgType = 17
	MsgResume             MsgType = 18
	MsgSetTarget          MsgType = 19
	MsgRestrict           MsgType = 20
	MsgResetWatches       MsgType = 21
	MsgDirectoryPart      MsgType = 22
)

// Wire sizes from xs_wire.h.
const (
	HeaderSize     = 16   // struct xsd_sockmsg: type, req_id, tx_id, len (u32 LE each)
	PayloadMax     = 4096 // XENSTORE_PAYLOAD_MAX
	AbsPathMax     = 3072 // XENSTORE_ABS_PATH_MAX
	RelPathMax     = 2048 // XENSTORE_REL_PATH_MAX
	TxNone         = 0    // tx_id of a request outside any transaction
	headerOffType  = 0
	headerOffReqID = 4
	headerOffTxID  = 8
	headerOffLen   = 12
)

// Header is a decoded struct xsd_sockmsg.
type Header struct {
	Type  MsgType
	ReqID uint32
	TxID  uint32
	Len   uint32
}

// ErrProtocol marks bytes from the other end that violate the wire protocol.
var ErrProtocol = errors.New("xenstore: protocol violation")

// DecodeHeader decodes a header from b; it rejects short input and a
// payload length above PayloadMax.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: header is %d bytes, want %d", ErrProtocol, len(b), HeaderSize)
	}
	h := Header{
		Type:  MsgType(binary.LittleEndian.Uint32(b[headerOffType:])),
		ReqID: binary.LittleEndian.Uint32(b[headerOffReqID:]),
		TxID:  binary.LittleEndian.Uint32(b[headerOffTxID:]),
		Len:   binary.LittleEndian.Uint32(b[headerOffLen:]),
	}
	if h.Len > PayloadMax {
		return h, fmt.Errorf("%w: payload length %d exceeds %d", ErrProtocol, h.Len, PayloadMax)
	}
	return h, nil
}

// AppendHeader appends the wire encoding of h to b.
func AppendHeader(b []byte, h Header) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(h.Type))
	b = binary.LittleEndian.AppendUint32(b, h.ReqID)
	b = binary.LittleEndian.AppendUint32(b, h.TxID)
	return binary.LittleEndian.AppendUint32(b, h.Len)
}

// Sentinel errors for the errno names xenstored sends in ERROR replies.
var (
	ErrNotExist   = errors.New("xenstore: node does not exist")     // ENOENT
	ErrPermission = errors.New("xenstore: permission denied")       // EACCES
	ErrAgain      = errors.New("xenstore: transaction conflict")    // EAGAIN
	ErrInvalid    = errors.New("xenstore: invalid argument")        // EINVAL
	ErrExist      = errors.New("xenstore: node exists")             // EEXIST
	ErrNoSpace    = errors.New("xenstore: no space")                // ENOSPC
	ErrBusy       = errors.New("xenstore: busy")                    // EBUSY
	ErrQuota      = errors.New("xenstore: quota exceeded")          // E2BIG, EQUOTA
	ErrClosed     = errors.New("xenstore: connection closed")       // local: the connection is gone
	ErrNotSupport = errors.New("xenstore: operation not supported") // ENOSYS
)

var errnoSentinel = map[string]error{
	"ENOENT": ErrNotExist,
	"EACCES": ErrPermission,
	"EPERM":  ErrPermission,
	"EAGAIN": ErrAgain,
	"EINVAL": ErrInvalid,
	"EEXIST": ErrExist,
	"ENOSPC": ErrNoSpace,
	"EBUSY":  ErrBusy,
	"E2BIG":  ErrQuota,
	"EQUOTA": ErrQuota,
	"ENOSYS": ErrNotSupport,
}

// Error is an ERROR reply from xenstored. It unwraps to the sentinel for
// its errno name (if any), so callers use errors.Is(err, ErrNotExist).
type Error struct {
	Op    string // request type, e.g. "READ"
	Path  string // path argument, if any
	Errno string // errno name as sent, e.g. "ENOENT"
}

func (e *Error) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("xenstore %s: %s", e.Op, e.Errno)
	}
	return fmt.Sprintf("xenstore %s %s: %s", e.Op, e.Path, e.Errno)
}

// Unwrap returns the sentinel for e.Errno, or nil for an unknown name.
func (e *Error) Unwrap() error { return errnoSentinel[e.Errno] }

// ParseErrorPayload extracts the errno name from an ERROR payload
// ("ENOENT\x00"). Names must be E followed by upper-case letters/digits.
func ParseErrorPayload(p []byte) (string, error) {
	if len(p) > 0 && p[len(p)-1] == 0 {
		p = p[:len(p)-1]
	}
	if len(p) < 2 || len(p) > 32 || p[0] != 'E' {
		return "", fmt.Errorf("%w: bad ERROR payload %q", ErrProtocol, p)
	}
	for _, c := range p {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return "", fmt.Errorf("%w: bad ERROR payload %q", ErrProtocol, p)
		}
	}
	return string(p), nil
}

// ParseStrings splits a payload of nul-terminated strings (DIRECTORY,
// GET_PERMS, WATCH_EVENT replies). An empty payload is an empty list.
// A final string without its nul is accepted.
func ParseStrings(p []byte) []string {
	var out []string
	for len(p) > 0 {
		i := 0
		for i < len(p) && p[i] != 0 {
			i++
		}
		out = append(out, string(p[:i]))
		if i == len(p) {
			break
		}
		p = p[i+1:]
	}
	return out
}

func (t MsgType) String() string {
	names := [...]string{"CONTROL", "DIRECTORY", "READ", "GET_PERMS", "WATCH", "UNWATCH",
		"TRANSACTION_START", "TRANSACTION_END", "INTRODUCE", "RELEASE", "GET_DOMAIN_PATH",
		"WRITE", "MKDIR", "RM", "SET_PERMS", "WATCH_EVENT", "ERROR", "IS_DOMAIN_INTRODUCED",
		"RESUME", "SET_TARGET", "RESTRICT", "RESET_WATCHES", "DIRECTORY_PART"}
	if int(t) < len(names) {
		return names[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint32(t))
}
