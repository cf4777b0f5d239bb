package xenstore_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"drvdom/xenstore"
)

// FuzzClientReplies plays a hostile xenstored: six requests are in flight
// (req_ids 1..6: READ, WRITE, TRANSACTION_START, GET_PERMS, DIRECTORY,
// WATCH), then the fuzzer's bytes arrive as the reply stream and the
// connection closes. Every request must return (a result or an error),
// nothing may panic, and the client must end torn down.
func FuzzClientReplies(f *testing.F) {
	reply := func(typ xenstore.MsgType, id uint32, p string) []byte { return frame(typ, id, p) }
	cat := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }
	f.Add(cat(reply(xenstore.MsgRead, 1, "value"), reply(xenstore.MsgWrite, 2, "OK\x00"),
		reply(xenstore.MsgTransactionStart, 3, "7\x00"), reply(xenstore.MsgGetPerms, 4, "n0\x00r5\x00"),
		reply(xenstore.MsgDirectory, 5, "a\x00b\x00"), reply(xenstore.MsgWatch, 6, "OK\x00"),
		reply(xenstore.MsgWatchEvent, 0, "/w\x00t\x00"), reply(xenstore.MsgWatchEvent, 0, "/w/x\x00t\x00")))
	f.Add(cat(reply(xenstore.MsgError, 1, "ENOENT\x00"), reply(xenstore.MsgError, 6, "EACCES\x00")))
	f.Add(reply(xenstore.MsgWatchEvent, 0, "/w\x00"))
	f.Add(reply(xenstore.MsgRead, 9, "nobody waits"))
	f.Add(xenstore.AppendHeader(nil, xenstore.Header{Type: xenstore.MsgRead, ReqID: 1, Len: 1 << 20}))
	f.Add(cat(reply(xenstore.MsgRead, 1, "x"), reply(xenstore.MsgRead, 1, "again")))
	f.Fuzz(func(t *testing.T, data []byte) {
		cli, peer := net.Pipe()
		c := xenstore.NewClient(cli)
		defer c.Close()
		frames := make(chan struct{}, 8)
		go readRequests(peer, func(xenstore.Header) { frames <- struct{}{} })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ops := []func() error{
			func() error { _, err := c.Read(ctx, "/r"); return err },
			func() error { return c.Write(ctx, "/w", "v") },
			func() error { _, err := c.Begin(ctx); return err },
			func() error { _, err := c.GetPerms(ctx, "/p"); return err },
			func() error { _, err := c.Directory(ctx, "/d"); return err },
			func() error {
				w, err := c.Watch(ctx, "/w", "t")
				if err != nil {
					return err
				}
				for range w.Events() { // closed when the connection goes
				}
				return nil
			},
		}
		done := make(chan error, len(ops))
		for _, op := range ops {
			go func() { done <- op() }()
			<-frames // sent in order: req_id i+1 is ops[i]
		}
		_, _ = peer.Write(data)
		_ = peer.Close()
		for range ops {
			err := <-done
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatal("a request hung")
			}
		}
		select {
		case <-c.Done():
		case <-ctx.Done():
			t.Fatal("client not torn down after EOF")
		}
		if !errors.Is(c.Err(), xenstore.ErrClosed) {
			t.Fatalf("Err() = %v", c.Err())
		}
	})
}

// FuzzCheckPath checks that accepted paths obey the documented rules.
func FuzzCheckPath(f *testing.F) {
	for _, s := range []string{"/", "/local/domain/0", "device/vbd/51712", "//", "/a/", "@releaseDomain",
		"/a b", "", strings.Repeat("/a", 1600)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := xenstore.CheckPath(p)
		if err != nil {
			if !errors.Is(err, xenstore.ErrInvalid) && !errors.Is(err, xenstore.ErrQuota) {
				t.Fatalf("%q: unclassified error %v", p, err)
			}
			return
		}
		if p == "" || strings.Contains(p, "//") || (p != "/" && strings.HasSuffix(p, "/")) {
			t.Fatalf("accepted %q", p)
		}
		if strings.Trim(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_@") != "" {
			t.Fatalf("accepted bad characters in %q", p)
		}
		if (p[0] == '/' && len(p) > xenstore.AbsPathMax) || (p[0] != '/' && len(p) > xenstore.RelPathMax) {
			t.Fatalf("accepted %d-byte path", len(p))
		}
		if !xenstore.IsChild(p, p) || !xenstore.IsChild(p, "/") {
			t.Fatalf("IsChild broken for %q", p)
		}
		if p != "/" && p[0] == '/' && xenstore.IsChild(p+"x", p) {
			t.Fatalf("%q counted as a child of %q", p+"x", p)
		}
	})
}
