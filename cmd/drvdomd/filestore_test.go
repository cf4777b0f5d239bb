package main

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseStoreMsg(t *testing.T) {
	for _, c := range []struct {
		in, op string
		k      storeKey
		ok     bool
	}{
		{"keep vif3.0 0", "keep", storeKey{"vif3.0", 0}, true},
		{"release vif12.1 2", "release", storeKey{"vif12.1", 2}, true},
		{"keep vif3.0", "", storeKey{}, false},
		{"keep ../etc 0", "", storeKey{}, false},
		{"keep a/b 0", "", storeKey{}, false},
		{"keep vif3.0 -1", "", storeKey{}, false},
		{"keep vif3.0 256", "", storeKey{}, false},
		{"drop vif3.0 0", "", storeKey{}, false},
		{"keep averyveryverylongname 0", "", storeKey{}, false},
		{"", "", storeKey{}, false},
	} {
		op, k, err := parseStoreMsg([]byte(c.in))
		if (err == nil) != c.ok || op != c.op || k != c.k {
			t.Errorf("parse %q = %q %v %v, want %q %v ok=%v", c.in, op, k, err, c.op, c.k, c.ok)
		}
	}
}

// storePair connects a worker's client to a supervisor's store in this
// process; serve runs until the client closes.
func storePair(t *testing.T) (*fileStore, *storeClient, <-chan struct{}) {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "store")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	fs := newFileStore(quiet)
	srv, cli := conn(pair[0]), conn(pair[1])
	done := make(chan struct{})
	go func() { defer close(done); fs.serve(srv) }()
	c := &storeClient{conn: cli, log: quiet, inherit: map[string]map[int]*os.File{}}
	t.Cleanup(func() { cli.Close(); <-done; fs.Close() })
	return fs, c, done
}

func waitLen(t *testing.T, fs *fileStore, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for fs.Len() != want {
		if time.Now().After(deadline) {
			t.Fatalf("store holds %d files, want %d", fs.Len(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// writerOpen reports whether some copy of the pipe's write end is open.
func writerOpen(t *testing.T, r *os.File) bool {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var b [1]byte
	_, err := r.Read(b[:])
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return true
	case err == io.EOF:
		return false
	}
	t.Fatalf("read: %v", err)
	return false
}

// TestFileStoreKeepsFiles: a kept file outlives the sender's copy until it
// is released; queues from a number on go with a partial release; bad
// messages are dropped with the files they carry.
func TestFileStoreKeepsFiles(t *testing.T) {
	fs, c, _ := storePair(t)
	r0, w0, _ := os.Pipe()
	r1, w1, _ := os.Pipe()
	defer r0.Close()
	defer r1.Close()
	c.Keep("vif3.0", 0, w0)
	c.Keep("vif3.0", 1, w1)
	waitLen(t, fs, 2)
	w0.Close()
	w1.Close()
	if !writerOpen(t, r0) || !writerOpen(t, r1) {
		t.Fatal("a kept file closed with the sender's copy")
	}
	// Bad messages: the file they carry is closed, nothing kept.
	r2, w2, _ := os.Pipe()
	defer r2.Close()
	rc, _ := w2.SyscallConn()
	rc.Control(func(fd uintptr) {
		c.conn.WriteMsgUnix([]byte("keep ../x 0"), unix.UnixRights(int(fd)), nil)
		c.conn.WriteMsgUnix([]byte("release vif3.0 0"), unix.UnixRights(int(fd)), nil)
	})
	w2.Close()
	c.Release("vif9.9", 0) // holds nothing: nothing happens
	// Messages are sent without an answer: the store has handled both
	// bad ones once their copies of w2 are closed. Wait for that (20 ms
	// of sleep was a bet on the serving goroutine's turn), then look.
	for deadline := time.Now().Add(10 * time.Second); writerOpen(t, r2); {
		if time.Now().After(deadline) {
			t.Fatal("the file of a refused message was kept open")
		}
	}
	if fs.Len() != 2 {
		t.Fatalf("after bad messages the store holds %d files, want 2", fs.Len())
	}
	c.Release("vif3.0", 1)
	waitLen(t, fs, 1)
	if !writerOpen(t, r0) || writerOpen(t, r1) {
		t.Error("release from queue 1 did not close exactly queue 1")
	}
	c.Release("vif3.0", 0)
	waitLen(t, fs, 0)
	if writerOpen(t, r0) {
		t.Error("queue 0 open after its release")
	}
}

// TestStoreClientTakeAndUnclaimed: Take hands queues 0..n-1 over and
// releases what follows a gap; what no device took is released after the
// grace.
func TestStoreClientTakeAndUnclaimed(t *testing.T) {
	fs, c, _ := storePair(t)
	pipes := map[string]*os.File{}
	for _, k := range []storeKey{{"vif3.0", 0}, {"vif3.0", 1}, {"vif3.0", 3}, {"vif4.0", 0}} {
		r, w, _ := os.Pipe()
		defer r.Close()
		pipes[k.String()] = r
		c.Keep(k.tap, k.queue, w) // the supervisor's copy
		if c.inherit[k.tap] == nil {
			c.inherit[k.tap] = map[int]*os.File{}
		}
		c.inherit[k.tap][k.queue] = w // the worker's inherited copy
	}
	waitLen(t, fs, 4)
	if n := c.Inherited(); n != 4 {
		t.Fatalf("inherited %d", n)
	}
	got := c.Take("vif3.0")
	if len(got) != 2 {
		t.Fatalf("took %d queues, want 2", len(got))
	}
	waitLen(t, fs, 3) // queue 3 released: it followed a gap
	if c.Take("vif3.0") != nil || c.Take("vif7.0") != nil {
		t.Error("took something twice or that was never there")
	}
	c.releaseUnclaimed(t.Context(), time.Millisecond)
	waitLen(t, fs, 2) // vif4.0 went
	if writerOpen(t, pipes["vif4.0/0"]) || writerOpen(t, pipes["vif3.0/3"]) {
		t.Error("an unclaimed or gapped queue stayed open")
	}
	if !writerOpen(t, pipes["vif3.0/0"]) || !writerOpen(t, pipes["vif3.0/1"]) {
		t.Error("a taken queue was closed")
	}
	for _, f := range got {
		f.Close()
	}
}

// fakeStoreWorker is a worker (TestMain) that keeps a file the first time
// and finds it again the second: start 1 opens path, writes "1", keeps it
// as vif1.0 queue 0 and dies (exit 1); start 2 takes vif1.0, writes "2"
// through the inherited file, releases it and exits fatal.
func fakeStoreWorker(path string) int {
	hb := os.NewFile(3, "heartbeat")
	hb.Write([]byte{1})
	c := openStoreClient(quiet)
	if c == nil {
		return 97
	}
	if c.Inherited() == 0 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
		if err != nil {
			return 96
		}
		f.Write([]byte("1"))
		c.Keep("vif1.0", 0, f)
		return 1
	}
	fs := c.Take("vif1.0")
	if len(fs) != 1 {
		return 95
	}
	fs[0].Write([]byte("2"))
	c.Release("vif1.0", 0)
	return exitFatal
}

// TestSupervisorPassesKeptFiles: a file a worker kept reaches the next
// worker through the real supervisor (socket, ExtraFiles, environment),
// and a release empties the store.
func TestSupervisorPassesKeptFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := newSup(fakeCommand("store:"+path, nil))
	s.Files = newFileStore(quiet)
	defer s.Files.Close()
	_, done := runSup(t, s)
	select {
	case err := <-done:
		if !errors.Is(err, errFatal) {
			t.Fatalf("supervisor: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("supervisor did not finish")
	}
	b, _ := os.ReadFile(path)
	if string(b) != "12" || s.Starts() != 2 {
		t.Errorf("file %q after %d starts, want \"12\" after 2", b, s.Starts())
	}
	if n := s.Files.Len(); n != 0 {
		t.Errorf("store holds %d files after the release", n)
	}
}
