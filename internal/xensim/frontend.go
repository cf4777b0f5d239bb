package xensim

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"drvdom/evtchn"
	"drvdom/xenstore"
)

// XenbusState values of the frontend lifecycle.
const (
	stateClosing = 5
	stateClosed  = 6
)

// BackendInt reads back/key as a decimal integer; def when the key is
// missing, unreadable or not a number (what a frontend assumes of a
// backend that does not publish a feature).
func BackendInt(ctx context.Context, store *xenstore.Client, back, key string, def int) int {
	v, err := store.Read(ctx, back+"/"+key)
	if err != nil {
		return def
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return def
	}
	return int(n)
}

// BackendOf reads where the toolstack put the backend of the frontend
// directory front: the backend directory and the backend's domain.
func BackendOf(ctx context.Context, store *xenstore.Client, front string) (string, uint16, error) {
	back, err := store.Read(ctx, front+"/backend")
	if err != nil {
		return "", 0, err
	}
	bd, err := store.Read(ctx, front+"/backend-id")
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(bd, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("backend-id %q: %w", bd, err)
	}
	return back, uint16(n), nil
}

// WaitBackend calls done with the backend's state (back/state read as
// BackendInt, 0 when gone) now and after every change of it, watching it
// with token, until done reports true or an error. When ctx ends first it
// returns ctx.Err() with the last state read.
func WaitBackend(ctx context.Context, store *xenstore.Client, back, token string, done func(state int) (bool, error)) (int, error) {
	w, err := store.Watch(ctx, back+"/state", token)
	if err != nil {
		return 0, err
	}
	defer w.Close()
	for {
		s := BackendInt(ctx, store, back, "state", 0)
		if ok, err := done(s); ok || err != nil {
			return s, err
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-w.Events():
		}
	}
}

// Receiver owns the goroutine that serves a simulated frontend's event
// channels. The zero value is ready; it runs at most one goroutine.
type Receiver struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start serves evh until Stop: it waits for events, unmasks each port that
// fired and calls serve with it, one port at a time. serve's context
// carries ctx's values but not its cancellation (the frontend outlives the
// call that attached it) and ends at Stop.
func (r *Receiver) Start(ctx context.Context, evh evtchn.Handle, serve func(ctx context.Context, port evtchn.Port)) {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ports := make([]evtchn.Port, 16)
		for {
			n, err := evh.Wait(rctx, ports)
			if err != nil {
				return
			}
			for _, p := range ports[:n] {
				evh.Unmask(p)
				serve(rctx, p)
			}
		}
	}()
}

// Stop cancels the goroutine (if Start ran) and waits for it to return.
func (r *Receiver) Stop() {
	if r.cancel != nil {
		r.cancel()
	}
	r.wg.Wait()
}

// CloseFrontend runs a frontend's side of closing, as Linux's frontends
// do when the device goes: it writes Closing to front/state, waits until
// the backend at back is Closing, Closed or gone (watching back/state with
// token), calls release (which must stop the frontend and end every grant
// and event channel it holds; it runs even when the write or the wait
// failed), then writes Closed. It returns the first error.
func CloseFrontend(ctx context.Context, store *xenstore.Client, front, back, token string, release func()) error {
	err := store.Write(ctx, front+"/state", strconv.Itoa(stateClosing))
	if err == nil {
		_, err = WaitBackend(ctx, store, back, token, func(s int) (bool, error) {
			return s == stateClosing || s == stateClosed || s == 0, nil
		})
	}
	release()
	if e := store.Write(ctx, front+"/state", strconv.Itoa(stateClosed)); e != nil && err == nil {
		err = e
	}
	return err
}
