package xenstore

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeXenbusDev answers every request after a short delay, like xenstored
// behind the kernel's xenbus thread, and records the most requests it ever
// had unanswered at once. The Linux xenbus device keeps a written payload in
// the file's single message buffer until its thread has sent it, so a client
// of the device must never have two requests in flight.
type fakeXenbusDev struct {
	peer        net.Conn
	outstanding atomic.Int32
	maxOut      atomic.Int32
	wmu         sync.Mutex
}

func (f *fakeXenbusDev) serve(t *testing.T) {
	for {
		var hdr [HeaderSize]byte
		if _, err := io.ReadFull(f.peer, hdr[:]); err != nil {
			return
		}
		h, err := DecodeHeader(hdr[:])
		if err != nil {
			t.Errorf("bad header: %v", err)
			return
		}
		p := make([]byte, h.Len)
		if _, err := io.ReadFull(f.peer, p); err != nil {
			return
		}
		n := f.outstanding.Add(1)
		for {
			m := f.maxOut.Load()
			if n <= m || f.maxOut.CompareAndSwap(m, n) {
				break
			}
		}
		go func() {
			time.Sleep(time.Millisecond)
			var payload string
			switch h.Type {
			case MsgRead:
				payload = "value"
			case MsgTransactionStart:
				payload = "7\x00"
			default:
				payload = "OK\x00"
			}
			rep := AppendHeader(nil, Header{Type: h.Type, ReqID: h.ReqID, TxID: h.TxID, Len: uint32(len(payload))})
			rep = append(rep, payload...)
			f.outstanding.Add(-1) // answered before the client can see it
			f.wmu.Lock()
			_, _ = f.peer.Write(rep)
			f.wmu.Unlock()
		}()
	}
}

func hammer(t *testing.T, c *Client) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				p := fmt.Sprintf("/local/domain/1/g%d/k%d", g, i)
				if err := c.Write(ctx, p, "x"); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				if _, err := c.Read(ctx, p); err != nil {
					t.Errorf("read: %v", err)
					return
				}
				if i%5 == 0 {
					tctx, cancel := context.WithTimeout(ctx, 50*time.Microsecond)
					_, _ = c.Read(tctx, p) // abandoned requests too
					cancel()
					// An abandoned TRANSACTION_START is ended by the
					// next request: one more message in that request.
					tctx, cancel = context.WithTimeout(ctx, 50*time.Microsecond)
					if tx, err := c.Begin(tctx); err == nil {
						_ = tx.Abort(ctx)
					}
					cancel()
				}
			}
		}()
	}
	wg.Wait()
}

func TestXenbusDeviceOneRequestInFlight(t *testing.T) {
	cli, peer := net.Pipe()
	f := &fakeXenbusDev{peer: peer}
	go f.serve(t)
	c := newClient(cli, true)
	defer c.Close()
	hammer(t, c)
	if m := f.maxOut.Load(); m != 1 {
		t.Fatalf("%d requests were in flight at once on a xenbus device client, want 1", m)
	}
}

// The socket transport keeps pipelining (the check above can fail).
func TestSocketClientPipelines(t *testing.T) {
	cli, peer := net.Pipe()
	f := &fakeXenbusDev{peer: peer}
	go f.serve(t)
	c := NewClient(cli)
	defer c.Close()
	hammer(t, c)
	if m := f.maxOut.Load(); m < 2 {
		t.Fatalf("max %d requests in flight on a socket client: the test cannot tell", m)
	}
}

// An abandoned TRANSACTION_START on a xenbus device client is ended by the
// next request with its own END, and the request waits for the END's reply
// before it is written.
func TestXenbusDeviceStaleTransactionEndedFirst(t *testing.T) {
	cli, peer := net.Pipe()
	defer peer.Close()
	c := newClient(cli, true)
	defer c.Close()
	h := abandonedBegin(t, c, peer)
	writeReply(t, peer, h, "9\x00") // the server started it anyway

	read := readAsync(c, "/x")
	h, body := readFrame(t, peer)
	if h.Type != MsgTransactionEnd || h.TxID != 9 || body != "F\x00" {
		t.Fatalf("want END F of tx 9 first, got %v tx %d %q", h.Type, h.TxID, body)
	}
	// Nothing more may arrive before the END is answered.
	_ = peer.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	var b [1]byte
	if n, err := peer.Read(b[:]); n != 0 || err == nil {
		t.Fatalf("a second message was written before the END's reply (n=%d err=%v)", n, err)
	}
	_ = peer.SetReadDeadline(time.Time{})
	writeReply(t, peer, h, "OK\x00")
	h, body = readFrame(t, peer)
	if h.Type != MsgRead || body != "/x\x00" {
		t.Fatalf("want READ /x, got %v %q", h.Type, body)
	}
	writeReply(t, peer, h, "v")
	if err := <-read; err != nil {
		t.Fatalf("read: %v", err)
	}
}
