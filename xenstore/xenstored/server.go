// Package xenstored is an in-memory xenstored: it speaks the xenstore wire
// protocol (docs/misc/xenstore.txt) over any net.Conn, with the node
// permissions, transactions and watches that Xen's C xenstored enforces.
// It serves tests and the simulated host (internal/xensim).
//
// Semantics, following xenstored_core.c:
//   - Each connection is served as one domain; domain 0 is privileged
//     (full access everywhere). Relative paths are taken below
//     /local/domain/<domid>/.
//   - A node's first permission names its owner (full access) and the
//     access of every domain not listed after it; letters n/r/w/b.
//   - A missing node reads as ENOENT only if the nearest existing ancestor
//     grants the access asked for, else EACCES (no probing).
//   - WRITE and MKDIR create missing parents, each inheriting its
//     parent's permissions; an unprivileged creator becomes the owner, a
//     privileged creator keeps the parent's owner (as construct_node does).
//   - Transactions read and write an overlay; TRANSACTION_END T fails with
//     EAGAIN if any node the transaction read or wrote (present or absent)
//     changed since; watches fire only at commit.
//   - A watch fires once on registration, then for every change to its
//     path or below (with the changed path), and for the removal of its
//     path through the removal of an ancestor. Watchers receive events
//     only for nodes they may read. @introduceDomain and @releaseDomain
//     fire from IntroduceDomain and ReleaseDomain.
//   - Limits: payload PayloadMax (a longer request header gets E2BIG and
//     the connection is closed, as xenstored kills it), path lengths per
//     xenstore.CheckPath, maxWatches watches (E2BIG) and maxTransactions
//     open transactions (ENOSPC) per connection, maxNodes nodes per
//     unprivileged domain (ENOSPC), maxQueued bytes of undelivered output
//     per connection (beyond it the connection is dropped).
//
// Every malformed request gets an ERROR reply (EINVAL unless a more
// precise errno applies); nothing a client sends can panic the server.
package xenstored

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"drvdom/xenstore"
)

// Limits (see the package comment).
const (
	maxWatches      = 128
	maxTransactions = 32
	maxNodes        = 1000
	maxQueued       = 1 << 20
	flushTimeout    = time.Second
)

// Special watch paths.
const (
	IntroduceDomainPath = "@introduceDomain"
	ReleaseDomainPath   = "@releaseDomain"
)

// Server is an in-memory xenstored. All state is behind one mutex; each
// connection is read by its Serve goroutine and written by a writer
// goroutine Serve owns.
type Server struct {
	log *slog.Logger

	mu      sync.Mutex
	nodes   map[string]*node
	special map[string]*node // @introduceDomain, @releaseDomain (perms only)
	owned   map[uint16]int   // live nodes per owner, for the quota
	gen     uint64           // last generation handed out
	nextTx  uint32
	conns   map[*conn]struct{}
	domains map[uint16]bool // introduced and not released
	closed  bool
}

// node is one xenstore node. Nodes are copy-on-write: a stored *node is
// never modified, so transactions can share them.
type node struct {
	value    string
	perms    []xenstore.Perm
	children []string
	gen      uint64
}

func (n *node) clone() *node {
	return &node{
		value:    n.value,
		perms:    append([]xenstore.Perm(nil), n.perms...),
		children: append([]string(nil), n.children...),
	}
}

func genOf(n *node) uint64 {
	if n == nil {
		return 0
	}
	return n.gen
}

// New returns a server holding "/", "/local" and "/local/domain", all
// owned by dom0 with no access for others.
func New() *Server {
	s := &Server{
		log:     slog.Default().With("pkg", "xenstored"),
		nodes:   make(map[string]*node),
		special: make(map[string]*node),
		owned:   make(map[uint16]int),
		conns:   make(map[*conn]struct{}),
		domains: map[uint16]bool{0: true},
	}
	dom0 := []xenstore.Perm{{Domid: 0, Access: xenstore.PermNone}}
	s.setLive("/", &node{perms: dom0, children: []string{"local"}})
	s.setLive("/local", &node{perms: dom0, children: []string{"domain"}})
	s.setLive("/local/domain", &node{perms: dom0})
	for _, p := range []string{IntroduceDomainPath, ReleaseDomainPath} {
		s.special[p] = &node{perms: dom0}
	}
	return s
}

// setLive stores n at path in the live tree with a fresh generation.
func (s *Server) setLive(path string, n *node) {
	if old := s.nodes[path]; old != nil {
		s.owned[old.perms[0].Domid]--
	}
	s.gen++
	n.gen = s.gen
	s.nodes[path] = n
	s.owned[n.perms[0].Domid]++
}

func (s *Server) delLive(path string) {
	if old := s.nodes[path]; old != nil {
		s.owned[old.perms[0].Domid]--
		delete(s.nodes, path)
	}
}

// conn is one client connection, served as domid.
type conn struct {
	s       *Server
	nc      net.Conn
	domid   uint16
	watches []*watch
	txs     map[uint32]*txn

	omu     sync.Mutex
	ocond   *sync.Cond
	out     [][]byte
	queued  int
	oclosed bool // no more output: the writer drains and exits
}

type watch struct {
	path  string // absolute, or a special "@" name
	token string
	rel   bool // registered relative: events are reported relative
}

// Connect returns the client end of a pipe whose other end is served as
// domid. The serving goroutine ends when either end is closed.
func (s *Server) Connect(domid uint16) net.Conn {
	cli, srv := net.Pipe()
	go s.Serve(srv, domid)
	return cli
}

// Serve serves one connection as domain domid until it ends (EOF, error,
// Close of the server, ReleaseDomain of domid, or a fatal protocol
// error). It closes nc before returning.
func (s *Server) Serve(nc net.Conn, domid uint16) {
	c := &conn{s: s, nc: nc, domid: domid, txs: make(map[uint32]*txn)}
	c.ocond = sync.NewCond(&c.omu)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.writeLoop()
	}()
	defer func() {
		s.mu.Lock()
		s.dropConn(c)
		s.mu.Unlock()
		c.omu.Lock()
		c.oclosed = true
		c.ocond.Broadcast()
		c.omu.Unlock()
		// Let the writer flush what is queued (an error reply), but not
		// forever: a peer that does not read loses it.
		_ = nc.SetWriteDeadline(time.Now().Add(flushTimeout))
		wg.Wait()
		_ = nc.Close()
	}()

	br := bufio.NewReaderSize(nc, xenstore.HeaderSize+xenstore.PayloadMax)
	var hdr [xenstore.HeaderSize]byte
	buf := make([]byte, xenstore.PayloadMax)
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
				s.log.Debug("xenstored: connection ends", "domid", domid, "err", err)
			}
			return
		}
		h, err := xenstore.DecodeHeader(hdr[:])
		if err != nil {
			// Oversized: the stream cannot be trusted any more.
			s.log.Warn("xenstored: oversized request, closing connection", "domid", domid, "len", h.Len)
			c.send(errorMsg(h, "E2BIG"))
			return
		}
		p := buf[:h.Len]
		if _, err := io.ReadFull(br, p); err != nil {
			return
		}
		s.mu.Lock()
		s.handle(c, h, p)
		s.mu.Unlock()
	}
}

// writeLoop writes queued messages in order until the queue is closed
// and empty, or a write fails.
func (c *conn) writeLoop() {
	for {
		c.omu.Lock()
		for len(c.out) == 0 && !c.oclosed {
			c.ocond.Wait()
		}
		batch := c.out
		c.out = nil
		c.queued = 0
		closed := c.oclosed
		c.omu.Unlock()
		for _, m := range batch {
			if _, err := c.nc.Write(m); err != nil {
				c.omu.Lock()
				c.oclosed = true
				c.out = nil
				c.omu.Unlock()
				_ = c.nc.Close()
				return
			}
		}
		if closed && len(batch) == 0 {
			return
		}
	}
}

// send queues msg for the writer; it never blocks. A connection whose
// backlog exceeds maxQueued is dropped.
func (c *conn) send(msg []byte) {
	c.omu.Lock()
	defer c.omu.Unlock()
	if c.oclosed {
		return
	}
	if c.queued+len(msg) > maxQueued {
		c.s.log.Warn("xenstored: client does not read, dropping connection", "domid", c.domid)
		c.oclosed = true
		c.out = nil
		c.ocond.Broadcast()
		_ = c.nc.Close()
		return
	}
	c.out = append(c.out, msg)
	c.queued += len(msg)
	c.ocond.Signal()
}

// dropConn forgets c's watches and transactions; s.mu is held.
func (s *Server) dropConn(c *conn) {
	delete(s.conns, c)
	c.watches = nil
	c.txs = map[uint32]*txn{}
}

// Close closes every connection; Serve calls return. Later Serve calls
// close their connection at once.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	var ncs []net.Conn
	for c := range s.conns {
		ncs = append(ncs, c.nc)
		s.dropConn(c)
	}
	s.mu.Unlock()
	for _, nc := range ncs {
		_ = nc.Close()
	}
}

// message builds a reply with h's type, req_id and tx_id.
func message(typ xenstore.MsgType, h xenstore.Header, payload ...string) []byte {
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	b := make([]byte, 0, xenstore.HeaderSize+n)
	b = xenstore.AppendHeader(b, xenstore.Header{Type: typ, ReqID: h.ReqID, TxID: h.TxID, Len: uint32(n)})
	for _, p := range payload {
		b = append(b, p...)
	}
	return b
}

func errorMsg(h xenstore.Header, errno string) []byte {
	return message(xenstore.MsgError, h, errno, "\x00")
}

func okMsg(h xenstore.Header) []byte { return message(h.Type, h, "OK\x00") }

// IntroduceDomain marks domid introduced, creates /local/domain/<domid>
// owned by domid (no access for others) if it is missing, and fires
// @introduceDomain.
func (s *Server) IntroduceDomain(domid uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.introduce(domid)
}

func (s *Server) introduce(domid uint16) {
	s.domains[domid] = true
	home := xenstore.DomainPath(domid)
	if s.nodes[home] == nil {
		priv := &conn{s: s, domid: 0}
		s.create(priv, nil, home, "") // with any missing parents, as dom0
		n := s.nodes[home].clone()
		n.perms = []xenstore.Perm{{Domid: domid, Access: xenstore.PermNone}}
		s.setLive(home, n)
		s.fire(change{path: home, perms: n.perms})
	}
	s.fireSpecial(IntroduceDomainPath)
}

// ReleaseDomain closes domid's connections, drops their watches and
// transactions, marks domid released and fires @releaseDomain. Like Xen
// it leaves /local/domain/<domid> to the toolstack to remove.
func (s *Server) ReleaseDomain(domid uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.release(domid)
}

func (s *Server) release(domid uint16) {
	for c := range s.conns {
		if c.domid == domid {
			s.dropConn(c)
			_ = c.nc.Close()
		}
	}
	delete(s.domains, domid)
	s.fireSpecial(ReleaseDomainPath)
}

// WatchCount is the number of watches registered on all connections.
func (s *Server) WatchCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		n += len(c.watches)
	}
	return n
}

// Dump renders the tree with values and permissions, one node a line,
// children in sorted order, for failure reports.
func (s *Server) Dump() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	var walk func(path, name string, depth int)
	walk = func(path, name string, depth int) {
		n := s.nodes[path]
		if n == nil {
			return
		}
		b.WriteString(strings.Repeat("  ", depth))
		b.WriteString(name)
		b.WriteString(" = ")
		b.WriteString(strconv.Quote(n.value))
		b.WriteString(" (")
		b.WriteString(xenstore.PermsString(n.perms))
		b.WriteString(")\n")
		kids := append([]string(nil), n.children...)
		sort.Strings(kids)
		for _, k := range kids {
			walk(join(path, k), k, depth+1)
		}
	}
	walk("/", "/", 0)
	for _, p := range []string{IntroduceDomainPath, ReleaseDomainPath} {
		b.WriteString(p + " (" + xenstore.PermsString(s.special[p].perms) + ")\n")
	}
	return b.String()
}

func join(parent, name string) string {
	if parent == "/" {
		return "/" + name
	}
	return parent + "/" + name
}

// parent returns the parent of an absolute path other than "/".
func parent(path string) string {
	i := strings.LastIndexByte(path, '/')
	if i <= 0 {
		return "/"
	}
	return path[:i]
}

func base(path string) string { return path[strings.LastIndexByte(path, '/')+1:] }
