package xenbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"drvdom/xenstore"
)

// faultConn sits between a Client and the in-memory xenstored. While armed,
// a READ of failPath is not forwarded: an ERROR reply with errno is
// injected instead, as a xenstored or xenbus device in trouble would send
// (a transient failure, not an answer about the node).
type faultConn struct {
	srv net.Conn
	pr  *io.PipeReader
	pw  *io.PipeWriter

	wmu sync.Mutex // one whole message at a time into pw

	mu       sync.Mutex
	failPath string
	errno    string
	left     int // reads still to fail
	failed   int
}

func newFaultConn(srv net.Conn) *faultConn {
	pr, pw := io.Pipe()
	f := &faultConn{srv: srv, pr: pr, pw: pw}
	go f.copyReplies()
	return f
}

// copyReplies forwards the server's messages whole, so an injected reply
// never lands inside one.
func (f *faultConn) copyReplies() {
	var hdr [xenstore.HeaderSize]byte
	for {
		if _, err := io.ReadFull(f.srv, hdr[:]); err != nil {
			f.pw.CloseWithError(err)
			return
		}
		h, err := xenstore.DecodeHeader(hdr[:])
		if err != nil {
			f.pw.CloseWithError(err)
			return
		}
		msg := make([]byte, xenstore.HeaderSize+int(h.Len))
		copy(msg, hdr[:])
		if _, err := io.ReadFull(f.srv, msg[xenstore.HeaderSize:]); err != nil {
			f.pw.CloseWithError(err)
			return
		}
		f.wmu.Lock()
		_, err = f.pw.Write(msg)
		f.wmu.Unlock()
		if err != nil {
			return
		}
	}
}

func (f *faultConn) arm(path, errno string, n int) {
	f.mu.Lock()
	f.failPath, f.errno, f.left = path, errno, n
	f.mu.Unlock()
}

func (f *faultConn) injected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

func (f *faultConn) Read(p []byte) (int, error) { return f.pr.Read(p) }

// Write gets one whole message per call (the Client's rule).
func (f *faultConn) Write(p []byte) (int, error) {
	if len(p) >= xenstore.HeaderSize {
		h, err := xenstore.DecodeHeader(p[:xenstore.HeaderSize])
		if err == nil && h.Type == xenstore.MsgRead {
			path := strings.TrimSuffix(string(p[xenstore.HeaderSize:]), "\x00")
			f.mu.Lock()
			hit := f.left > 0 && path == f.failPath
			errno := f.errno
			if hit {
				f.left--
				f.failed++
			}
			f.mu.Unlock()
			if hit {
				payload := errno + "\x00"
				rep := xenstore.AppendHeader(nil, xenstore.Header{Type: xenstore.MsgError, ReqID: h.ReqID, TxID: h.TxID, Len: uint32(len(payload))})
				rep = append(rep, payload...)
				f.wmu.Lock()
				_, werr := f.pw.Write(rep)
				f.wmu.Unlock()
				if werr != nil {
					return 0, werr
				}
				return len(p), nil
			}
		}
	}
	return f.srv.Write(p)
}

func (f *faultConn) Close() error {
	err := f.srv.Close()
	f.pr.Close()
	return err
}

// TestTransientFrontStateErrorKeepsDevice: a frontend state that cannot be
// read for a while (xenstored busy, a request failing) says nothing about
// the frontend. A Connected device must stay Connected: tearing it down
// leaves the guest with a zero-sized disk (blkfront follows a Closed
// backend and never comes back on its own). Only a real Closing/Closed or a
// vanished frontend directory disconnects.
func TestTransientFrontStateErrorKeepsDevice(t *testing.T) {
	for _, errno := range []string{"EIO", "EAGAIN", "ENOMEM", "EINVAL"} {
		t.Run(errno, func(t *testing.T) {
			e := newEnv(t)
			fc := newFaultConn(e.srv.Connect(dd))
			store := xenstore.NewClient(fc)
			t.Cleanup(func() { store.Close() })
			drv := &fakeDriver{typ: "vbd"}
			m := NewManager(store, dd, slog.New(slog.NewTextHandler(io.Discard, nil)), drv)
			m.Resync = 20 * time.Millisecond
			m.RemoveNodes = true
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			})
			const id = 51728
			name := fmt.Sprintf("vbd %d/%d", guest, id)
			e.addDevice("vbd", id)
			e.handshake("vbd", id)
			e.front("vbd", id, Connected)

			fc.arm(frontPath("vbd", id)+"/state", errno, 20)
			// Every resync (20 ms) and every backend change kicks the device.
			// The bound only ends a broken run: a loaded machine (-race,
			// parallel packages) stretches the steps, and 20 failed reads
			// in 3 s was a bet on the scheduler.
			deadline := time.Now().Add(20 * time.Second)
			for fc.injected() < 20 && time.Now().Before(deadline) {
				if err := e.dom0.Write(e.ctx, backPath("vbd", id)+"/kick", "1"); err != nil {
					t.Fatal(err)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if n := fc.injected(); n < 20 {
				t.Fatalf("only %d failed reads injected", n)
			}
			time.Sleep(100 * time.Millisecond) // a few more steps with good reads
			if n := drv.count("disconnect", name); n != 0 {
				t.Fatalf("%d disconnects after transient %s reads of the frontend state", n, errno)
			}
			if got := e.read(backPath("vbd", id) + "/state"); got != "4" {
				t.Fatalf("backend state %s after transient %s reads, want 4 (Connected)", got, errno)
			}
			// A real Closing still disconnects.
			e.front("vbd", id, Closing)
			e.waitBack("vbd", id, Closing)
			if n := drv.count("disconnect", name); n != 1 {
				t.Fatalf("%d disconnects after frontend Closing, want 1", n)
			}
		})
	}
}

// detach does what dom0's libxl does for xl block-detach: online=0 and
// backend Closing in one transaction.
func (e *env) detach(typ string, id uint32) {
	e.t.Helper()
	err := e.dom0.Transaction(e.ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(e.ctx, backPath(typ, id)+"/online", "0"); err != nil {
			return err
		}
		return tx.Write(e.ctx, backPath(typ, id)+"/state", "5")
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// TestRemovalWaitsForDom0: libxl waits for backend state Closed, reads it,
// and only then removes the frontend; a backend directory deleted before
// that read fails the detach ("wanted state 6 but it was removed"). With
// RemoveGrace the directory stays, Closed, until the frontend is gone.
func TestRemovalWaitsForDom0(t *testing.T) {
	e := newEnv(t)
	// Far longer than the test waits before it removes the frontend
	// (waitBack, eventually, the sleep below: seconds on a loaded
	// machine), so only the frontend's removal can take the directory.
	e.removeGrace = time.Minute
	drv := &fakeDriver{typ: "vbd"}
	m, _ := e.start(drv)
	const id = 51728
	name := fmt.Sprintf("vbd %d/%d", guest, id)
	e.addDevice("vbd", id)
	e.handshake("vbd", id)
	e.detach("vbd", id)
	e.front("vbd", id, Closing)
	e.front("vbd", id, Closed)
	e.waitBack("vbd", id, Closed)
	eventually(t, func() string {
		if open, conn := drv.counts(); open != 0 || conn != 0 {
			return fmt.Sprintf("host side not freed: open %d connected %d", open, conn)
		}
		return ""
	})
	time.Sleep(200 * time.Millisecond) // several resyncs
	if got := e.read(backPath("vbd", id) + "/state"); got != "6" {
		t.Fatalf("backend state %q while the frontend is still there, want 6 readable", got)
	}
	// libxl read Closed: it removes the frontend (and its own records).
	if err := e.dom0.Rm(e.ctx, frontPath("vbd", id)); err != nil {
		t.Fatal(err)
	}
	e.waitRemoved(m, "vbd", id)
	if n := drv.count("close", name); n != 1 {
		t.Errorf("closes = %d, want 1", n)
	}
}

// TestRemovalGraceExpires: a frontend dom0 never removes does not keep the
// backend directory forever.
func TestRemovalGraceExpires(t *testing.T) {
	e := newEnv(t)
	e.removeGrace = 300 * time.Millisecond
	drv := &fakeDriver{typ: "vbd"}
	m, _ := e.start(drv)
	const id = 51728
	e.addDevice("vbd", id)
	e.waitBack("vbd", id, InitWait)
	// The clock starts before the detach, so before the Manager's grace
	// does: timed from when waitBack saw Closed, a test goroutine that a
	// loaded machine held off for 100 ms saw a correct removal as early.
	start := time.Now()
	e.detach("vbd", id)
	e.front("vbd", id, Closed)
	e.waitBack("vbd", id, Closed)
	e.waitRemoved(m, "vbd", id)
	if d := time.Since(start); d < e.removeGrace {
		t.Errorf("removed %v after the detach, before the %v grace", d, e.removeGrace)
	}
}

// TestWriteBackIfPresent: statistics written as a device goes must not
// bring its removed backend directory back.
func TestWriteBackIfPresent(t *testing.T) {
	e := newEnv(t)
	e.addDevice("vbd", 51728)
	d := &Dev{Store: e.ddc, Type: "vbd", FrontDom: guest, DevID: 51728, BackPath: backPath("vbd", 51728), FrontPath: frontPath("vbd", 51728)}
	if err := d.WriteBackIfPresent(e.ctx, "drvdom-stats", "{}"); err != nil {
		t.Fatal(err)
	}
	if got := e.read(d.BackPath + "/drvdom-stats"); got != "{}" {
		t.Fatalf("stats = %q", got)
	}
	if err := e.dom0.Rm(e.ctx, d.BackPath); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteBackIfPresent(e.ctx, "drvdom-stats", "{}"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.dom0.Directory(e.ctx, d.BackPath); !errors.Is(err, xenstore.ErrNotExist) {
		t.Fatalf("backend directory came back: %v", err)
	}
}
