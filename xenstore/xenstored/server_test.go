package xenstored

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"drvdom/xenstore"
)

// raw is a client end that speaks frames by hand.
type raw struct {
	t  *testing.T
	nc net.Conn
}

func dialRaw(t *testing.T, s *Server, domid uint16) *raw {
	nc := s.Connect(domid)
	t.Cleanup(func() { _ = nc.Close() })
	return &raw{t: t, nc: nc}
}

func (r *raw) send(typ xenstore.MsgType, reqID, txID uint32, payload string) {
	r.t.Helper()
	b := xenstore.AppendHeader(nil, xenstore.Header{Type: typ, ReqID: reqID, TxID: txID, Len: uint32(len(payload))})
	require.NoError(r.t, r.nc.SetWriteDeadline(time.Now().Add(5*time.Second)))
	_, err := r.nc.Write(append(b, payload...))
	require.NoError(r.t, err)
}

// recv reads one message; skipEvents drops WATCH_EVENTs before it.
func (r *raw) recv() (xenstore.Header, string, error) {
	// A pipe whose far end closed refuses deadlines: that is an answer too.
	if err := r.nc.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return xenstore.Header{}, "", err
	}
	var hdr [xenstore.HeaderSize]byte
	if _, err := io.ReadFull(r.nc, hdr[:]); err != nil {
		return xenstore.Header{}, "", err
	}
	h, err := xenstore.DecodeHeader(hdr[:])
	if err != nil {
		return h, "", err
	}
	p := make([]byte, h.Len)
	_, err = io.ReadFull(r.nc, p)
	return h, string(p), err
}

// call sends one request and returns the payload of its reply.
func (r *raw) call(typ xenstore.MsgType, reqID, txID uint32, payload string) string {
	r.t.Helper()
	r.send(typ, reqID, txID, payload)
	_, p := r.reply()
	return p
}

func (r *raw) reply() (xenstore.Header, string) {
	r.t.Helper()
	for {
		h, p, err := r.recv()
		require.NoError(r.t, err)
		if h.Type != xenstore.MsgWatchEvent {
			return h, p
		}
	}
}

// checkTree asserts the structural invariants of the live tree.
func checkTree(t testing.TB, s *Server) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	owned := map[uint16]int{}
	for path, n := range s.nodes {
		if len(n.perms) == 0 {
			t.Fatalf("%s: no perms", path)
		}
		owned[n.perms[0].Domid]++
		for _, k := range n.children {
			if s.nodes[join(path, k)] == nil {
				t.Fatalf("%s lists missing child %q", path, k)
			}
		}
		if path == "/" {
			continue
		}
		if err := xenstore.CheckPath(path); err != nil || path[0] != '/' {
			t.Fatalf("stored bad path %q: %v", path, err)
		}
		p := s.nodes[parent(path)]
		if p == nil {
			t.Fatalf("%s has no parent", path)
		}
		found := 0
		for _, k := range p.children {
			if k == base(path) {
				found++
			}
		}
		if found != 1 {
			t.Fatalf("%s listed %d times by its parent", path, found)
		}
	}
	for d, n := range owned {
		if s.owned[d] != n {
			t.Fatalf("owned[%d] = %d, tree has %d", d, s.owned[d], n)
		}
	}
}

func TestMalformedRequestsGetErrors(t *testing.T) {
	s := New()
	defer s.Close()
	s.IntroduceDomain(5)
	long := "/" + strings.Repeat("a", xenstore.AbsPathMax)
	cases := []struct {
		name    string
		dom     uint16
		typ     xenstore.MsgType
		tx      uint32
		payload string
		errno   string
	}{
		{"read without nul", 0, xenstore.MsgRead, 0, "/a", "EINVAL"},
		{"read empty", 0, xenstore.MsgRead, 0, "", "EINVAL"},
		{"read two args", 0, xenstore.MsgRead, 0, "/a\x00/b\x00", "EINVAL"},
		{"read bad char", 0, xenstore.MsgRead, 0, "/a b\x00", "EINVAL"},
		{"read doubled slash", 0, xenstore.MsgRead, 0, "//x\x00", "EINVAL"},
		{"read trailing slash", 0, xenstore.MsgRead, 0, "/x/\x00", "EINVAL"},
		{"read empty path", 0, xenstore.MsgRead, 0, "\x00", "EINVAL"},
		{"read long path", 0, xenstore.MsgRead, 0, long + "\x00", "E2BIG"},
		{"long path with a bad char", 0, xenstore.MsgRead, 0, long[:2500] + "*\x00", "EINVAL"},
		{"relative at its limit", 5, xenstore.MsgRead, 0, strings.Repeat("a", xenstore.RelPathMax) + "\x00", "ENOENT"},
		{"read missing", 0, xenstore.MsgRead, 0, "/missing\x00", "ENOENT"},
		{"read in unknown tx", 0, xenstore.MsgRead, 12345, "/\x00", "ENOENT"},
		{"write without nul", 0, xenstore.MsgWrite, 0, "/a", "EINVAL"},
		{"write bad path", 0, xenstore.MsgWrite, 0, "/a*\x00v", "EINVAL"},
		{"mkdir bad path", 0, xenstore.MsgMkdir, 0, "a//b\x00", "EINVAL"},
		{"rm root", 0, xenstore.MsgRm, 0, "/\x00", "EINVAL"},
		{"directory missing", 0, xenstore.MsgDirectory, 0, "/nope\x00", "ENOENT"},
		{"watch one arg", 0, xenstore.MsgWatch, 0, "/a\x00", "EINVAL"},
		{"watch bad path", 0, xenstore.MsgWatch, 0, "/a/\x00t\x00", "EINVAL"},
		{"unwatch unknown", 0, xenstore.MsgUnwatch, 0, "/a\x00t\x00", "ENOENT"},
		{"set_perms no perms", 0, xenstore.MsgSetPerms, 0, "/local\x00", "EINVAL"},
		{"set_perms bad perm", 0, xenstore.MsgSetPerms, 0, "/local\x00x5\x00", "EINVAL"},
		{"set_perms unknown special", 0, xenstore.MsgSetPerms, 0, "@nope\x00n0\x00", "ENOENT"},
		{"get_perms unknown special", 0, xenstore.MsgGetPerms, 0, "@nope\x00", "ENOENT"},
		{"tx end outside tx", 0, xenstore.MsgTransactionEnd, 0, "T\x00", "EINVAL"},
		{"tx end unknown tx", 0, xenstore.MsgTransactionEnd, 999, "T\x00", "ENOENT"},
		{"tx start inside tx", 0, xenstore.MsgTransactionStart, 7, "\x00", "EINVAL"},
		{"domain path not a number", 0, xenstore.MsgGetDomainPath, 0, "abc\x00", "EINVAL"},
		{"domain path out of range", 0, xenstore.MsgGetDomainPath, 0, "70000\x00", "EINVAL"},
		{"domain path signed", 0, xenstore.MsgGetDomainPath, 0, "+1\x00", "EINVAL"},
		{"introduce by guest", 5, xenstore.MsgIntroduce, 0, "6\x000\x000\x00", "EACCES"},
		{"release unknown", 0, xenstore.MsgRelease, 0, "44\x00", "ENOENT"},
		{"unknown type", 0, xenstore.MsgType(99), 0, "", "EINVAL"},
		{"watch event as request", 0, xenstore.MsgWatchEvent, 0, "/a\x00t\x00", "EINVAL"},
		{"error as request", 0, xenstore.MsgError, 0, "EINVAL\x00", "EINVAL"},
		{"control", 0, xenstore.MsgControl, 0, "check\x00", "EINVAL"},
		{"guest reads dom0 node", 5, xenstore.MsgRead, 0, "/local\x00", "EACCES"},
		{"guest writes outside home", 5, xenstore.MsgWrite, 0, "/x\x00v", "EACCES"},
	}
	conns := map[uint16]*raw{0: dialRaw(t, s, 0), 5: dialRaw(t, s, 5)}
	for i, tc := range cases {
		r := conns[tc.dom]
		id := uint32(1000 + i)
		r.send(tc.typ, id, tc.tx, tc.payload)
		h, p := r.reply()
		if assert.Equal(t, xenstore.MsgError, h.Type, tc.name) {
			assert.Equal(t, tc.errno+"\x00", p, tc.name)
		}
		assert.Equal(t, id, h.ReqID, tc.name)
		assert.Equal(t, tc.tx, h.TxID, tc.name)
	}
	// Both connections still work.
	for dom, r := range conns {
		r.send(xenstore.MsgGetDomainPath, 1, 0, "3\x00")
		h, p := r.reply()
		assert.Equal(t, xenstore.MsgGetDomainPath, h.Type, dom)
		assert.Equal(t, "/local/domain/3\x00", p)
	}
	checkTree(t, s)
}

func TestOversizedRequestClosesConnection(t *testing.T) {
	s := New()
	defer s.Close()
	r := dialRaw(t, s, 0)
	b := xenstore.AppendHeader(nil, xenstore.Header{Type: xenstore.MsgWrite, ReqID: 3, Len: xenstore.PayloadMax + 1})
	_, err := r.nc.Write(b)
	require.NoError(t, err)
	h, p := r.reply()
	assert.Equal(t, xenstore.MsgError, h.Type)
	assert.Equal(t, "E2BIG\x00", p)
	_, _, err = r.recv()
	assert.Error(t, err, "connection closed after an oversized header")
}

func TestWireTransactionsAndDomains(t *testing.T) {
	s := New()
	defer s.Close()
	r := dialRaw(t, s, 0)
	r.send(xenstore.MsgTransactionStart, 1, 0, "\x00")
	h, p := r.reply()
	require.Equal(t, xenstore.MsgTransactionStart, h.Type)
	var tx uint32
	_, err := fmt.Sscanf(strings.TrimSuffix(p, "\x00"), "%d", &tx)
	require.NoError(t, err)
	require.NotZero(t, tx)
	r.send(xenstore.MsgWrite, 2, tx, "/t/a\x00v")
	h, _ = r.reply()
	assert.Equal(t, tx, h.TxID)
	assert.Equal(t, "EINVAL\x00", r.call(xenstore.MsgTransactionEnd, 3, tx, "X\x00"))
	r.send(xenstore.MsgTransactionEnd, 4, tx, "T\x00")
	h, p = r.reply()
	assert.Equal(t, xenstore.MsgTransactionEnd, h.Type)
	assert.Equal(t, "OK\x00", p)
	assert.Equal(t, "v", r.call(xenstore.MsgRead, 5, 0, "/t/a\x00"))

	// Domain management over the wire (dom0).
	assert.Equal(t, "F\x00", r.call(xenstore.MsgIsDomainIntroduced, 6, 0, "8\x00"))
	assert.Equal(t, "OK\x00", r.call(xenstore.MsgIntroduce, 7, 0, "8\x001234\x005\x00"))
	assert.Equal(t, "T\x00", r.call(xenstore.MsgIsDomainIntroduced, 8, 0, "8\x00"))
	assert.Equal(t, "OK\x00", r.call(xenstore.MsgRelease, 9, 0, "8\x00"))
	assert.Equal(t, "F\x00", r.call(xenstore.MsgIsDomainIntroduced, 10, 0, "8\x00"))

	// RESET_WATCHES drops watches and transactions.
	require.Equal(t, "OK\x00", r.call(xenstore.MsgWatch, 11, 0, "/t\x00tok\x00"))
	r.send(xenstore.MsgTransactionStart, 12, 0, "\x00")
	_, p = r.reply()
	_, err = fmt.Sscanf(strings.TrimSuffix(p, "\x00"), "%d", &tx)
	require.NoError(t, err)
	assert.Equal(t, 1, s.WatchCount())
	assert.Equal(t, "OK\x00", r.call(xenstore.MsgResetWatches, 13, 0, "\x00"))
	assert.Equal(t, 0, s.WatchCount())
	assert.Equal(t, "ENOENT\x00", r.call(xenstore.MsgRead, 14, tx, "/t\x00"), "transaction gone")
	checkTree(t, s)
}

func TestQuotas(t *testing.T) {
	s := New()
	defer s.Close()
	s.IntroduceDomain(5)
	r := dialRaw(t, s, 5)
	for i := range maxWatches {
		require.Equal(t, "OK\x00", r.call(xenstore.MsgWatch, uint32(i), 0, fmt.Sprintf("w%d\x00t\x00", i)))
	}
	assert.Equal(t, "E2BIG\x00", r.call(xenstore.MsgWatch, 1, 0, "over\x00t\x00"))
	assert.Equal(t, "EEXIST\x00", r.call(xenstore.MsgWatch, 1, 0, "w0\x00t\x00"))

	for range maxTransactions {
		r.send(xenstore.MsgTransactionStart, 2, 0, "\x00")
		h, _ := r.reply()
		require.Equal(t, xenstore.MsgTransactionStart, h.Type)
	}
	assert.Equal(t, "ENOSPC\x00", r.call(xenstore.MsgTransactionStart, 2, 0, "\x00"))

	// Node quota for an unprivileged domain (its home counts).
	var last string
	for i := 0; i < maxNodes+1; i++ {
		r.send(xenstore.MsgWrite, 3, 0, fmt.Sprintf("n/%d\x00v", i))
		_, last = r.reply()
		if last != "OK\x00" {
			break
		}
	}
	assert.Equal(t, "ENOSPC\x00", last)

	// A directory listing that does not fit a reply.
	d := dialRaw(t, s, 0)
	for i := range 300 {
		require.Equal(t, "OK\x00", d.call(xenstore.MsgWrite, 4, 0, fmt.Sprintf("/big/child-with-a-long-name-%04d\x00", i)))
	}
	assert.Equal(t, "E2BIG\x00", d.call(xenstore.MsgDirectory, 5, 0, "/big\x00"))
	checkTree(t, s)
}

// A connection that never reads its events is dropped, not buffered forever,
// and does not slow anyone else.
func TestNonReadingClientDropped(t *testing.T) {
	s := New()
	defer s.Close()
	lazy := dialRaw(t, s, 0)
	lazy.send(xenstore.MsgWatch, 1, 0, "/flood\x00"+strings.Repeat("t", 200)+"\x00")
	// The watch is registered when the server has read it; flooding before
	// that found no watch and counted it dropped after one write (a CI run).
	require.Eventually(t, func() bool { return s.WatchCount() == 1 }, 10*time.Second, time.Millisecond, "watch never registered")
	w := dialRaw(t, s, 0)
	payload := "/flood/" + strings.Repeat("x", 200) + "\x00v"
	dropped := false
	for i := 0; i < 2*maxQueued/400; i++ {
		require.Equal(t, "OK\x00", w.call(xenstore.MsgWrite, uint32(i), 0, payload))
		if s.WatchCount() == 0 {
			dropped = true
			t.Logf("dropped after %d events of ~%d bytes", i+1, len(payload)+220)
			assert.Greater(t, (i+1)*(len(payload)+220), maxQueued/2, "dropped too early")
			break
		}
	}
	assert.True(t, dropped, "lazy connection still registered")
}

func TestDump(t *testing.T) {
	s := New()
	defer s.Close()
	s.IntroduceDomain(3)
	d := s.Dump()
	assert.Contains(t, d, "/ = \"\" (n0)\n")
	assert.Contains(t, d, "      3 = \"\" (n3)\n")
	assert.Contains(t, d, "@releaseDomain (n0)")
}

func TestServerCloseEndsServe(t *testing.T) {
	s := New()
	cli, srv := net.Pipe()
	done := make(chan struct{})
	go func() {
		s.Serve(srv, 0)
		close(done)
	}()
	r := &raw{t: t, nc: cli}
	r.send(xenstore.MsgWatch, 1, 0, "/x\x00t\x00")
	r.reply()
	s.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running after Close")
	}
	assert.Equal(t, 0, s.WatchCount())
	// Serve after Close returns at once.
	c2, s2 := net.Pipe()
	s.Serve(s2, 0)
	_, err := c2.Read(make([]byte, 1))
	assert.Error(t, err)
}

// FuzzServeRequests feeds arbitrary bytes as a client (dom0 or a guest) and
// checks the server neither panics nor corrupts its tree, and that every
// reply is a well-formed frame.
func FuzzServeRequests(f *testing.F) {
	frame := func(typ xenstore.MsgType, tx uint32, payload string) []byte {
		b := xenstore.AppendHeader(nil, xenstore.Header{Type: typ, ReqID: 1, TxID: tx, Len: uint32(len(payload))})
		return append(b, payload...)
	}
	cat := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }
	f.Add(false, frame(xenstore.MsgWrite, 0, "/a/b\x00v"))
	f.Add(true, frame(xenstore.MsgWrite, 0, "data/x\x00v"))
	f.Add(false, cat(frame(xenstore.MsgWatch, 0, "/a\x00t\x00"), frame(xenstore.MsgWrite, 0, "/a/c\x00x"), frame(xenstore.MsgRm, 0, "/a\x00")))
	f.Add(false, cat(frame(xenstore.MsgTransactionStart, 0, "\x00"), frame(xenstore.MsgWrite, 1, "/t\x00v"),
		frame(xenstore.MsgRm, 1, "/local\x00"), frame(xenstore.MsgTransactionEnd, 1, "T\x00")))
	f.Add(true, frame(xenstore.MsgSetPerms, 0, "data\x00b5\x00r0\x00"))
	f.Add(false, frame(xenstore.MsgDirectory, 0, "/local/domain\x00"))
	f.Add(false, xenstore.AppendHeader(nil, xenstore.Header{Type: xenstore.MsgRead, Len: 5000}))
	f.Add(true, []byte{1, 2, 3})
	f.Add(false, cat(frame(xenstore.MsgWrite, 0, "/d/a\x00"), frame(xenstore.MsgWrite, 0, "/d/b\x00"),
		frame(xenstore.MsgDirectoryPart, 0, "/d\x002\x00")))
	f.Add(false, cat(frame(xenstore.MsgWatch, 0, "@releaseDomain\x00r\x00"), frame(xenstore.MsgIntroduce, 0, "7\x000\x000\x00"),
		frame(xenstore.MsgRelease, 0, "7\x00"), frame(xenstore.MsgSetPerms, 0, "@releaseDomain\x00n0\x00r5\x00")))
	f.Add(true, cat(frame(xenstore.MsgWatch, 0, "data\x00t\x00"), frame(xenstore.MsgTransactionStart, 0, "\x00"),
		frame(xenstore.MsgMkdir, 1, "data/x/y\x00"), frame(xenstore.MsgUnwatch, 0, "data\x00t\x00"),
		frame(xenstore.MsgResetWatches, 0, "\x00")))
	f.Fuzz(func(t *testing.T, guest bool, data []byte) {
		s := New()
		defer s.Close()
		s.IntroduceDomain(5)
		dom := uint16(0)
		if guest {
			dom = 5
		}
		cli, srv := net.Pipe()
		served := make(chan struct{})
		go func() {
			s.Serve(srv, dom)
			close(served)
		}()
		readErr := make(chan error, 1)
		go func() {
			var hdr [xenstore.HeaderSize]byte
			for {
				if _, err := io.ReadFull(cli, hdr[:]); err != nil {
					readErr <- nil
					return
				}
				h, err := xenstore.DecodeHeader(hdr[:])
				if err != nil {
					readErr <- fmt.Errorf("server sent bad header: %w", err)
					return
				}
				if _, err := io.CopyN(io.Discard, cli, int64(h.Len)); err != nil {
					readErr <- nil
					return
				}
			}
		}()
		_ = cli.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = cli.Write(data)
		// Serve handles what it has buffered, then sees EOF.
		_ = cli.Close()
		<-served
		if err := <-readErr; err != nil {
			t.Fatal(err)
		}
		checkTree(t, s)
		if got := s.WatchCount(); got != 0 {
			t.Fatalf("%d watches left after the connection ended", got)
		}
	})
}

func TestErrnoNamesKnownToClient(t *testing.T) {
	// Every errno the server sends maps to a client sentinel.
	for _, e := range []string{"EINVAL", "ENOENT", "EACCES", "EPERM", "EAGAIN", "EEXIST", "E2BIG", "ENOSPC"} {
		err := &xenstore.Error{Op: "READ", Errno: e}
		assert.NotNil(t, errors.Unwrap(err), e)
	}
}

func TestDirectoryPart(t *testing.T) {
	s := New()
	defer s.Close()
	r := dialRaw(t, s, 0)
	for _, k := range []string{"aa", "b", "cccc"} {
		require.Equal(t, "OK\x00", r.call(xenstore.MsgWrite, 1, 0, "/d/"+k+"\x00"))
	}
	s.mu.Lock()
	gen := fmt.Sprint(s.nodes["/d"].gen)
	s.mu.Unlock()
	for off, want := range map[string]string{
		"0":  gen + "\x00aa\x00b\x00cccc\x00\x00",
		"3":  gen + "\x00b\x00cccc\x00\x00",
		"5":  gen + "\x00cccc\x00\x00",
		"10": gen + "\x00\x00",
		"99": gen + "\x00\x00",
	} {
		r.send(xenstore.MsgDirectoryPart, 2, 0, "/d\x00"+off+"\x00")
		h, p := r.reply()
		assert.Equal(t, xenstore.MsgDirectoryPart, h.Type, off)
		assert.Equal(t, want, p, off)
	}
	for _, bad := range []string{"/d\x00", "/d\x00-1\x00", "/d\x00x\x00", "/d\x000\x00extra\x00"} {
		assert.Equal(t, "EINVAL\x00", r.call(xenstore.MsgDirectoryPart, 3, 0, bad), "%q", bad)
	}
}
