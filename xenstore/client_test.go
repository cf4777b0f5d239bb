package xenstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"drvdom/xenstore"
	"drvdom/xenstore/xenstored"
)

// store is an in-memory xenstored with clients that close with the test.
type store struct {
	t   testing.TB
	srv *xenstored.Server
}

func newStore(t testing.TB) *store {
	s := &store{t: t, srv: xenstored.New()}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("store at failure:\n%s", s.srv.Dump())
		}
		s.srv.Close()
	})
	return s
}

// client connects as domid.
func (s *store) client(domid uint16) *xenstore.Client {
	c := xenstore.NewClient(s.srv.Connect(domid))
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// next receives one event or fails after a while.
func next(t *testing.T, w *xenstore.Watch) xenstore.WatchEvent {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		require.True(t, ok, "watch channel closed")
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("no event on watch %s", w.Path())
		return xenstore.WatchEvent{}
	}
}

// watched registers a watch and takes the event that always follows the
// registration.
func watched(t *testing.T, ctx context.Context, c *xenstore.Client, path, token string) *xenstore.Watch {
	t.Helper()
	w, err := c.Watch(ctx, path, token)
	require.NoError(t, err)
	require.Equal(t, xenstore.WatchEvent{Path: path, Token: token}, next(t, w), "registration event")
	return w
}

// quiet asserts no event arrives for a short while.
func quiet(t *testing.T, w *xenstore.Watch) {
	t.Helper()
	select {
	case ev := <-w.Events():
		t.Fatalf("unexpected event %+v", ev)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestClientRoundTripEveryOp(t *testing.T) {
	s := newStore(t)
	c := s.client(0)
	ctx := ctxT(t)

	require.NoError(t, c.Write(ctx, "/a/b/c", "hello"))
	v, err := c.Read(ctx, "/a/b/c")
	require.NoError(t, err)
	assert.Equal(t, "hello", v)
	v, err = c.Read(ctx, "/a/b")
	require.NoError(t, err)
	assert.Equal(t, "", v, "parents are created empty")

	// Binary values survive.
	require.NoError(t, c.Write(ctx, "/a/bin", "x\x00y\xff"))
	v, err = c.Read(ctx, "/a/bin")
	require.NoError(t, err)
	assert.Equal(t, "x\x00y\xff", v)

	require.NoError(t, c.Mkdir(ctx, "/a/d"))
	require.NoError(t, c.Mkdir(ctx, "/a/b/c"), "mkdir of an existing node is fine")
	v, err = c.Read(ctx, "/a/b/c")
	require.NoError(t, err)
	assert.Equal(t, "hello", v, "mkdir leaves the value")

	names, err := c.Directory(ctx, "/a")
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"b", "bin", "d"}, names)
	names, err = c.Directory(ctx, "/a/d")
	require.NoError(t, err)
	assert.Empty(t, names)

	perms, err := c.GetPerms(ctx, "/a/b/c")
	require.NoError(t, err)
	assert.Equal(t, []xenstore.Perm{{Domid: 0, Access: xenstore.PermNone}}, perms)
	want := []xenstore.Perm{{Domid: 3, Access: xenstore.PermRead}, {Domid: 4, Access: xenstore.PermBoth}}
	require.NoError(t, c.SetPerms(ctx, "/a/b/c", want))
	perms, err = c.GetPerms(ctx, "/a/b/c")
	require.NoError(t, err)
	assert.Equal(t, want, perms)

	require.NoError(t, c.Rm(ctx, "/a/b"))
	_, err = c.Read(ctx, "/a/b/c")
	assert.ErrorIs(t, err, xenstore.ErrNotExist)
	var xe *xenstore.Error
	require.ErrorAs(t, err, &xe)
	assert.Equal(t, "ENOENT", xe.Errno)
	assert.Equal(t, "READ", xe.Op)
	require.NoError(t, c.Rm(ctx, "/a/b"), "rm of a missing node under an existing parent")
	assert.ErrorIs(t, c.Rm(ctx, "/nope/x"), xenstore.ErrNotExist)
	_, err = c.Directory(ctx, "/nope")
	assert.ErrorIs(t, err, xenstore.ErrNotExist)

	p, err := c.GetDomainPath(ctx, 7)
	require.NoError(t, err)
	assert.Equal(t, "/local/domain/7", p)

	w := watched(t, ctx, c, "/a", "reset-me")
	require.Equal(t, 1, s.srv.WatchCount())
	require.NoError(t, c.ResetWatches(ctx))
	assert.Equal(t, 0, s.srv.WatchCount())
	_, ok := <-w.Events()
	assert.False(t, ok, "ResetWatches closes local watches")
	require.NoError(t, w.Close())

	assert.ErrorIs(t, c.Write(ctx, "/bad//path", "x"), xenstore.ErrInvalid)
	assert.ErrorIs(t, c.Write(ctx, "/trailing/", "x"), xenstore.ErrInvalid)
	assert.ErrorIs(t, c.SetPerms(ctx, "/a", nil), xenstore.ErrInvalid)
}

func TestClientOversizedRequestRefusedLocally(t *testing.T) {
	s := newStore(t)
	c := s.client(0)
	ctx := ctxT(t)
	err := c.Write(ctx, "/big", string(make([]byte, xenstore.PayloadMax)))
	assert.ErrorIs(t, err, xenstore.ErrQuota)
	// The connection survived (xenstored would have killed it).
	require.NoError(t, c.Write(ctx, "/big", string(make([]byte, xenstore.PayloadMax-len("/big")-1))))
	v, err := c.Read(ctx, "/big")
	require.NoError(t, err)
	assert.Len(t, v, xenstore.PayloadMax-len("/big")-1)
}

func TestClient64ConcurrentRequests(t *testing.T) {
	s := newStore(t)
	c := s.client(0)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := "/conc/" + strconv.Itoa(i)
			for j := range 20 {
				want := fmt.Sprintf("%d-%d", i, j)
				if err := c.Write(ctx, path, want); err != nil {
					errs <- err
					return
				}
				got, err := c.Read(ctx, path)
				if err != nil {
					errs <- err
					return
				}
				if got != want {
					errs <- fmt.Errorf("%s: got %q want %q", path, got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	names, err := c.Directory(ctx, "/conc")
	require.NoError(t, err)
	assert.Len(t, names, 64)
}

func TestWatchEvents(t *testing.T) {
	s := newStore(t)
	s.srv.IntroduceDomain(5)
	c := s.client(0)
	ctx := ctxT(t)
	require.NoError(t, c.Mkdir(ctx, "/w/sub"))

	w, err := c.Watch(ctx, "/w", "tok")
	require.NoError(t, err)
	assert.Equal(t, xenstore.WatchEvent{Path: "/w", Token: "tok"}, next(t, w), "fires once on registration")

	_, err = c.Watch(ctx, "/other", "tok")
	assert.ErrorIs(t, err, xenstore.ErrExist, "tokens are unique per client")

	require.NoError(t, c.Write(ctx, "/w/sub/x", "1"))
	assert.Equal(t, xenstore.WatchEvent{Path: "/w/sub/x", Token: "tok"}, next(t, w))
	require.NoError(t, c.Write(ctx, "/wx", "1"))
	quiet(t, w) // a sibling with a common prefix is not a child

	// A second watch on a descendant, removed via an ancestor.
	w2 := watched(t, ctx, c, "/w/sub/x", "tok2")
	require.NoError(t, c.Rm(ctx, "/w"))
	assert.Equal(t, xenstore.WatchEvent{Path: "/w", Token: "tok"}, next(t, w))
	assert.Equal(t, xenstore.WatchEvent{Path: "/w/sub/x", Token: "tok2"}, next(t, w2),
		"removal of a parent reports the watched path")

	// SetPerms is a change too.
	require.NoError(t, c.Write(ctx, "/w", ""))
	next(t, w)
	require.NoError(t, c.SetPerms(ctx, "/w", []xenstore.Perm{{Domid: 0, Access: xenstore.PermRead}}))
	assert.Equal(t, "/w", next(t, w).Path)

	require.NoError(t, w.Close())
	_, ok := <-w.Events()
	assert.False(t, ok, "Close closes the channel")
	require.NoError(t, w.Close(), "second Close is a no-op")
	require.NoError(t, w2.Close())
	assert.Equal(t, 0, s.srv.WatchCount())

	// Relative watches of a guest report relative paths.
	g := s.client(5)
	rw, err := g.Watch(ctx, "device", "rel")
	require.NoError(t, err)
	assert.Equal(t, "device", next(t, rw).Path)
	require.NoError(t, c.Write(ctx, "/local/domain/5/device/vbd/1/state", "1"))
	assert.Equal(t, "device/vbd/1/state", next(t, rw).Path)
	require.NoError(t, g.Write(ctx, "device/x", "2"))
	assert.Equal(t, "device/x", next(t, rw).Path)
	require.NoError(t, rw.Close())
}

func TestWatchClosedWithClient(t *testing.T) {
	s := newStore(t)
	c := s.client(0)
	ctx := ctxT(t)
	w := watched(t, ctx, c, "/x", "t")
	require.NoError(t, c.Close())
	_, ok := <-w.Events()
	assert.False(t, ok)
	require.NoError(t, w.Close())
	_, err := c.Read(ctx, "/")
	assert.ErrorIs(t, err, xenstore.ErrClosed)
	require.Eventually(t, func() bool { return s.srv.WatchCount() == 0 }, 5*time.Second, 5*time.Millisecond)
}

// A subscriber that sleeps must not stall replies; its events coalesce
// into one rescan event for the watched path.
func TestWatchSlowSubscriberDoesNotBlockReplies(t *testing.T) {
	s := newStore(t)
	c := s.client(0)
	writer := s.client(0)
	ctx := ctxT(t)
	w, err := c.Watch(ctx, "/load", "slow")
	require.NoError(t, err)

	const writes = 1000
	start := time.Now()
	for i := range writes {
		require.NoError(t, writer.Write(ctx, "/load/k"+strconv.Itoa(i%10), strconv.Itoa(i)))
		// The watching client's own requests are answered too.
		if i%100 == 0 {
			_, err := c.Read(ctx, "/load/k0")
			require.NoError(t, err)
		}
	}
	t.Logf("%d writes with a sleeping subscriber in %v", writes, time.Since(start))
	// Make sure every event reached the client before draining.
	require.NoError(t, writer.Write(ctx, "/load/last", "x"))
	_, err = c.Read(ctx, "/load/last")
	require.NoError(t, err)

	var got []xenstore.WatchEvent
	for len(w.Events()) > 0 {
		got = append(got, <-w.Events())
	}
	require.Len(t, got, xenstore.WatchQueueLen+1, "bounded queue plus the rescan slot")
	assert.Equal(t, xenstore.WatchEvent{Path: "/load", Token: "slow"}, got[0], "initial event")
	assert.Equal(t, xenstore.WatchEvent{Path: "/load", Token: "slow"}, got[len(got)-1], "rescan event last")
	assert.Equal(t, uint64(1), w.Overflows())

	// Once the rescan event is taken, delivery resumes.
	require.NoError(t, writer.Write(ctx, "/load/after", "1"))
	assert.Equal(t, "/load/after", next(t, w).Path)
	require.NoError(t, w.Close())
}

func TestTransactionConflictAndRetry(t *testing.T) {
	s := newStore(t)
	a, b := s.client(0), s.client(0)
	ctx := ctxT(t)
	require.NoError(t, a.Write(ctx, "/tx/n", "0"))

	// Raw transactions: a read, then someone else writes, then commit fails.
	tx, err := a.Begin(ctx)
	require.NoError(t, err)
	v, err := tx.Read(ctx, "/tx/n")
	require.NoError(t, err)
	require.Equal(t, "0", v)
	require.NoError(t, tx.Write(ctx, "/tx/n", "1"))
	inside, err := tx.Read(ctx, "/tx/n")
	require.NoError(t, err)
	assert.Equal(t, "1", inside, "a transaction reads its own writes")
	outside, err := b.Read(ctx, "/tx/n")
	require.NoError(t, err)
	assert.Equal(t, "0", outside, "uncommitted writes are invisible")
	require.NoError(t, b.Write(ctx, "/tx/n", "5"))
	assert.ErrorIs(t, tx.Commit(ctx), xenstore.ErrAgain)
	v, err = b.Read(ctx, "/tx/n")
	require.NoError(t, err)
	assert.Equal(t, "5", v)

	// A transaction that only found a node missing conflicts with its creation.
	tx, err = a.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Read(ctx, "/tx/missing")
	require.ErrorIs(t, err, xenstore.ErrNotExist)
	require.NoError(t, tx.Write(ctx, "/tx/other", "x"))
	require.NoError(t, b.Write(ctx, "/tx/missing", "now"))
	assert.ErrorIs(t, tx.Commit(ctx), xenstore.ErrAgain)

	// Abort discards; an unknown transaction is ENOENT.
	tx, err = a.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.Write(ctx, "/tx/aborted", "x"))
	require.NoError(t, tx.Abort(ctx))
	_, err = a.Read(ctx, "/tx/aborted")
	assert.ErrorIs(t, err, xenstore.ErrNotExist)
	assert.ErrorIs(t, tx.Commit(ctx), xenstore.ErrNotExist)

	// The helper: concurrent increments from two clients all land.
	const per = 15
	var wg sync.WaitGroup
	var attempts sync.Map
	for i, c := range []*xenstore.Client{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				n := 0
				err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
					n++
					v, err := tx.Read(ctx, "/tx/n")
					if err != nil {
						return err
					}
					x, _ := strconv.Atoi(v)
					return tx.Write(ctx, "/tx/n", strconv.Itoa(x+1))
				})
				if !assert.NoError(t, err) {
					return
				}
				if n > 1 {
					attempts.Store(i, true)
				}
			}
		}()
	}
	wg.Wait()
	v, err = a.Read(ctx, "/tx/n")
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(5+4*per), v)
	retried := 0
	attempts.Range(func(any, any) bool { retried++; return true })
	t.Logf("goroutines that retried: %d", retried)
}

func TestTransactionHelperGivesUp(t *testing.T) {
	s := newStore(t)
	a, b := s.client(0), s.client(0)
	ctx := ctxT(t)
	runs := 0
	err := a.Transaction(ctx, func(tx *xenstore.Tx) error {
		runs++
		if _, err := tx.Read(ctx, "/gu"); err != nil && !errors.Is(err, xenstore.ErrNotExist) {
			return err
		}
		if err := tx.Write(ctx, "/gu", "a"); err != nil {
			return err
		}
		return b.Write(ctx, "/gu", strconv.Itoa(runs)) // always conflicts
	})
	assert.ErrorIs(t, err, xenstore.ErrAgain)
	assert.Equal(t, xenstore.TxAttempts, runs)

	// fn's own error aborts and comes back unchanged.
	mine := errors.New("mine")
	err = a.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, "/gu2", "x"); err != nil {
			return err
		}
		return mine
	})
	assert.Same(t, mine, err)
	_, err = a.Read(ctx, "/gu2")
	assert.ErrorIs(t, err, xenstore.ErrNotExist)
}

func TestTransactionWatchFiresAtCommit(t *testing.T) {
	s := newStore(t)
	c := s.client(0)
	ctx := ctxT(t)
	w := watched(t, ctx, c, "/tw", "t")
	require.NoError(t, c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, "/tw/a", "1"); err != nil {
			return err
		}
		if err := tx.Mkdir(ctx, "/tw/d/e"); err != nil {
			return err
		}
		names, err := tx.Directory(ctx, "/tw")
		if err != nil {
			return err
		}
		assert.ElementsMatch(t, []string{"a", "d"}, names)
		if err := tx.Rm(ctx, "/tw/d"); err != nil {
			return err
		}
		if err := tx.SetPerms(ctx, "/tw/a", []xenstore.Perm{{Domid: 0, Access: xenstore.PermRead}}); err != nil {
			return err
		}
		p, err := tx.GetPerms(ctx, "/tw/a")
		if err != nil {
			return err
		}
		assert.Equal(t, xenstore.PermRead, p[0].Access)
		quiet(t, w) // nothing before commit
		return nil
	}))
	var paths []string
	for range 4 {
		paths = append(paths, next(t, w).Path)
	}
	assert.Equal(t, []string{"/tw/a", "/tw/d/e", "/tw/d", "/tw/a"}, paths)
	names, err := c.Directory(ctx, "/tw")
	require.NoError(t, err)
	assert.Equal(t, []string{"a"}, names)
}

func TestPermissionsGuest(t *testing.T) {
	s := newStore(t)
	s.srv.IntroduceDomain(5)
	s.srv.IntroduceDomain(6)
	dom0, g := s.client(0), s.client(5)
	ctx := ctxT(t)
	require.NoError(t, dom0.Write(ctx, "/secret/key", "s"))

	_, err := g.Read(ctx, "/secret/key")
	assert.ErrorIs(t, err, xenstore.ErrPermission, "dom0-only node")
	_, err = g.Read(ctx, "/secret/missing")
	assert.ErrorIs(t, err, xenstore.ErrPermission, "no probing under an unreadable parent")
	_, err = g.Directory(ctx, "/local/domain")
	assert.ErrorIs(t, err, xenstore.ErrPermission)
	assert.ErrorIs(t, g.Write(ctx, "/elsewhere", "x"), xenstore.ErrPermission)
	assert.ErrorIs(t, g.Write(ctx, "/local/domain/6/x", "x"), xenstore.ErrPermission, "another guest's home")
	assert.ErrorIs(t, g.Rm(ctx, "/secret"), xenstore.ErrPermission)

	// Its own home: absolute and relative.
	require.NoError(t, g.Write(ctx, "/local/domain/5/data/a", "1"))
	require.NoError(t, g.Write(ctx, "data/b", "2"))
	v, err := g.Read(ctx, "data/a")
	require.NoError(t, err)
	assert.Equal(t, "1", v)
	_, err = g.Read(ctx, "data/missing")
	assert.ErrorIs(t, err, xenstore.ErrNotExist)
	perms, err := g.GetPerms(ctx, "data/b")
	require.NoError(t, err)
	assert.Equal(t, []xenstore.Perm{{Domid: 5, Access: xenstore.PermNone}}, perms)
	v, err = dom0.Read(ctx, "/local/domain/5/data/b")
	require.NoError(t, err, "dom0 reads everything")
	assert.Equal(t, "2", v)

	// Nodes dom0 creates under the guest's home keep the guest as owner
	// (construct_node: a privileged creator inherits the parent's owner).
	require.NoError(t, dom0.Write(ctx, "/local/domain/5/device/vbd/1/state", "1"))
	perms, err = dom0.GetPerms(ctx, "/local/domain/5/device/vbd/1/state")
	require.NoError(t, err)
	assert.Equal(t, uint16(5), perms[0].Domid)

	// Granting read access to a dom0 node.
	require.NoError(t, dom0.SetPerms(ctx, "/secret/key", []xenstore.Perm{{Domid: 0, Access: xenstore.PermNone}, {Domid: 5, Access: xenstore.PermRead}}))
	v, err = g.Read(ctx, "/secret/key")
	require.NoError(t, err)
	assert.Equal(t, "s", v)
	assert.ErrorIs(t, g.Write(ctx, "/secret/key", "x"), xenstore.ErrPermission, "read-only grant")
	assert.ErrorIs(t, g.SetPerms(ctx, "/secret/key", []xenstore.Perm{{Domid: 5, Access: xenstore.PermBoth}}),
		xenstore.ErrPermission, "not the owner")

	// The owner may change access but not give the node away.
	require.NoError(t, g.SetPerms(ctx, "data/a", []xenstore.Perm{{Domid: 5, Access: xenstore.PermRead}}))
	assert.ErrorIs(t, g.SetPerms(ctx, "data/a", []xenstore.Perm{{Domid: 6, Access: xenstore.PermNone}}), xenstore.ErrPermission)
	g6 := s.client(6)
	v, err = g6.Read(ctx, "/local/domain/5/data/a")
	require.NoError(t, err, "r as the default for others")
	assert.Equal(t, "1", v)
	_, err = g6.Read(ctx, "/local/domain/5/data/b")
	assert.ErrorIs(t, err, xenstore.ErrPermission)

	// Watches do not leak unreadable nodes.
	w := watched(t, ctx, g, "/secret", "s") // the registration event always comes
	require.NoError(t, dom0.Write(ctx, "/secret/other", "x"))
	quiet(t, w)
	require.NoError(t, dom0.Write(ctx, "/secret/key", "y"))
	assert.Equal(t, "/secret/key", next(t, w).Path, "readable node")
	require.NoError(t, w.Close())

	// Special nodes and domain management are dom0's.
	_, err = g.GetPerms(ctx, "@releaseDomain")
	assert.ErrorIs(t, err, xenstore.ErrPermission)
}

func TestIntroduceAndReleaseDomain(t *testing.T) {
	s := newStore(t)
	dom0 := s.client(0)
	ctx := ctxT(t)
	intro, err := dom0.Watch(ctx, "@introduceDomain", "i")
	require.NoError(t, err)
	rel, err := dom0.Watch(ctx, "@releaseDomain", "r")
	require.NoError(t, err)
	assert.Equal(t, "@introduceDomain", next(t, intro).Path)
	assert.Equal(t, "@releaseDomain", next(t, rel).Path)

	s.srv.IntroduceDomain(9)
	assert.Equal(t, xenstore.WatchEvent{Path: "@introduceDomain", Token: "i"}, next(t, intro))
	perms, err := dom0.GetPerms(ctx, "/local/domain/9")
	require.NoError(t, err)
	assert.Equal(t, []xenstore.Perm{{Domid: 9, Access: xenstore.PermNone}}, perms)

	g := s.client(9)
	watched(t, ctx, g, "control", "c")
	_, err = g.Watch(ctx, "@releaseDomain", "gr")
	require.NoError(t, err)
	assert.Equal(t, 4, s.srv.WatchCount())

	s.srv.ReleaseDomain(9)
	assert.Equal(t, xenstore.WatchEvent{Path: "@releaseDomain", Token: "r"}, next(t, rel))
	select {
	case <-g.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("released domain's connection stays up")
	}
	assert.ErrorIs(t, g.Err(), xenstore.ErrClosed)
	assert.Equal(t, 2, s.srv.WatchCount())
	quiet(t, intro)
}

func TestContextCancelAbandonsWait(t *testing.T) {
	cli, peer := net.Pipe()
	c := xenstore.NewClient(cli)
	defer c.Close()
	reqs := make(chan xenstore.Header, 4)
	go readRequests(peer, func(h xenstore.Header) { reqs <- h })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	_, err := c.Read(ctx, "/slow")
	cancel()
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	first := <-reqs

	// The late reply is discarded; the next request gets its own answer.
	done := make(chan error, 1)
	go func() {
		v, err := c.Read(context.Background(), "/next")
		if err == nil && v != "second" {
			err = fmt.Errorf("got %q", v)
		}
		done <- err
	}()
	second := <-reqs
	require.NotEqual(t, first.ReqID, second.ReqID)
	_, err = peer.Write(frame(xenstore.MsgRead, first.ReqID, "first"))
	require.NoError(t, err)
	_, err = peer.Write(frame(xenstore.MsgRead, second.ReqID, "second"))
	require.NoError(t, err)
	require.NoError(t, <-done)

	_, err = c.Read(canceled(), "/x")
	assert.ErrorIs(t, err, context.Canceled)
	require.NoError(t, c.Close())
	_ = peer.Close()
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// frame builds one raw message.
// readRequests plays the server's reading half: it reads request frames
// from peer until that fails (the pipe closed), passing each header to got
// and discarding the payloads.
func readRequests(peer io.Reader, got func(xenstore.Header)) {
	var hdr [xenstore.HeaderSize]byte
	for {
		if _, err := io.ReadFull(peer, hdr[:]); err != nil {
			return
		}
		h, err := xenstore.DecodeHeader(hdr[:])
		if err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, peer, int64(h.Len)); err != nil {
			return
		}
		got(h)
	}
}

func frame(typ xenstore.MsgType, reqID uint32, payload string) []byte {
	b := xenstore.AppendHeader(nil, xenstore.Header{Type: typ, ReqID: reqID, Len: uint32(len(payload))})
	return append(b, payload...)
}

// A fake xenstored that answers the first request with bytes of our choice.
func TestMalformedRepliesTearDown(t *testing.T) {
	oversized := xenstore.AppendHeader(nil, xenstore.Header{Type: xenstore.MsgRead, ReqID: 1, Len: xenstore.PayloadMax + 1})
	cases := map[string]struct {
		op    func(c *xenstore.Client) error
		reply []byte
	}{
		"oversized payload": {readOp, oversized},
		"huge length":       {readOp, xenstore.AppendHeader(nil, xenstore.Header{Type: xenstore.MsgRead, ReqID: 1, Len: 1 << 31})},
		"truncated header":  {readOp, []byte{2, 0, 0}},
		"truncated payload": {readOp, xenstore.AppendHeader(nil, xenstore.Header{Type: xenstore.MsgRead, ReqID: 1, Len: 10})},
		"wrong reply type":  {readOp, frame(xenstore.MsgWrite, 1, "OK\x00")},
		"bad errno":         {readOp, frame(xenstore.MsgError, 1, "nonsense\x00")},
		"event without token": {readOp,
			append(frame(xenstore.MsgWatchEvent, 0, "/path-only"), frame(xenstore.MsgRead, 1, "v")...)},
		"write reply not OK": {writeOp, frame(xenstore.MsgWrite, 1, "KO\x00")},
		"bad tx id":          {beginOp, frame(xenstore.MsgTransactionStart, 1, "12x\x00")},
		"bad perms":          {permsOp, frame(xenstore.MsgGetPerms, 1, "q5\x00")},
		"empty domain path":  {domPathOp, frame(xenstore.MsgGetDomainPath, 1, "")},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cli, peer := net.Pipe()
			c := xenstore.NewClient(cli)
			defer c.Close()
			go func() {
				var hdr [xenstore.HeaderSize]byte
				if _, err := io.ReadFull(peer, hdr[:]); err != nil {
					return
				}
				h, _ := xenstore.DecodeHeader(hdr[:])
				_, _ = io.CopyN(io.Discard, peer, int64(h.Len))
				_, _ = peer.Write(tc.reply)
				_ = peer.Close()
			}()
			err := tc.op(c)
			require.Error(t, err)
			assert.ErrorIs(t, err, xenstore.ErrClosed)
			select {
			case <-c.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("connection not torn down")
			}
			_, err = c.Read(context.Background(), "/after")
			assert.ErrorIs(t, err, xenstore.ErrClosed)
		})
	}
	// The protocol violations say so.
	cli, peer := net.Pipe()
	c := xenstore.NewClient(cli)
	go func() {
		_, _ = io.ReadFull(peer, make([]byte, xenstore.HeaderSize+len("/x\x00")))
		_, _ = peer.Write(oversized)
	}()
	_, err := c.Read(context.Background(), "/x")
	assert.ErrorIs(t, err, xenstore.ErrProtocol)
	require.NoError(t, c.Close())
	_ = peer.Close()
}

func readOp(c *xenstore.Client) error {
	_, err := c.Read(context.Background(), "/x")
	return err
}
func writeOp(c *xenstore.Client) error { return c.Write(context.Background(), "/x", "v") }
func beginOp(c *xenstore.Client) error {
	_, err := c.Begin(context.Background())
	return err
}
func permsOp(c *xenstore.Client) error {
	_, err := c.GetPerms(context.Background(), "/x")
	return err
}
func domPathOp(c *xenstore.Client) error {
	_, err := c.GetDomainPath(context.Background(), 1)
	return err
}

// Real Xen only: the xenbus device.
func TestXenbusDevice(t *testing.T) {
	if _, err := os.Stat(xenstore.XenbusDevice); err != nil {
		t.Skipf("needs real Xen: %s absent (%v)", xenstore.XenbusDevice, err)
	}
	c, err := xenstore.OpenXenbus()
	require.NoError(t, err)
	defer c.Close()
	ctx := ctxT(t)
	// Every domain may ask for a domain path; domid "0" exists everywhere.
	p, err := c.GetDomainPath(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, "/local/domain/0", p)
	_, err = c.Read(ctx, "domid")
	if err != nil {
		assert.True(t, errors.Is(err, xenstore.ErrNotExist) || errors.Is(err, xenstore.ErrPermission), err)
	}
}

func TestDialSocketMissing(t *testing.T) {
	_, err := xenstore.DialSocket(t.TempDir() + "/no-such-socket")
	assert.Error(t, err)
}

func BenchmarkReadRoundTrip(b *testing.B) {
	s := newStore(b)
	c := s.client(0)
	ctx := context.Background()
	require.NoError(b, c.Write(ctx, "/bench/key", "value"))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Read(ctx, "/bench/key"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadRoundTripParallel(b *testing.B) {
	s := newStore(b)
	c := s.client(0)
	ctx := context.Background()
	require.NoError(b, c.Write(ctx, "/bench/key", "value"))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Read(ctx, "/bench/key"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A directory too long for one reply is listed with DIRECTORY_PART.
func TestDirectoryTooLongForOneReply(t *testing.T) {
	s := newStore(t)
	c := s.client(0)
	ctx := ctxT(t)
	var want []string
	for i := range 400 {
		name := fmt.Sprintf("child-with-a-rather-long-name-%04d", i)
		want = append(want, name)
		require.NoError(t, c.Write(ctx, "/big/"+name, ""))
	}
	got, err := c.Directory(ctx, "/big")
	require.NoError(t, err)
	assert.Equal(t, want, got)
	require.NoError(t, c.Transaction(ctx, func(tx *xenstore.Tx) error {
		got, err := tx.Directory(ctx, "/big")
		assert.Len(t, got, 400)
		return err
	}))
}

// A subscriber that sleeps on every event while writes pour in: the
// writer's replies keep flowing, and by coalescing into rescans the
// subscriber still ends up knowing the final value of every key.
func TestWatchSleepingSubscriberSeesFinalState(t *testing.T) {
	s := newStore(t)
	c, writer := s.client(0), s.client(0)
	ctx := ctxT(t)
	w, err := c.Watch(ctx, "/slow", "s")
	require.NoError(t, err)

	const keys, writes, nap = 8, 600, 5 * time.Millisecond
	final := map[string]string{}
	state := map[string]string{}
	rescans := 0
	stop := make(chan struct{})
	subDone := make(chan struct{})
	refresh := func(path string) {
		v, err := c.Read(ctx, path)
		if err == nil {
			state[path] = v
		}
	}
	go func() {
		defer close(subDone)
		for {
			select {
			case ev, ok := <-w.Events():
				if !ok {
					return
				}
				time.Sleep(nap) // the slow part
				if ev.Path == "/slow" {
					rescans++
					names, err := c.Directory(ctx, "/slow")
					if err == nil {
						for _, n := range names {
							refresh("/slow/" + n)
						}
					}
					continue
				}
				refresh(ev.Path)
			case <-stop:
				return
			}
		}
	}()

	start := time.Now()
	for i := range writes {
		k := "/slow/k" + strconv.Itoa(i%keys)
		v := strconv.Itoa(i)
		require.NoError(t, writer.Write(ctx, k, v))
		final[k] = v
	}
	elapsed := time.Since(start)
	t.Logf("%d writes in %v while the subscriber sleeps %v per event", writes, elapsed, nap)
	assert.Less(t, elapsed, writes*nap, "writes waited for the subscriber")
	// A round trip on the watching client: every event queued before it
	// has been dispatched to the watch.
	_, err = c.Read(ctx, "/slow/k0")
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		// Only the subscriber goroutine touches state until it stops.
		return len(w.Events()) == 0
	}, 20*time.Second, time.Millisecond)
	close(stop)
	<-subDone
	// The last event or rescan was handled after the last write landed.
	assert.Equal(t, final, state)
	assert.GreaterOrEqual(t, rescans, 2, "initial event plus at least one overflow rescan")
	assert.Positive(t, w.Overflows())
	require.NoError(t, w.Close())
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		srv := xenstored.New()
		srv.IntroduceDomain(3)
		var clients []*xenstore.Client
		for _, dom := range []uint16{0, 3, 3} {
			c := xenstore.NewClient(srv.Connect(dom))
			clients = append(clients, c)
			ctx := ctxT(t)
			w, err := c.Watch(ctx, "data", "t")
			require.NoError(t, err)
			_ = w
			require.NoError(t, c.Transaction(ctx, func(tx *xenstore.Tx) error { return tx.Write(ctx, "data/x", "1") }))
		}
		require.NoError(t, clients[0].Close())
		srv.Close()
		for _, c := range clients[1:] {
			<-c.Done()
			require.NoError(t, c.Close())
		}
	}()
	// Polled by hand: assert.Eventually runs its condition in a goroutine.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if runtime.NumGoroutine() > before {
		buf := make([]byte, 1<<16)
		t.Errorf("goroutines: before %d, now %d\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	}
}
