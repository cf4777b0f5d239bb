package xenstored

import (
	"errors"
	"strconv"
	"strings"

	"drvdom/xenstore"
)

// Access bits asked of a node.
type access uint8

const (
	accRead access = 1 << iota
	accWrite
)

// allowed reports whether c has every access in need on a node with perms.
func (c *conn) allowed(perms []xenstore.Perm, need access) bool {
	if c.domid == 0 || perms[0].Domid == c.domid {
		return true
	}
	a := perms[0].Access
	for _, p := range perms[1:] {
		if p.Domid == c.domid {
			a = p.Access
			break
		}
	}
	var have access
	switch a {
	case xenstore.PermRead:
		have = accRead
	case xenstore.PermWrite:
		have = accWrite
	case xenstore.PermBoth:
		have = accRead | accWrite
	}
	return have&need == need
}

// txn is an open transaction: an overlay over the live tree plus the
// generation of every node it looked at when it first looked.
type txn struct {
	id      uint32
	overlay map[string]*node // nil value: removed in the transaction
	seen    map[string]uint64
	changes []change
}

// change is one modification, for firing watches.
type change struct {
	path    string
	perms   []xenstore.Perm            // the node's perms after the change (before, for a removal)
	removed map[string][]xenstore.Perm // RM: every removed node and its perms
}

// get returns the node at path as tx sees it (the live tree when tx is nil).
func (s *Server) get(tx *txn, path string) *node {
	if tx == nil {
		return s.nodes[path]
	}
	if n, ok := tx.overlay[path]; ok {
		return n
	}
	n := s.nodes[path]
	if _, ok := tx.seen[path]; !ok {
		tx.seen[path] = genOf(n)
	}
	return n
}

func (s *Server) put(tx *txn, path string, n *node) {
	if tx == nil {
		s.setLive(path, n)
		return
	}
	s.get(tx, path) // record what was there
	tx.overlay[path] = n
}

func (s *Server) del(tx *txn, path string) {
	if tx == nil {
		s.delLive(path)
		return
	}
	s.get(tx, path)
	tx.overlay[path] = nil
}

// changed fires ch now, or at commit inside a transaction.
func (s *Server) changed(tx *txn, ch change) {
	if tx != nil {
		tx.changes = append(tx.changes, ch)
		return
	}
	s.fire(ch)
}

// lookup returns the node at path if c has need on it. For a missing node
// the errno is ENOENT when the nearest existing ancestor grants need and
// EACCES otherwise, as xenstored's errno_from_parents decides.
func (s *Server) lookup(c *conn, tx *txn, path string, need access) (*node, string) {
	if n := s.get(tx, path); n != nil {
		if !c.allowed(n.perms, need) {
			return nil, "EACCES"
		}
		return n, ""
	}
	for p := path; p != "/"; {
		p = parent(p)
		if a := s.get(tx, p); a != nil {
			if c.allowed(a.perms, need) {
				return nil, "ENOENT"
			}
			return nil, "EACCES"
		}
	}
	return nil, "EACCES" // no root: cannot happen, "/" is never removed
}

// canonical validates a path argument and makes it absolute.
func (c *conn) canonical(p string) (string, string) {
	if err := xenstore.CheckPath(p); err != nil {
		if errors.Is(err, xenstore.ErrQuota) {
			return "", "E2BIG"
		}
		return "", "EINVAL"
	}
	if p[0] != '/' {
		p = xenstore.DomainPath(c.domid) + "/" + p
		if len(p) > xenstore.AbsPathMax {
			return "", "E2BIG"
		}
	}
	return p, ""
}

// args splits a payload of nul-terminated strings. It fails when the
// payload does not end in a nul or the count is outside [min, max].
func args(p []byte, min, max int) ([]string, bool) {
	if len(p) == 0 || p[len(p)-1] != 0 {
		return nil, false
	}
	out := xenstore.ParseStrings(p)
	if len(out) < min || len(out) > max {
		return nil, false
	}
	return out, true
}

// pathArg parses the payload of a request that takes one path (READ,
// MKDIR, RM, DIRECTORY, GET_PERMS) and makes the path absolute.
func (c *conn) pathArg(p []byte) (string, string) {
	a, ok := args(p, 1, 1)
	if !ok {
		return "", "EINVAL"
	}
	return c.canonical(a[0])
}

// readNode is the prelude of READ, DIRECTORY and GET_PERMS: the node named
// by the request's one path argument, as tx sees it, if c may read it.
// With specials (GET_PERMS), an argument starting with '@' names a special
// watch node (@introduceDomain, @releaseDomain) instead of a path.
func (s *Server) readNode(c *conn, tx *txn, p []byte, specials bool) (*node, string) {
	a, ok := args(p, 1, 1)
	if !ok {
		return nil, "EINVAL"
	}
	if specials && strings.HasPrefix(a[0], "@") {
		sp := s.special[a[0]]
		if sp == nil {
			return nil, "ENOENT"
		}
		if !c.allowed(sp.perms, accRead) {
			return nil, "EACCES"
		}
		return sp, ""
	}
	path, e := c.canonical(a[0])
	if e != "" {
		return nil, e
	}
	return s.lookup(c, tx, path, accRead)
}

// handle serves one request and queues its reply (and any events); s.mu
// is held.
func (s *Server) handle(c *conn, h xenstore.Header, p []byte) {
	reply := func(msg []byte) { c.send(msg) }
	fail := func(errno string) { c.send(errorMsg(h, errno)) }

	// Requests that take a transaction.
	var tx *txn
	switch h.Type {
	case xenstore.MsgRead, xenstore.MsgWrite, xenstore.MsgMkdir, xenstore.MsgRm,
		xenstore.MsgDirectory, xenstore.MsgDirectoryPart, xenstore.MsgGetPerms,
		xenstore.MsgSetPerms, xenstore.MsgTransactionEnd:
		if h.TxID != xenstore.TxNone {
			tx = c.txs[h.TxID]
			if tx == nil {
				fail("ENOENT")
				return
			}
		}
	}

	switch h.Type {
	case xenstore.MsgRead:
		n, e := s.readNode(c, tx, p, false)
		if e != "" {
			fail(e)
			return
		}
		reply(message(h.Type, h, n.value))

	case xenstore.MsgWrite:
		i := indexNul(p)
		if i < 0 {
			fail("EINVAL")
			return
		}
		path, e := c.canonical(string(p[:i]))
		if e != "" {
			fail(e)
			return
		}
		if e := s.write(c, tx, path, string(p[i+1:]), true); e != "" {
			fail(e)
			return
		}
		reply(okMsg(h))

	case xenstore.MsgMkdir:
		path, e := c.pathArg(p)
		if e != "" {
			fail(e)
			return
		}
		if e := s.write(c, tx, path, "", false); e != "" {
			fail(e)
			return
		}
		reply(okMsg(h))

	case xenstore.MsgRm:
		path, e := c.pathArg(p)
		if e != "" {
			fail(e)
			return
		}
		if e := s.rm(c, tx, path); e != "" {
			fail(e)
			return
		}
		reply(okMsg(h))

	case xenstore.MsgDirectory:
		n, e := s.readNode(c, tx, p, false)
		if e != "" {
			fail(e)
			return
		}
		size := 0
		for _, k := range n.children {
			size += len(k) + 1
		}
		if size > xenstore.PayloadMax {
			fail("E2BIG")
			return
		}
		var b strings.Builder
		b.Grow(size)
		for _, k := range n.children {
			b.WriteString(k)
			b.WriteByte(0)
		}
		reply(message(h.Type, h, b.String()))

	case xenstore.MsgDirectoryPart:
		a, ok := args(p, 2, 2)
		if !ok {
			fail("EINVAL")
			return
		}
		path, e := c.canonical(a[0])
		if e != "" {
			fail(e)
			return
		}
		off, err := strconv.ParseUint(a[1], 10, 31)
		if err != nil {
			fail("EINVAL")
			return
		}
		n, e := s.lookup(c, tx, path, accRead)
		if e != "" {
			fail(e)
			return
		}
		reply(message(h.Type, h, directoryPart(n, int(off))))

	case xenstore.MsgGetPerms:
		n, e := s.readNode(c, tx, p, true)
		if e != "" {
			fail(e)
			return
		}
		reply(message(h.Type, h, strings.Join(xenstore.FormatPerms(n.perms), "\x00")+"\x00"))

	case xenstore.MsgSetPerms:
		a, ok := args(p, 2, xenstore.PayloadMax)
		if !ok {
			fail("EINVAL")
			return
		}
		perms, err := xenstore.ParsePerms(a[1:])
		if err != nil {
			fail("EINVAL")
			return
		}
		if e := s.setPerms(c, tx, a[0], perms); e != "" {
			fail(e)
			return
		}
		reply(okMsg(h))

	case xenstore.MsgWatch:
		w, i, e := c.watchReq(p)
		switch {
		case e != "":
			fail(e)
			return
		case i >= 0:
			fail("EEXIST")
			return
		case len(c.watches) >= maxWatches:
			fail("E2BIG")
			return
		}
		c.watches = append(c.watches, w)
		reply(okMsg(h))
		// Fired once at once, with the path as given.
		c.send(eventMsg(c.reported(w, w.path), w.token))

	case xenstore.MsgUnwatch:
		_, i, e := c.watchReq(p)
		switch {
		case e != "":
			fail(e)
			return
		case i < 0:
			fail("ENOENT")
			return
		}
		c.watches = append(c.watches[:i], c.watches[i+1:]...)
		reply(okMsg(h))

	case xenstore.MsgTransactionStart:
		if h.TxID != xenstore.TxNone {
			fail("EINVAL")
			return
		}
		if len(c.txs) >= maxTransactions {
			fail("ENOSPC")
			return
		}
		s.nextTx++
		if s.nextTx == 0 {
			s.nextTx = 1
		}
		t := &txn{id: s.nextTx, overlay: map[string]*node{}, seen: map[string]uint64{}}
		c.txs[t.id] = t
		reply(message(h.Type, h, strconv.FormatUint(uint64(t.id), 10), "\x00"))

	case xenstore.MsgTransactionEnd:
		a, ok := args(p, 1, 1)
		if !ok || (a[0] != "T" && a[0] != "F") {
			fail("EINVAL")
			return
		}
		if tx == nil {
			fail("EINVAL") // END outside a transaction
			return
		}
		delete(c.txs, tx.id)
		if a[0] == "T" {
			if e := s.commit(tx); e != "" {
				fail(e)
				return
			}
		}
		reply(okMsg(h))

	case xenstore.MsgGetDomainPath:
		a, ok := args(p, 1, 1)
		if !ok {
			fail("EINVAL")
			return
		}
		id, ok := parseDomid(a[0])
		if !ok {
			fail("EINVAL")
			return
		}
		reply(message(h.Type, h, xenstore.DomainPath(id), "\x00"))

	case xenstore.MsgResetWatches:
		c.watches = nil
		c.txs = map[uint32]*txn{}
		reply(okMsg(h))

	case xenstore.MsgIntroduce, xenstore.MsgRelease, xenstore.MsgIsDomainIntroduced:
		if c.domid != 0 {
			fail("EACCES")
			return
		}
		a, ok := args(p, 1, 4)
		if !ok {
			fail("EINVAL")
			return
		}
		id, ok := parseDomid(a[0])
		if !ok {
			fail("EINVAL")
			return
		}
		switch h.Type {
		case xenstore.MsgIntroduce:
			s.introduce(id)
			reply(okMsg(h))
		case xenstore.MsgRelease:
			if id == 0 || !s.domains[id] {
				fail("ENOENT")
				return
			}
			reply(okMsg(h)) // before release, which may close this very connection
			s.release(id)
		default:
			ans := "F\x00"
			if s.domains[id] {
				ans = "T\x00"
			}
			reply(message(h.Type, h, ans))
		}

	default:
		// CONTROL, RESUME, SET_TARGET, RESTRICT, replies sent as
		// requests, unknown numbers.
		fail("EINVAL")
	}
}

func indexNul(p []byte) int {
	for i, b := range p {
		if b == 0 {
			return i
		}
	}
	return -1
}

// parseDomid parses a decimal domid 0..65535.
func parseDomid(s string) (uint16, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 16)
	return uint16(v), err == nil
}

// watchReq parses a WATCH or UNWATCH payload (path, token and an optional
// third string, ignored) and finds c's watch of the same path and token:
// its index in c.watches, or -1.
func (c *conn) watchReq(p []byte) (*watch, int, string) {
	a, ok := args(p, 2, 3)
	if !ok {
		return nil, -1, "EINVAL"
	}
	w, e := c.watchArg(a[0], a[1])
	if e != "" {
		return nil, -1, e
	}
	for i, o := range c.watches {
		if o.path == w.path && o.token == w.token {
			return w, i, ""
		}
	}
	return w, -1, ""
}

// watchArg resolves a WATCH/UNWATCH path argument.
func (c *conn) watchArg(path, token string) (*watch, string) {
	if strings.HasPrefix(path, "@") {
		if err := xenstore.CheckPath(path); err != nil {
			return nil, "EINVAL"
		}
		return &watch{path: path, token: token}, ""
	}
	abs, e := c.canonical(path)
	if e != "" {
		return nil, e
	}
	return &watch{path: abs, token: token, rel: path[0] != '/'}, ""
}

// write implements WRITE (setValue) and MKDIR (!setValue).
func (s *Server) write(c *conn, tx *txn, path, value string, setValue bool) string {
	n, e := s.lookup(c, tx, path, accWrite)
	switch {
	case n != nil:
		if !setValue {
			return "" // MKDIR of an existing node changes nothing
		}
		m := n.clone()
		m.value = value
		s.put(tx, path, m)
		s.changed(tx, change{path: path, perms: m.perms})
		return ""
	case e != "ENOENT":
		return e
	}
	if e := s.create(c, tx, path, value); e != "" {
		return e
	}
	s.changed(tx, change{path: path, perms: s.get(tx, path).perms})
	return ""
}

// create makes path, with missing parents, under the nearest existing
// ancestor (which lookup has checked for write access).
func (s *Server) create(c *conn, tx *txn, path, value string) string {
	missing := []string{path}
	anc := parent(path)
	for s.get(tx, anc) == nil {
		missing = append(missing, anc)
		anc = parent(anc)
	}
	if c.domid != 0 && s.owned[c.domid]+len(missing) > maxNodes {
		return "ENOSPC"
	}
	for i := len(missing) - 1; i >= 0; i-- {
		name := missing[i]
		pn := s.get(tx, anc).clone()
		pn.children = append(pn.children, base(name))
		s.put(tx, anc, pn)
		nn := &node{perms: append([]xenstore.Perm(nil), pn.perms...)}
		if c.domid != 0 {
			nn.perms[0].Domid = c.domid // unprivileged domains own what they create
		}
		if i == 0 {
			nn.value = value
		}
		s.put(tx, name, nn)
		anc = name
	}
	return ""
}

// rm implements RM: removing a missing node is fine if its parent exists.
func (s *Server) rm(c *conn, tx *txn, path string) string {
	if path == "/" {
		return "EINVAL"
	}
	n, e := s.lookup(c, tx, path, accWrite)
	if n == nil {
		if e == "ENOENT" && s.get(tx, parent(path)) != nil {
			return ""
		}
		return e
	}
	removed := map[string][]xenstore.Perm{}
	var walk func(p string, n *node)
	walk = func(p string, n *node) {
		removed[p] = n.perms
		for _, k := range n.children {
			kp := join(p, k)
			if kn := s.get(tx, kp); kn != nil {
				walk(kp, kn)
			}
		}
		s.del(tx, p)
	}
	walk(path, n)
	pp := parent(path)
	if pn := s.get(tx, pp); pn != nil {
		m := pn.clone()
		name := base(path)
		for i, k := range m.children {
			if k == name {
				m.children = append(m.children[:i], m.children[i+1:]...)
				break
			}
		}
		s.put(tx, pp, m)
	}
	s.changed(tx, change{path: path, perms: n.perms, removed: removed})
	return ""
}

// setPerms implements SET_PERMS: only the owner (or dom0) may, and only
// dom0 may give a node away.
func (s *Server) setPerms(c *conn, tx *txn, arg string, perms []xenstore.Perm) string {
	if strings.HasPrefix(arg, "@") {
		sp := s.special[arg]
		if sp == nil {
			return "ENOENT"
		}
		if c.domid != 0 {
			return "EACCES"
		}
		s.special[arg] = &node{perms: perms}
		return ""
	}
	path, e := c.canonical(arg)
	if e != "" {
		return e
	}
	n, e := s.lookup(c, tx, path, accWrite)
	if e != "" {
		return e
	}
	if c.domid != 0 && n.perms[0].Domid != c.domid {
		return "EACCES"
	}
	if c.domid != 0 && perms[0].Domid != n.perms[0].Domid {
		return "EPERM"
	}
	m := n.clone()
	m.perms = perms
	s.put(tx, path, m)
	s.changed(tx, change{path: path, perms: perms})
	return ""
}

// commit applies tx if nothing it looked at changed since; s.mu is held.
func (s *Server) commit(tx *txn) string {
	for path, g := range tx.seen {
		if genOf(s.nodes[path]) != g {
			return "EAGAIN"
		}
	}
	for path, n := range tx.overlay {
		if n == nil {
			s.delLive(path)
		} else {
			s.setLive(path, n)
		}
	}
	for _, ch := range tx.changes {
		s.fire(ch)
	}
	return ""
}

// eventMsg builds a WATCH_EVENT (req_id and tx_id 0).
func eventMsg(path, token string) []byte {
	return message(xenstore.MsgWatchEvent, xenstore.Header{}, path, "\x00", token, "\x00")
}

// fire sends the events ch causes; s.mu is held.
func (s *Server) fire(ch change) {
	for c := range s.conns {
		for _, w := range c.watches {
			if w.path[0] == '@' {
				continue
			}
			switch {
			case xenstore.IsChild(ch.path, w.path):
				if c.allowed(ch.perms, accRead) {
					c.send(eventMsg(c.reported(w, ch.path), w.token))
				}
			case ch.removed != nil && xenstore.IsChild(w.path, ch.path):
				if perms, ok := ch.removed[w.path]; ok && c.allowed(perms, accRead) {
					c.send(eventMsg(c.reported(w, w.path), w.token))
				}
			}
		}
	}
}

// reported renders an event path as the watcher registered it.
func (c *conn) reported(w *watch, path string) string {
	if !w.rel {
		return path
	}
	prefix := xenstore.DomainPath(c.domid) + "/"
	if strings.HasPrefix(path, prefix) {
		return path[len(prefix):]
	}
	return path
}

// fireSpecial fires a special watch for connections allowed to read it.
func (s *Server) fireSpecial(name string) {
	perms := s.special[name].perms
	for c := range s.conns {
		if !c.allowed(perms, accRead) {
			continue
		}
		for _, w := range c.watches {
			if w.path == name {
				c.send(eventMsg(name, w.token))
			}
		}
	}
}

// directoryPart renders a DIRECTORY_PART reply: the node's generation,
// then as many children as fit starting at byte offset off of the
// nul-separated list, then an empty string if that reached the end.
func directoryPart(n *node, off int) string {
	var list strings.Builder
	for _, k := range n.children {
		list.WriteString(k)
		list.WriteByte(0)
	}
	all := list.String()
	gen := strconv.FormatUint(n.gen, 10) + "\x00"
	if off >= len(all) {
		return gen + "\x00"
	}
	maxLen := xenstore.PayloadMax - len(gen) - 1
	end := off
	for end < len(all) {
		i := strings.IndexByte(all[end:], 0)
		if end+i+1-off > maxLen {
			break
		}
		end += i + 1
	}
	if end == off { // off is not at a name boundary, or a name is too long
		return gen + "\x00"
	}
	out := gen + all[off:end]
	if end == len(all) {
		out += "\x00"
	}
	return out
}
