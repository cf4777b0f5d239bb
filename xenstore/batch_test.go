package xenstore_test

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"drvdom/xenstore"
)

// gatedConn holds back the server's answers until want requests were
// written: a client that waits for each answer before the next request
// never gets one (the test then fails on its deadline).
type gatedConn struct {
	net.Conn
	want int

	mu     sync.Mutex
	writes int
	open   chan struct{}
	once   sync.Once
}

func (g *gatedConn) Write(b []byte) (int, error) {
	g.mu.Lock()
	g.writes++
	if g.writes >= g.want {
		g.once.Do(func() { close(g.open) })
	}
	g.mu.Unlock()
	return g.Conn.Write(b)
}

func (g *gatedConn) Read(b []byte) (int, error) {
	select {
	case <-g.open:
	case <-time.After(3 * time.Second):
		g.once.Do(func() { close(g.open) }) // let the test see its failure
	}
	return g.Conn.Read(b)
}

func TestReadManyKeepsRequestsInFlight(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	setup := s.client(0)
	paths := []string{"/a/1", "/a/2", "/a/3", "/a/4", "/a/5", "/a/missing"}
	for i, p := range paths[:5] {
		if err := setup.Write(ctx, p, string(rune('A'+i))); err != nil {
			t.Fatal(err)
		}
	}
	g := &gatedConn{Conn: s.srv.Connect(0), want: len(paths), open: make(chan struct{})}
	c := xenstore.NewClient(g)
	defer c.Close()
	start := time.Now()
	vals, errs := c.ReadMany(ctx, paths)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("ReadMany waited %v: its requests were not in flight together", d)
	}
	for i := range 5 {
		if errs[i] != nil || vals[i] != string(rune('A'+i)) {
			t.Errorf("%s = %q, %v", paths[i], vals[i], errs[i])
		}
	}
	if !errors.Is(errs[5], xenstore.ErrNotExist) {
		t.Errorf("missing key: %v", errs[5])
	}
}

func TestTxWriteMany(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	c := s.client(0)
	kvs := []xenstore.KV{{"/b/x", "1"}, {"/b/y", "2"}, {"/b/z", string(bytes.Repeat([]byte("v"), 100))}}
	if err := c.Transaction(ctx, func(tx *xenstore.Tx) error { return tx.WriteMany(ctx, kvs) }); err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		if v, err := c.Read(ctx, kv.Key); err != nil || v != kv.Value {
			t.Errorf("%s = %q, %v", kv.Key, v, err)
		}
	}
	// A failing write fails the whole batch (and the transaction).
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		return tx.WriteMany(ctx, []xenstore.KV{{"/b/w", "1"}, {"bad//path", "2"}})
	})
	if err == nil {
		t.Fatal("a batch with a bad path committed")
	}
	if _, err := c.Read(ctx, "/b/w"); !errors.Is(err, xenstore.ErrNotExist) {
		t.Errorf("/b/w after the failed transaction: %v", err)
	}
}
