package xenstore

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readFrame reads one request from the fake server's end.
func readFrame(t *testing.T, r io.Reader) (Header, string) {
	t.Helper()
	var hdr [HeaderSize]byte
	_, err := io.ReadFull(r, hdr[:])
	require.NoError(t, err)
	h, err := DecodeHeader(hdr[:])
	require.NoError(t, err)
	p := make([]byte, h.Len)
	_, err = io.ReadFull(r, p)
	require.NoError(t, err)
	return h, string(p)
}

// writeReply answers request h from the fake server's end.
func writeReply(t *testing.T, w io.Writer, h Header, payload string) {
	t.Helper()
	b := AppendHeader(nil, Header{Type: h.Type, ReqID: h.ReqID, TxID: h.TxID, Len: uint32(len(payload))})
	_, err := w.Write(append(b, payload...))
	require.NoError(t, err)
}

// abandonedBegin starts a TRANSACTION_START on c whose caller gives up
// (cancels its context) once the request reached the fake server's end,
// and returns the request.
func abandonedBegin(t *testing.T, c *Client, peer io.Reader) Header {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	began := make(chan error, 1)
	go func() {
		_, err := c.Begin(ctx)
		began <- err
	}()
	h, _ := readFrame(t, peer)
	require.Equal(t, MsgTransactionStart, h.Type)
	cancel()
	require.ErrorIs(t, <-began, context.Canceled)
	return h
}

// readAsync reads path through c in a goroutine; the channel gets the error.
func readAsync(c *Client, path string) <-chan error {
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(context.Background(), path)
		read <- err
	}()
	return read
}

// A TRANSACTION_START whose caller gave up still gets its transaction
// ended, by the next request, so it does not hold a server slot.
func TestAbandonedTransactionStartIsEnded(t *testing.T) {
	cli, peer := net.Pipe()
	c := NewClient(cli)
	defer c.Close()
	defer peer.Close()

	h := abandonedBegin(t, c, peer)
	writeReply(t, peer, h, "42\x00") // the server started it anyway
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.staleTx) == 1
	}, 5*time.Second, time.Millisecond)

	read := readAsync(c, "/k")
	end, p := readFrame(t, peer)
	assert.Equal(t, MsgTransactionEnd, end.Type)
	assert.Equal(t, uint32(42), end.TxID)
	assert.Equal(t, "F\x00", p)
	rd, p := readFrame(t, peer)
	assert.Equal(t, MsgRead, rd.Type)
	assert.Equal(t, "/k\x00", p)

	// The END's reply is discarded; the READ gets its own.
	writeReply(t, peer, end, "OK\x00")
	writeReply(t, peer, rd, "v")
	require.NoError(t, <-read)
}

// Steady-state allocations of the client side of a request: only the
// reply string.
func TestRequestAllocations(t *testing.T) {
	cli, peer := net.Pipe()
	c := NewClient(cli)
	defer c.Close()
	defer peer.Close()
	go func() {
		var hdr [HeaderSize]byte
		buf := make([]byte, PayloadMax)
		out := make([]byte, 0, 64)
		for {
			if _, err := io.ReadFull(peer, hdr[:]); err != nil {
				return
			}
			h, _ := DecodeHeader(hdr[:])
			if _, err := io.ReadFull(peer, buf[:h.Len]); err != nil {
				return
			}
			out = AppendHeader(out[:0], Header{Type: h.Type, ReqID: h.ReqID, Len: 5})
			out = append(out, "value"...)
			if _, err := peer.Write(out); err != nil {
				return
			}
		}
	}()
	ctx := context.Background()
	_, err := c.Read(ctx, "/k")
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := c.Read(ctx, "/bench/key"); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("client allocations per READ round trip: %v", allocs)
	assert.LessOrEqual(t, allocs, 1.0, "only the returned value may allocate")
}
