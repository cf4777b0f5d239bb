package xenbus

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"drvdom/xenstore"
)

// Dev is one backend device: backend/<Type>/<FrontDom>/<DevID> in the driver
// domain's xenstore tree, and the frontend directory it serves.
type Dev struct {
	Store     *xenstore.Client
	Type      string // "vbd" | "vif"
	FrontDom  uint16
	DevID     uint32
	BackPath  string // /local/domain/<self>/backend/<type>/<frontdom>/<devid>
	FrontPath string // read from the backend's "frontend" key
	Log       *slog.Logger

	mu      sync.Mutex
	lastErr string // last message WriteError wrote, to log it once
}

// Name is the device's short name for logs and errors: "vbd 4/51744".
func (d *Dev) Name() string {
	return d.Type + " " + strconv.Itoa(int(d.FrontDom)) + "/" + strconv.FormatUint(uint64(d.DevID), 10)
}

func (d *Dev) logger() *slog.Logger {
	if d.Log != nil {
		return d.Log
	}
	return slog.Default()
}

// ReadBack reads BackPath/key.
func (d *Dev) ReadBack(ctx context.Context, key string) (string, error) {
	v, err := d.Store.Read(ctx, d.BackPath+"/"+key)
	if err != nil {
		return "", fmt.Errorf("%s: read backend %s: %w", d.Name(), key, err)
	}
	return v, nil
}

// ReadBackMany reads BackPath/key for every key with the requests in
// flight at once (xenstore.Client.ReadMany: one round trip, where a
// restarted backend would otherwise pay one per key); values and errors
// (wrapped as ReadBack's) in the order of keys.
func (d *Dev) ReadBackMany(ctx context.Context, keys ...string) ([]string, []error) {
	return d.readMany(ctx, d.BackPath, "backend", keys)
}

// ReadFrontMany is ReadBackMany for FrontPath (errors as ReadFront's). The
// values are frontend-controlled: callers validate them.
func (d *Dev) ReadFrontMany(ctx context.Context, keys ...string) ([]string, []error) {
	return d.readMany(ctx, d.FrontPath, "frontend", keys)
}

func (d *Dev) readMany(ctx context.Context, dir, side string, keys []string) ([]string, []error) {
	paths := make([]string, len(keys))
	for i, k := range keys {
		paths[i] = dir + "/" + k
	}
	vals, errs := d.Store.ReadMany(ctx, paths)
	for i, err := range errs {
		if err != nil {
			errs[i] = fmt.Errorf("%s: read %s %s: %w", d.Name(), side, keys[i], err)
		}
	}
	return vals, errs
}

// ReadFront reads FrontPath/key. The value is frontend-controlled: callers
// validate it.
func (d *Dev) ReadFront(ctx context.Context, key string) (string, error) {
	v, err := d.Store.Read(ctx, d.FrontPath+"/"+key)
	if err != nil {
		return "", fmt.Errorf("%s: read frontend %s: %w", d.Name(), key, err)
	}
	return v, nil
}

// WriteBack writes BackPath/key.
func (d *Dev) WriteBack(ctx context.Context, key, val string) error {
	if err := d.Store.Write(ctx, d.BackPath+"/"+key, val); err != nil {
		return fmt.Errorf("%s: write backend %s: %w", d.Name(), key, err)
	}
	return nil
}

// ErrBadState is wrapped by FrontState's error when the node holds something
// that is not a XenbusState (the frontend wrote it: it reads as Unknown). Any
// other error means the node could not be read at all, which says nothing
// about the frontend.
var ErrBadState = errors.New("not a XenbusState")

// WriteBackIfPresent writes BackPath/key only while the backend directory
// is there (its state node exists), in one transaction: a write after the
// toolstack or the Manager removed the directory would create it again,
// leaving a stale backend that only holds key.
func (d *Dev) WriteBackIfPresent(ctx context.Context, key, val string) error {
	err := d.Store.Transaction(ctx, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, d.BackPath+"/state"); err != nil {
			if errors.Is(err, xenstore.ErrNotExist) {
				return nil
			}
			return err
		}
		return tx.Write(ctx, d.BackPath+"/"+key, val)
	})
	if err != nil {
		return fmt.Errorf("%s: write backend %s: %w", d.Name(), key, err)
	}
	return nil
}

// FrontState reads the frontend's state node. A missing node is Unknown with
// no error (as Linux's xenbus_read_driver_state); a value that is not a
// XenbusState is Unknown with an error wrapping ErrBadState; a failed read
// is Unknown with the read's error.
func (d *Dev) FrontState(ctx context.Context) (State, error) {
	v, err := d.Store.Read(ctx, d.FrontPath+"/state")
	if errors.Is(err, xenstore.ErrNotExist) {
		return Unknown, nil
	}
	if err != nil {
		return Unknown, fmt.Errorf("%s: read frontend state: %w", d.Name(), err)
	}
	s, ok := ParseState(v)
	if !ok {
		return Unknown, fmt.Errorf("%s: frontend state %q: %w", d.Name(), truncate(v, 16), ErrBadState)
	}
	return s, nil
}

// BackState reads the backend's own state node (the toolstack writes it too:
// Initialising at creation, Closing when it removes the device).
func (d *Dev) BackState(ctx context.Context) (State, error) {
	v, err := d.Store.Read(ctx, d.BackPath+"/state")
	if err != nil {
		return Unknown, fmt.Errorf("%s: read backend state: %w", d.Name(), err)
	}
	s, ok := ParseState(v)
	if !ok {
		return Unknown, fmt.Errorf("%s: backend state %q is not a XenbusState", d.Name(), truncate(v, 16))
	}
	return s, nil
}

// SwitchState writes the backend's state node in a transaction, as
// xenbus_switch_state does: if the node is gone the device is being removed
// and nothing is written (a removed directory must not reappear); writing the
// state it already has is a no-op.
func (d *Dev) SwitchState(ctx context.Context, s State) error {
	p := d.BackPath + "/state"
	val := strconv.Itoa(int(s))
	err := d.Store.Transaction(ctx, func(tx *xenstore.Tx) error {
		cur, err := tx.Read(ctx, p)
		if errors.Is(err, xenstore.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if strings.TrimSpace(cur) == val {
			return nil
		}
		return tx.Write(ctx, p, val)
	})
	if err != nil {
		return fmt.Errorf("%s: switch state to %v: %w", d.Name(), s, err)
	}
	d.logger().Debug("xenbus: state", "dev", d.Name(), "state", s.String())
	return nil
}

// ErrorPath is where WriteError writes: error/<backend node>/error under the
// driver domain's home, as Linux's xenbus_dev_error does with the device's
// nodename relative to /local/domain/<self>.
func (d *Dev) ErrorPath() string {
	rest := strings.TrimPrefix(d.BackPath, "/")
	// /local/domain/<self>/backend/... -> /local/domain/<self>/error/backend/...
	if strings.HasPrefix(rest, "local/domain/") {
		parts := strings.SplitN(rest, "/", 4)
		if len(parts) == 4 {
			return "/local/domain/" + parts[2] + "/error/" + parts[3] + "/error"
		}
	}
	return "error/" + rest + "/error"
}

// WriteError records err for the toolstack the way xenbus_dev_fatal does
// ("<positive errno> <message>" at ErrorPath; the errno err wraps, ENOENT
// or EACCES for fs.ErrNotExist or fs.ErrPermission, else EIO) and logs it, once per distinct message.
// It never fails: a device in trouble must not get into more trouble by
// reporting it.
func (d *Dev) WriteError(ctx context.Context, err error) {
	if err == nil {
		return
	}
	errno := int(syscall.EIO)
	var en syscall.Errno
	switch {
	case errors.As(err, &en):
		errno = int(en)
	case errors.Is(err, fs.ErrNotExist):
		errno = int(syscall.ENOENT)
	case errors.Is(err, fs.ErrPermission):
		errno = int(syscall.EACCES)
	}
	msg := truncate(err.Error(), 1024)
	val := strconv.Itoa(errno) + " " + msg
	d.mu.Lock()
	dup := d.lastErr == val
	d.lastErr = val
	d.mu.Unlock()
	if dup {
		return
	}
	d.logger().Error("xenbus: device error", "dev", d.Name(), "err", msg)
	if werr := d.Store.Write(ctx, d.ErrorPath(), val); werr != nil {
		d.logger().Warn("xenbus: cannot write error node", "dev", d.Name(), "path", d.ErrorPath(), "err", werr)
	}
}

// clearError forgets the last error so the next one is logged even if it
// repeats (the device recovered in between).
func (d *Dev) clearError() {
	d.mu.Lock()
	d.lastErr = ""
	d.mu.Unlock()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
