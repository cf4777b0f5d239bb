package xenstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// Ops is the set of node operations shared by a Client (outside any
// transaction) and a Tx (inside one).
type Ops interface {
	Read(ctx context.Context, path string) (string, error)
	Write(ctx context.Context, path, value string) error
	Mkdir(ctx context.Context, path string) error
	Rm(ctx context.Context, path string) error
	Directory(ctx context.Context, path string) ([]string, error)
	GetPerms(ctx context.Context, path string) ([]Perm, error)
	SetPerms(ctx context.Context, path string, perms []Perm) error
}

var (
	_ Ops = (*Client)(nil)
	_ Ops = (*Tx)(nil)
)

// Tunables of the client.
const (
	// WatchQueueLen is how many events a Watch buffers for a subscriber
	// before it coalesces (see Watch).
	WatchQueueLen = 64
	// TxAttempts bounds how often Transaction runs its function when
	// xenstored answers EAGAIN.
	TxAttempts = 16
	// unwatchTimeout bounds the UNWATCH that Watch.Close sends.
	unwatchTimeout = 5 * time.Second
)

// Client is one connection to xenstored. It is safe for concurrent use:
// any number of requests may be in flight at once; replies are matched
// to requests by req_id. One reader goroutine, owned by the Client and
// stopped by Close (or by the connection failing), reads every reply and
// watch event; writes are serialised by a mutex and each message goes out
// in a single Write call (the xenbus device requires it).
//
// A reply that violates the protocol (bad header, oversized payload,
// wrong type, unparsable content) tears the connection down: every
// waiting request and every later one fails with an error wrapping
// ErrClosed (and ErrProtocol when that was the cause).
type Client struct {
	conn      io.ReadWriteCloser
	log       *slog.Logger
	xenbusDev bool // conn is XenbusDevice (see ResetWatches)
	// slot, for XenbusDevice only, holds a token while a request is in
	// flight: the kernel keeps each message's payload in the file's one
	// message buffer until its xenbus thread has copied it to the ring,
	// so a second write before the first reply would overwrite a payload
	// not sent yet (xenstored then gets the header of one request with the
	// bytes of another). One request at a time, as libxenstore does.
	slot chan struct{}

	wmu  sync.Mutex // serialises writes; guards wbuf
	wbuf []byte

	mu      sync.Mutex // guards everything below
	pending map[uint32]*call
	watches map[string]*Watch
	nextID  uint32
	err     error    // non-nil once torn down
	staleTx []uint32 // started by abandoned TRANSACTION_STARTs; ended by the next request

	done chan struct{} // closed when the reader has exited
}

// call is one request waiting for its reply.
type call struct {
	typ       MsgType
	ch        chan reply // capacity 1: the reader never blocks on it
	abandoned bool       // the caller gave up; guarded by Client.mu
}

type reply struct {
	typ  MsgType
	data string
	err  error
}

var callPool = sync.Pool{New: func() any { return &call{ch: make(chan reply, 1)} }}

// NewClient starts a client on conn (a xenbus device file, a unix socket,
// or one end of a pipe served by xenstored.Server). The client owns conn
// and closes it on Close.
func NewClient(conn io.ReadWriteCloser) *Client { return newClient(conn, false) }

func newClient(conn io.ReadWriteCloser, xenbusDev bool) *Client {
	c := &Client{
		conn:      conn,
		xenbusDev: xenbusDev,
		log:       slog.Default().With("pkg", "xenstore"),
		pending:   make(map[uint32]*call),
		watches:   make(map[string]*Watch),
		done:      make(chan struct{}),
	}
	if xenbusDev {
		c.slot = make(chan struct{}, 1)
	}
	go c.readLoop()
	return c
}

// Close tears the connection down and waits for the reader to exit.
// Waiting requests fail with ErrClosed; watch channels are closed.
func (c *Client) Close() error {
	c.teardown(fmt.Errorf("%w: closed by caller", ErrClosed))
	<-c.done
	return nil
}

// Done is closed once the connection is gone (Close, EOF, protocol error).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err reports why the connection is gone, or nil while it is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// teardown records cause, closes the connection, fails every waiter and
// closes every watch channel. Only the first call has an effect.
func (c *Client) teardown(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = cause
	pending := c.pending
	c.pending = make(map[uint32]*call)
	for tok, w := range c.watches {
		w.closed = true
		close(w.ch)
		delete(c.watches, tok)
	}
	c.mu.Unlock()
	_ = c.conn.Close()
	for _, cl := range pending {
		cl.ch <- reply{err: cause}
	}
}

// readLoop is the only reader of conn. It never blocks on a consumer.
func (c *Client) readLoop() {
	defer close(c.done)
	br := bufio.NewReaderSize(c.conn, HeaderSize+PayloadMax)
	var hdr [HeaderSize]byte
	buf := make([]byte, PayloadMax)
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			c.teardown(fmt.Errorf("%w: reading reply header: %w", ErrClosed, err))
			return
		}
		h, err := DecodeHeader(hdr[:])
		if err != nil {
			c.teardown(fmt.Errorf("%w: %w", ErrClosed, err))
			return
		}
		p := buf[:h.Len]
		if _, err := io.ReadFull(br, p); err != nil {
			c.teardown(fmt.Errorf("%w: reading %d-byte payload: %w", ErrClosed, h.Len, err))
			return
		}
		if err := c.dispatch(h, p); err != nil {
			c.teardown(fmt.Errorf("%w: %w", ErrClosed, err))
			return
		}
	}
}

// dispatch routes one message. An error means the peer broke the protocol.
func (c *Client) dispatch(h Header, p []byte) error {
	if h.Type == MsgWatchEvent {
		path, token, ok := splitEvent(p)
		if !ok {
			return fmt.Errorf("%w: malformed WATCH_EVENT %q", ErrProtocol, p)
		}
		c.mu.Lock()
		if w := c.watches[token]; w != nil {
			w.deliver(WatchEvent{Path: path, Token: token})
		}
		c.mu.Unlock()
		return nil
	}
	c.mu.Lock()
	cl := c.pending[h.ReqID]
	if cl != nil {
		delete(c.pending, h.ReqID)
		if cl.abandoned {
			// Its caller gave up. A transaction it started must still be
			// ended, or it would hold one of the server's slots; the next
			// request sends the END (the reader never writes).
			if h.Type == MsgTransactionStart && validateReply(h.Type, p) == nil {
				if id, err := strconv.ParseUint(string(trimNul(p)), 10, 32); err == nil {
					c.staleTx = append(c.staleTx, uint32(id))
				}
			}
			cl = nil
		}
	}
	c.mu.Unlock()
	// Every request gets exactly one reply, which frees the slot; only
	// now, once a transaction this reply started is in staleTx, so the
	// request the slot lets through ends it first.
	c.release()
	if cl == nil {
		// A reply to a request whose caller gave up (context cancelled).
		c.log.Debug("xenstore: discarding reply nobody waits for", "type", h.Type, "req_id", h.ReqID)
		return nil
	}
	var r reply
	switch h.Type {
	case MsgError:
		name, err := ParseErrorPayload(p)
		if err != nil {
			cl.ch <- reply{err: fmt.Errorf("%w: %w", ErrClosed, err)}
			return err
		}
		r = reply{typ: MsgError, data: name}
	case cl.typ:
		if err := validateReply(h.Type, p); err != nil {
			cl.ch <- reply{err: fmt.Errorf("%w: %w", ErrClosed, err)}
			return err
		}
		r = reply{typ: h.Type, data: string(p)}
	default:
		err := fmt.Errorf("%w: reply type %v to a %v request", ErrProtocol, h.Type, cl.typ)
		cl.ch <- reply{err: fmt.Errorf("%w: %w", ErrClosed, err)}
		return err
	}
	cl.ch <- r
	return nil
}

// validateReply checks the payload of a successful reply to typ.
func validateReply(typ MsgType, p []byte) error {
	switch typ {
	case MsgWrite, MsgMkdir, MsgRm, MsgSetPerms, MsgWatch, MsgUnwatch,
		MsgTransactionEnd, MsgResetWatches:
		if s := string(trimNul(p)); s != "OK" {
			return fmt.Errorf("%w: %v reply %q, want OK", ErrProtocol, typ, p)
		}
	case MsgTransactionStart:
		if _, err := strconv.ParseUint(string(trimNul(p)), 10, 32); err != nil {
			return fmt.Errorf("%w: TRANSACTION_START reply %q", ErrProtocol, p)
		}
	case MsgGetPerms:
		if _, err := ParsePerms(ParseStrings(p)); err != nil {
			return fmt.Errorf("%w: GET_PERMS reply: %w", ErrProtocol, err)
		}
	case MsgDirectoryPart:
		parts := ParseStrings(p)
		if len(p) == 0 || p[len(p)-1] != 0 || len(parts) < 2 {
			return fmt.Errorf("%w: DIRECTORY_PART reply %.64q", ErrProtocol, p)
		}
		if _, err := strconv.ParseUint(parts[0], 10, 64); err != nil {
			return fmt.Errorf("%w: DIRECTORY_PART generation %.32q", ErrProtocol, parts[0])
		}
	case MsgGetDomainPath:
		if len(trimNul(p)) == 0 {
			return fmt.Errorf("%w: empty GET_DOMAIN_PATH reply", ErrProtocol)
		}
	}
	return nil
}

func trimNul(p []byte) []byte {
	if len(p) > 0 && p[len(p)-1] == 0 {
		return p[:len(p)-1]
	}
	return p
}

// splitEvent parses "<path>\0<token>\0" (the final nul is optional).
func splitEvent(p []byte) (path, token string, ok bool) {
	s := ParseStrings(p)
	if len(s) < 2 {
		return "", "", false
	}
	return s[0], s[1], true
}

// request sends one message built from args and waits for its reply.
// Each arg is followed by a nul except the last when rawLast is set
// (WRITE's value). It returns the reply payload; an ERROR reply becomes
// an *Error for op and path.
func (c *Client) request(ctx context.Context, typ MsgType, tx uint32, rawLast bool, args ...string) (string, error) {
	n := 0
	for _, a := range args {
		n += len(a) + 1
	}
	if rawLast && len(args) > 0 {
		n--
	}
	path := ""
	if len(args) > 0 {
		path = args[0]
	}
	if n > PayloadMax {
		return "", fmt.Errorf("xenstore %v %.64q: payload of %d bytes exceeds %d: %w", typ, path, n, PayloadMax, ErrQuota)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("xenstore %v %s: %w", typ, path, err)
	}
	if err := c.acquire(ctx); err != nil {
		return "", fmt.Errorf("xenstore %v %s: %w", typ, path, err)
	}
	// From here the slot (if any) is ours until the reply to what we
	// write last arrives; every early return must give it back.

	cl := callPool.Get().(*call)
	cl.typ = typ
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		c.release()
		callPool.Put(cl)
		return "", fmt.Errorf("xenstore %v %s: %w", typ, path, err)
	}
	stale := c.staleTx
	c.staleTx = nil
	var staleIDs []uint32
	for range stale {
		c.nextID++
		staleIDs = append(staleIDs, c.nextID) // nobody waits: replies are discarded
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = cl
	c.mu.Unlock()

	c.wmu.Lock()
	var werr error
	for i, txid := range stale {
		// One message per Write: the xenbus device drops the rest of a write.
		b := AppendHeader(c.wbuf[:0], Header{Type: MsgTransactionEnd, ReqID: staleIDs[i], TxID: txid, Len: 2})
		b = append(b, 'F', 0)
		if _, werr = c.conn.Write(b); werr != nil {
			break
		}
		if c.slot != nil {
			// The END is in flight: wait for its reply before the next
			// write (see slot). Its reply releases the slot.
			c.wmu.Unlock()
			werr = c.acquire(context.WithoutCancel(ctx))
			c.wmu.Lock()
			if werr != nil {
				break
			}
		}
	}
	b := AppendHeader(c.wbuf[:0], Header{Type: typ, ReqID: id, TxID: tx, Len: uint32(n)})
	for i, a := range args {
		b = append(b, a...)
		if !rawLast || i < len(args)-1 {
			b = append(b, 0)
		}
	}
	if werr == nil {
		_, werr = c.conn.Write(b)
	}
	c.wbuf = b
	c.wmu.Unlock()
	if werr != nil {
		c.teardown(fmt.Errorf("%w: write: %w", ErrClosed, werr))
		// teardown delivered ErrClosed to cl unless the reader got it first.
	}

	select {
	case r := <-cl.ch:
		callPool.Put(cl)
		if r.err != nil {
			return "", fmt.Errorf("xenstore %v %s: %w", typ, path, r.err)
		}
		if r.typ == MsgError {
			return "", &Error{Op: typ.String(), Path: path, Errno: r.data}
		}
		return r.data, nil
	case <-ctx.Done():
		c.mu.Lock()
		if c.pending[id] == cl {
			if typ == MsgTransactionStart {
				cl.abandoned = true // dispatch remembers the transaction to end it
			} else {
				delete(c.pending, id)
			}
		}
		c.mu.Unlock()
		// cl is not reused: the reader may still hold it.
		return "", fmt.Errorf("xenstore %v %s: %w", typ, path, ctx.Err())
	}
}

// acquire takes the request slot of a XenbusDevice client (a no-op for
// other transports), waiting for the reply to the request in flight.
func (c *Client) acquire(ctx context.Context) error {
	if c.slot == nil {
		return nil
	}
	select {
	case c.slot <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		if err == nil {
			err = ErrClosed
		}
		return err
	}
}

// release gives the slot back: a reply arrived, or a request was not sent.
func (c *Client) release() {
	if c.slot == nil {
		return
	}
	select {
	case <-c.slot:
	default:
	}
}

// Node operations, shared by Client and Tx.

func (c *Client) read(ctx context.Context, tx uint32, path string) (string, error) {
	return c.request(ctx, MsgRead, tx, false, path)
}

func (c *Client) write(ctx context.Context, tx uint32, path, value string) error {
	_, err := c.request(ctx, MsgWrite, tx, true, path, value)
	return err
}

func (c *Client) mkdir(ctx context.Context, tx uint32, path string) error {
	_, err := c.request(ctx, MsgMkdir, tx, false, path)
	return err
}

func (c *Client) rm(ctx context.Context, tx uint32, path string) error {
	_, err := c.request(ctx, MsgRm, tx, false, path)
	return err
}

func (c *Client) directory(ctx context.Context, tx uint32, path string) ([]string, error) {
	s, err := c.request(ctx, MsgDirectory, tx, false, path)
	var xe *Error
	if errors.As(err, &xe) && xe.Errno == "E2BIG" {
		return c.directoryParts(ctx, tx, path)
	}
	if err != nil {
		return nil, err
	}
	return ParseStrings([]byte(s)), nil
}

// directoryParts lists a directory too long for one reply with
// DIRECTORY_PART, starting over (a bounded number of times) when the
// node's generation changes between parts.
func (c *Client) directoryParts(ctx context.Context, tx uint32, path string) ([]string, error) {
	for attempt := 0; attempt < TxAttempts; attempt++ {
		var names []string
		gen, off := "", 0
		for {
			s, err := c.request(ctx, MsgDirectoryPart, tx, false, path, strconv.Itoa(off))
			if err != nil {
				return nil, err
			}
			parts := ParseStrings([]byte(s))
			if len(parts) < 2 { // validateReply guarantees a generation
				return nil, fmt.Errorf("xenstore DIRECTORY_PART %s: short reply: %w", path, ErrProtocol)
			}
			if gen != "" && parts[0] != gen {
				break // changed underneath: start over
			}
			gen = parts[0]
			kids, last := parts[1:], false
			if kids[len(kids)-1] == "" {
				kids, last = kids[:len(kids)-1], true
			}
			for _, k := range kids {
				names = append(names, k)
				off += len(k) + 1
			}
			if last {
				return names, nil
			}
			if len(kids) == 0 {
				return nil, fmt.Errorf("xenstore DIRECTORY_PART %s: no progress at %d: %w", path, off, ErrProtocol)
			}
		}
	}
	return nil, fmt.Errorf("xenstore DIRECTORY_PART %s: keeps changing: %w", path, ErrAgain)
}

func (c *Client) getPerms(ctx context.Context, tx uint32, path string) ([]Perm, error) {
	s, err := c.request(ctx, MsgGetPerms, tx, false, path)
	if err != nil {
		return nil, err
	}
	p, err := ParsePerms(ParseStrings([]byte(s)))
	if err != nil {
		return nil, fmt.Errorf("xenstore GET_PERMS %s: %w", path, err)
	}
	return p, nil
}

func (c *Client) setPerms(ctx context.Context, tx uint32, path string, perms []Perm) error {
	if len(perms) == 0 {
		return fmt.Errorf("xenstore SET_PERMS %s: no permissions: %w", path, ErrInvalid)
	}
	args := make([]string, 0, len(perms)+1)
	args = append(args, path)
	args = append(args, FormatPerms(perms)...)
	_, err := c.request(ctx, MsgSetPerms, tx, false, args...)
	return err
}

// Read returns the value of path.
func (c *Client) Read(ctx context.Context, path string) (string, error) {
	return c.read(ctx, TxNone, path)
}

// Write sets path to value, creating missing parents.
func (c *Client) Write(ctx context.Context, path, value string) error {
	return c.write(ctx, TxNone, path, value)
}

// Mkdir creates path (and missing parents) if it does not exist.
func (c *Client) Mkdir(ctx context.Context, path string) error { return c.mkdir(ctx, TxNone, path) }

// Rm removes path and everything below it.
func (c *Client) Rm(ctx context.Context, path string) error { return c.rm(ctx, TxNone, path) }

// Directory lists the names of path's children.
func (c *Client) Directory(ctx context.Context, path string) ([]string, error) {
	return c.directory(ctx, TxNone, path)
}

// GetPerms returns path's permission list (owner first).
func (c *Client) GetPerms(ctx context.Context, path string) ([]Perm, error) {
	return c.getPerms(ctx, TxNone, path)
}

// SetPerms replaces path's permission list (owner first).
func (c *Client) SetPerms(ctx context.Context, path string, perms []Perm) error {
	return c.setPerms(ctx, TxNone, path, perms)
}

// GetDomainPath returns the home path of domid (/local/domain/<domid>).
func (c *Client) GetDomainPath(ctx context.Context, domid uint16) (string, error) {
	s, err := c.request(ctx, MsgGetDomainPath, TxNone, false, strconv.Itoa(int(domid)))
	if err != nil {
		return "", err
	}
	return string(trimNul([]byte(s))), nil
}

// ResetWatches drops every watch and transaction this connection has on
// the server side, and closes every local Watch (their channels close).
// Through the xenbus device it is refused with ErrNotSupport: the kernel
// would forward it on the domain's one xenstore connection and drop the
// kernel's own watches (every frontend's and backend's).
func (c *Client) ResetWatches(ctx context.Context) error {
	if c.xenbusDev {
		return fmt.Errorf("xenstore RESET_WATCHES through %s: %w", XenbusDevice, ErrNotSupport)
	}
	_, err := c.request(ctx, MsgResetWatches, TxNone, false, "")
	if err != nil {
		return err
	}
	c.mu.Lock()
	for _, w := range c.watches {
		w.drop()
	}
	c.mu.Unlock()
	return nil
}

// Tx is an open transaction. Its operations see the store as of their
// own writes; nothing is visible to others until it commits.
type Tx struct {
	c  *Client
	id uint32
}

// ID is the transaction id xenstored allocated.
func (t *Tx) ID() uint32 { return t.id }

// Read returns the value of path inside the transaction.
func (t *Tx) Read(ctx context.Context, path string) (string, error) {
	return t.c.read(ctx, t.id, path)
}

// Write sets path inside the transaction.
func (t *Tx) Write(ctx context.Context, path, value string) error {
	return t.c.write(ctx, t.id, path, value)
}

// Mkdir creates path inside the transaction.
func (t *Tx) Mkdir(ctx context.Context, path string) error { return t.c.mkdir(ctx, t.id, path) }

// Rm removes path inside the transaction.
func (t *Tx) Rm(ctx context.Context, path string) error { return t.c.rm(ctx, t.id, path) }

// Directory lists path's children inside the transaction.
func (t *Tx) Directory(ctx context.Context, path string) ([]string, error) {
	return t.c.directory(ctx, t.id, path)
}

// GetPerms returns path's permissions inside the transaction.
func (t *Tx) GetPerms(ctx context.Context, path string) ([]Perm, error) {
	return t.c.getPerms(ctx, t.id, path)
}

// SetPerms sets path's permissions inside the transaction.
func (t *Tx) SetPerms(ctx context.Context, path string, perms []Perm) error {
	return t.c.setPerms(ctx, t.id, path, perms)
}

// Begin starts a transaction. Prefer Transaction, which retries. If ctx
// ends before xenstored answers, the transaction it may still start is
// ended (aborted) together with the client's next request.
func (c *Client) Begin(ctx context.Context) (*Tx, error) {
	s, err := c.request(ctx, MsgTransactionStart, TxNone, false, "")
	if err != nil {
		return nil, err
	}
	id, err := strconv.ParseUint(string(trimNul([]byte(s))), 10, 32)
	if err != nil { // validateReply already checked; defensive
		return nil, fmt.Errorf("xenstore TRANSACTION_START: %w", ErrProtocol)
	}
	return &Tx{c: c, id: uint32(id)}, nil
}

// Commit ends the transaction, applying its writes. An error wrapping
// ErrAgain means another writer got in between: run it again.
func (t *Tx) Commit(ctx context.Context) error {
	_, err := t.c.request(ctx, MsgTransactionEnd, t.id, false, "T")
	return err
}

// Abort ends the transaction, discarding its writes.
func (t *Tx) Abort(ctx context.Context) error {
	_, err := t.c.request(ctx, MsgTransactionEnd, t.id, false, "F")
	return err
}

// Transaction runs fn inside a transaction and commits it. When the
// commit (or an operation inside fn) fails with ErrAgain it runs fn
// again in a fresh transaction, at most TxAttempts times, with a short
// growing pause; after that it returns an error wrapping ErrAgain. Any
// other error from fn aborts the transaction and is returned unchanged.
// fn must not keep tx after it returns.
func (c *Client) Transaction(ctx context.Context, fn func(tx *Tx) error) error {
	var last error
	for attempt := 1; attempt <= TxAttempts; attempt++ {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			c.abort(ctx, tx)
			if !errors.Is(err, ErrAgain) {
				return err
			}
			last = err
		} else if err := tx.Commit(ctx); err == nil {
			return nil
		} else if !errors.Is(err, ErrAgain) {
			return err
		} else {
			last = err
		}
		pause := time.Duration(attempt) * time.Millisecond
		select {
		case <-ctx.Done():
			return fmt.Errorf("xenstore: transaction: %w (after %v)", ctx.Err(), last)
		case <-time.After(pause):
		}
	}
	return fmt.Errorf("xenstore: transaction gave up after %d attempts: %w", TxAttempts, last)
}

// abort ends tx without committing, even when ctx is already cancelled,
// so the server does not keep the transaction.
func (c *Client) abort(ctx context.Context, tx *Tx) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unwatchTimeout)
	defer cancel()
	if err := tx.Abort(actx); err != nil && !errors.Is(err, ErrClosed) {
		c.log.Debug("xenstore: aborting transaction", "tx", tx.id, "err", err)
	}
}

// WatchEvent is one firing of a watch: the path that changed (relative if
// the watch path was relative) and the watch's token.
type WatchEvent struct {
	Path  string
	Token string
}

// Watch is a registered xenstore watch. Its events arrive on Events.
//
// Overflow policy (the reader never blocks on a subscriber): the channel
// buffers WatchQueueLen events. When a subscriber falls that far behind,
// further events are dropped, the watch is marked overflowed, and one
// event whose Path is the watch path itself is queued in a slot reserved
// for it: on receiving an event for the watched path, a subscriber must
// rescan the whole subtree (as it does for the initial event xenstored
// sends on registration). Until the subscriber has taken that event,
// new events are dropped (the rescan will see their changes); after it,
// delivery resumes normally. Overflows counts these episodes.
//
// The channel is closed by Close and when the connection goes away.
type Watch struct {
	c     *Client
	path  string
	token string
	ch    chan WatchEvent

	// guarded by c.mu
	overflowed bool
	closed     bool
	overflows  uint64
}

// Watch registers a watch on path with token. xenstored fires it once at
// once, then on every change to path or below. Tokens are unique per
// Client: a token already in use gives an error wrapping ErrExist.
func (c *Client) Watch(ctx context.Context, path, token string) (*Watch, error) {
	w := &Watch{c: c, path: path, token: token, ch: make(chan WatchEvent, WatchQueueLen+1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("xenstore WATCH %s: %w", path, err)
	}
	if c.watches[token] != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("xenstore WATCH %s: token %q in use: %w", path, token, ErrExist)
	}
	// Registered before the request: the first event follows the reply closely.
	c.watches[token] = w
	c.mu.Unlock()
	if _, err := c.request(ctx, MsgWatch, TxNone, false, path, token); err != nil {
		c.mu.Lock()
		w.drop()
		c.mu.Unlock()
		if ctx.Err() != nil && !errors.Is(err, ErrClosed) {
			// The server may have registered it before we stopped waiting.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unwatchTimeout)
			_, _ = c.request(uctx, MsgUnwatch, TxNone, false, path, token)
			cancel()
		}
		return nil, err
	}
	return w, nil
}

// Events delivers the watch's events (see the overflow policy on Watch).
func (w *Watch) Events() <-chan WatchEvent { return w.ch }

// Path is the watched path as registered.
func (w *Watch) Path() string { return w.path }

// Overflows is how many times events were coalesced into a rescan event.
func (w *Watch) Overflows() uint64 {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.overflows
}

// Close unregisters the watch and closes its channel.
func (w *Watch) Close() error {
	w.c.mu.Lock()
	if w.closed {
		w.c.mu.Unlock()
		return nil
	}
	w.drop()
	w.c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), unwatchTimeout)
	defer cancel()
	_, err := w.c.request(ctx, MsgUnwatch, TxNone, false, w.path, w.token)
	if errors.Is(err, ErrClosed) {
		return nil // the server dropped the watch with the connection
	}
	return err
}

// drop removes w from the client and closes its channel; c.mu is held.
func (w *Watch) drop() {
	if w.closed {
		return
	}
	w.closed = true
	if w.c.watches[w.token] == w {
		delete(w.c.watches, w.token)
	}
	close(w.ch)
}

// deliver queues ev without blocking; c.mu is held and the reader is the
// only sender, so len(w.ch) can only shrink underneath us.
func (w *Watch) deliver(ev WatchEvent) {
	if w.closed {
		return
	}
	if w.overflowed {
		if len(w.ch) != 0 {
			return // the pending rescan event covers this change
		}
		w.overflowed = false
	}
	if len(w.ch) < WatchQueueLen {
		w.ch <- ev
		return
	}
	w.overflowed = true
	w.overflows++
	w.ch <- WatchEvent{Path: w.path, Token: w.token}
}
