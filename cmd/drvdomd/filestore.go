package main

// ======================= the supervisor's file store =======================
// A TAP device goes with its last open queue file, so a worker's death used
// to take its vifs' TAPs out of the bridge: every frame for the guest was
// dropped until the next worker made new TAPs, and a TCP stream through
// repeated kills backed off into long stalls. Now the worker hands a copy of
// every TAP queue file it opens to the supervisor (SCM_RIGHTS over a
// SOCK_SEQPACKET socket, fd 4 in the worker); the supervisor passes the
// copies it holds to each new worker (DRVDOMD_KEPT names them), and the
// worker's netback takes them back instead of creating the TAP again. The
// TAP thus stays in the bridge, carrier on, and queues the frames that
// arrive while no worker runs. A vif's teardown releases its copies.
//
// Messages, worker to supervisor, one per packet:
//
//	"keep <tap> <queue>" with one file descriptor
//	"release <tap> <from>" drops queues >= from
//
// The supervisor keeps raw descriptors, never *os.File: an os.File of a
// non-blocking descriptor joins the Go netpoller, which would wake the idle
// supervisor for every frame the TAP queues.
// ===========================================================================

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"drvdom/netback"
)

const (
	// envStoreFD names the worker's end of the store socket.
	envStoreFD = "DRVDOMD_STORE_FD"
	// envKept lists the files the supervisor passed: "tap/queue=fd,...".
	envKept = "DRVDOMD_KEPT"
	// keptGrace: files a new worker inherited and no device took back by
	// then belong to vifs that went while no worker ran; they are released.
	keptGrace = 90 * time.Second
	// maxStoreMsg bounds one message (a TAP name is at most 15 bytes).
	maxStoreMsg = 64
)

// tapNameRE is what a stored TAP name may be (IFNAMSIZ-1, no separators).
var tapNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,15}$`)

// storeKey is one stored queue.
type storeKey struct {
	tap   string
	queue int
}

func (k storeKey) String() string { return k.tap + "/" + strconv.Itoa(k.queue) }

// parseStoreMsg parses "keep|release <tap> <n>".
func parseStoreMsg(b []byte) (op string, k storeKey, err error) {
	f := strings.Fields(string(b))
	if len(f) != 3 || (f[0] != "keep" && f[0] != "release") || !tapNameRE.MatchString(f[1]) {
		return "", k, fmt.Errorf("bad message %q", truncate(string(b), 40))
	}
	n, err := strconv.Atoi(f[2])
	if err != nil || n < 0 || n > 255 {
		return "", k, fmt.Errorf("bad queue in %q", truncate(string(b), 40))
	}
	return f[0], storeKey{f[1], n}, nil
}

// fileStore is the supervisor's side. Safe for concurrent use.
type fileStore struct {
	log *slog.Logger

	mu  sync.Mutex
	fds map[storeKey]int
}

func newFileStore(log *slog.Logger) *fileStore {
	return &fileStore{log: log, fds: map[storeKey]int{}}
}

// Len returns how many files the store holds.
func (s *fileStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fds)
}

// keep stores fd (now the store's) as k, closing what k held before.
func (s *fileStore) keep(k storeKey, fd int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.fds[k]; ok {
		unix.Close(old)
	}
	s.fds[k] = fd
}

// release closes tap's queues >= from.
func (s *fileStore) release(tap string, from int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, fd := range s.fds {
		if k.tap == tap && k.queue >= from {
			unix.Close(fd)
			delete(s.fds, k)
		}
	}
}

// Close closes every stored file.
func (s *fileStore) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, fd := range s.fds {
		unix.Close(fd)
		delete(s.fds, k)
	}
}

// attach prepares cmd (whose ExtraFiles[0] is the heartbeat pipe) for the
// store: the worker's socket end and a duplicate of every stored file go
// into ExtraFiles, named in its environment. It returns the supervisor's
// socket end and a func to call once cmd started (or failed to), which
// closes the parent's copies of what the worker got.
func (s *fileStore) attach(cmd *exec.Cmd) (*net.UnixConn, func(), error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("store socket: %w", err)
	}
	ours := os.NewFile(uintptr(pair[0]), "store")
	conn, err := net.FileConn(ours)
	ours.Close() // FileConn holds a duplicate
	if err != nil {
		unix.Close(pair[1])
		return nil, nil, fmt.Errorf("store socket: %w", err)
	}
	theirs := os.NewFile(uintptr(pair[1]), "store")
	passed := []*os.File{theirs}
	env := []string{envStoreFD + "=" + strconv.Itoa(3+len(cmd.ExtraFiles))}
	cmd.ExtraFiles = append(cmd.ExtraFiles, theirs)

	s.mu.Lock()
	keys := make([]storeKey, 0, len(s.fds))
	for k := range s.fds {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b storeKey) int { return strings.Compare(a.String(), b.String()) })
	var kept []string
	for _, k := range keys {
		// A blocking-looking duplicate for exec: os.NewFile of the
		// non-blocking original would join the netpoller, and the
		// descriptor is closed again once the worker has its own.
		d, err := unix.FcntlInt(uintptr(s.fds[k]), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			s.log.Warn("file store: cannot pass a kept TAP queue", "queue", k.String(), "err", err)
			continue
		}
		f := os.NewFile(uintptr(d), k.String())
		kept = append(kept, k.String()+"="+strconv.Itoa(3+len(cmd.ExtraFiles)))
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
		passed = append(passed, f)
	}
	s.mu.Unlock()
	if len(kept) > 0 {
		env = append(env, envKept+"="+strings.Join(kept, ","))
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, env...)
	return conn.(*net.UnixConn), func() {
		for _, f := range passed {
			f.Close()
		}
	}, nil
}

// serve handles one worker's messages until it is gone (EOF: every copy of
// its socket end closed) and closes conn.
func (s *fileStore) serve(conn *net.UnixConn) {
	defer conn.Close()
	buf := make([]byte, maxStoreMsg)
	oob := make([]byte, unix.CmsgSpace(4*4))
	bad := false
	for {
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
		var fds []int
		if oobn > 0 {
			if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
				for _, m := range msgs {
					if r, rerr := unix.ParseUnixRights(&m); rerr == nil {
						fds = append(fds, r...)
					}
				}
			}
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
		}
		if err != nil || (n == 0 && oobn == 0) {
			closeAll(fds)
			return
		}
		op, k, perr := parseStoreMsg(buf[:n])
		switch {
		case perr == nil && flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
			perr = errors.New("truncated message")
		case perr == nil && op == "keep" && len(fds) != 1:
			perr = fmt.Errorf("keep %s with %d files", k, len(fds))
		case perr == nil && op == "release" && len(fds) != 0:
			perr = fmt.Errorf("release %s with %d files", k, len(fds))
		}
		if perr != nil {
			closeAll(fds)
			if !bad {
				s.log.Warn("file store: message ignored", "err", perr)
				bad = true
			}
			continue
		}
		if op == "keep" {
			s.keep(k, fds[0])
		} else {
			s.release(k.tap, k.queue)
		}
	}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// storeClient is the worker's side: netback's TapStore.
type storeClient struct {
	conn *net.UnixConn
	log  *slog.Logger

	mu       sync.Mutex
	inherit  map[string]map[int]*os.File // tap -> queue -> file, not taken yet
	reported bool
}

var _ netback.TapStore = (*storeClient)(nil)

// openStoreClient returns the worker's store, or nil when the worker was
// started without one (by hand, or by an older supervisor).
func openStoreClient(log *slog.Logger) *storeClient {
	v := os.Getenv(envStoreFD)
	if v == "" {
		return nil
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		log.Warn("file store: bad "+envStoreFD, "value", truncate(v, 16))
		return nil
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "store")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		log.Warn("file store unavailable", "err", err)
		return nil
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		log.Warn("file store: fd " + v + " is no unix socket")
		return nil
	}
	s := &storeClient{conn: uc, log: log, inherit: map[string]map[int]*os.File{}}
	for _, item := range strings.Split(os.Getenv(envKept), ",") {
		if item == "" {
			continue
		}
		key, num, ok := strings.Cut(item, "=")
		tap, q, ok2 := strings.Cut(key, "/")
		n, err1 := strconv.Atoi(num)
		qi, err2 := strconv.Atoi(q)
		if !ok || !ok2 || err1 != nil || err2 != nil || n < 3 || !tapNameRE.MatchString(tap) {
			log.Warn("file store: bad "+envKept+" entry", "entry", truncate(item, 40))
			continue
		}
		unix.CloseOnExec(n)
		if s.inherit[tap] == nil {
			s.inherit[tap] = map[int]*os.File{}
		}
		s.inherit[tap][qi] = os.NewFile(uintptr(n), key)
	}
	return s
}

// Inherited returns how many files the worker got and no device took yet.
func (s *storeClient) Inherited() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, qs := range s.inherit {
		n += len(qs)
	}
	return n
}

// Take implements netback.TapStore: queues 0..n-1 as inherited (a gap
// ends them; what follows is released).
func (s *storeClient) Take(name string) []*os.File {
	s.mu.Lock()
	qs := s.inherit[name]
	delete(s.inherit, name)
	s.mu.Unlock()
	var out []*os.File
	for i := 0; qs[i] != nil; i++ {
		out = append(out, qs[i])
		delete(qs, i)
	}
	if len(qs) > 0 {
		for _, f := range qs {
			f.Close()
		}
		s.Release(name, len(out))
	}
	return out
}

// Keep implements netback.TapStore.
func (s *storeClient) Keep(name string, q int, f *os.File) {
	rc, err := f.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) {
			_, _, err = s.conn.WriteMsgUnix([]byte(fmt.Sprintf("keep %s %d", name, q)), unix.UnixRights(int(fd)), nil)
		})
		err = errors.Join(err, cerr)
	}
	if err != nil {
		s.warn("keep", name, err)
	}
}

// Release implements netback.TapStore.
func (s *storeClient) Release(name string, from int) {
	if _, _, err := s.conn.WriteMsgUnix([]byte(fmt.Sprintf("release %s %d", name, from)), nil, nil); err != nil {
		s.warn("release", name, err)
	}
}

func (s *storeClient) warn(op, name string, err error) {
	s.mu.Lock()
	first := !s.reported
	s.reported = true
	s.mu.Unlock()
	if first {
		s.log.Warn("file store: "+op+" failed; a TAP may not survive this worker", "tap", name, "err", err)
	}
}

// releaseUnclaimed waits keptGrace (or ctx), then releases every inherited
// file no device took: its vif went while no worker ran.
func (s *storeClient) releaseUnclaimed(ctx context.Context, grace time.Duration) {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	s.mu.Lock()
	left := s.inherit
	s.inherit = map[string]map[int]*os.File{}
	s.mu.Unlock()
	for tap, qs := range left {
		for _, f := range qs {
			f.Close()
		}
		s.log.Info("file store: released a TAP no device took back", "tap", tap, "queues", len(qs))
		s.Release(tap, 0)
	}
}

// Close closes the worker's end.
func (s *storeClient) Close() error { return s.conn.Close() }
