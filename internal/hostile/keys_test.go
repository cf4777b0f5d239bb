package hostile

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"drvdom/blkback"
	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/internal/xensim/netfront"
	"drvdom/netback"
)

// Placeholders in key tables, resolved against the device being attached.
const (
	phRO       = "<read-only page>"           // a page granted read-only to the backend
	phForeign  = "<page granted to d5>"       // a page granted to another domain
	phOtherDD  = "<page granted to other dd>" // a page granted to the other driver domain
	phPortD5   = "<port offered to d5>"       // an unbound port offered to another domain
	phPortDead = "<port closed again>"        // a port allocated for the backend, then closed
)

var longValue = strings.Repeat("x86_64-abi", 400) // 4000 bytes

// kit hands out grants and ports for placeholders and releases them.
type kit struct {
	sharer grant.Sharer
	evh    evtchn.Handle
	back   uint16
	shares []grant.Share
}

func (k *kit) resolve(t testing.TB, v string) string {
	t.Helper()
	share := func(to uint16, writable bool) string {
		sh, err := k.sharer.Share(to, 1, writable)
		if err != nil {
			t.Fatal(err)
		}
		k.shares = append(k.shares, sh)
		return strconv.Itoa(int(sh.Refs()[0]))
	}
	switch v {
	case phRO:
		return share(k.back, false)
	case phForeign:
		return share(otherID, true)
	case phOtherDD:
		return share(otherBackend(k.back), true)
	case phPortD5, phPortDead:
		to := uint16(otherID)
		if v == phPortDead {
			to = k.back
		}
		p, err := k.evh.BindUnbound(to)
		if err != nil {
			t.Fatal(err)
		}
		if v == phPortDead {
			k.evh.Unbind(p)
		}
		return strconv.Itoa(int(p))
	}
	return v
}

func (k *kit) release() {
	for _, sh := range k.shares {
		sh.Close()
	}
	k.shares = nil
}

// edits returns a blkCfg.Edit applying kv (key, value, key, value...):
// values may be placeholders or rmKey.
func edits(t testing.TB, kv ...string) func(rb *rawBlk, keys map[string]string) {
	return func(rb *rawBlk, keys map[string]string) {
		k := &kit{sharer: rb.r.hostile.Sharer(), evh: rb.evh, back: rb.disk.BackDom}
		for i := 0; i+1 < len(kv); i += 2 {
			keys[kv[i]] = k.resolve(t, kv[i+1])
		}
		rb.shares = append(rb.shares, k.shares...)
	}
}

type keyCase struct {
	name string
	two  bool     // base: 2 queues of 2-page rings (else 1 queue, 1 page)
	kv   []string // key, value pairs
	ok   bool     // the control case: connects
}

// vbdKeys are nonsense frontend keys: each must leave the disk refused with
// an error under error/, and nothing mapped or bound.
var vbdKeys = []keyCase{
	{name: "ring-page-order 5", two: true, kv: []string{"ring-page-order", "5"}},
	{name: "ring-page-order 6", two: true, kv: []string{"ring-page-order", "6"}},
	{name: "ring-page-order 31", two: true, kv: []string{"ring-page-order", "31"}},
	{name: "ring-page-order 32", two: true, kv: []string{"ring-page-order", "32"}},
	{name: "ring-page-order 2^32", two: true, kv: []string{"ring-page-order", "4294967296"}},
	{name: "ring-page-order -1", two: true, kv: []string{"ring-page-order", "-1"}},
	{name: "ring-page-order abc", two: true, kv: []string{"ring-page-order", "abc"}},
	{name: "ring-page-order empty", two: true, kv: []string{"ring-page-order", ""}},
	{name: "ring-page-order 1e3", two: true, kv: []string{"ring-page-order", "1e3"}},
	{name: "ring-page-order 0x1", two: true, kv: []string{"ring-page-order", "0x1"}},
	{name: "ring-page-order 2 with 2 pages published", two: true, kv: []string{"ring-page-order", "2"}},
	{name: "ring-page-order 1 with ring-ref1 missing", two: true, kv: []string{"queue-0/ring-ref1", rmKey}},
	{name: "ring-page-order missing with ring-refN published", two: true, kv: []string{"ring-page-order", rmKey}},
	{name: "multi-queue-num-queues 0", two: true, kv: []string{"multi-queue-num-queues", "0"}},
	{name: "multi-queue-num-queues 3 (max 2)", two: true, kv: []string{"multi-queue-num-queues", "3"}},
	{name: "multi-queue-num-queues 2^32", two: true, kv: []string{"multi-queue-num-queues", "4294967296"}},
	{name: "multi-queue-num-queues -1", two: true, kv: []string{"multi-queue-num-queues", "-1"}},
	{name: "multi-queue-num-queues two", two: true, kv: []string{"multi-queue-num-queues", "two"}},
	{name: "multi-queue-num-queues empty", two: true, kv: []string{"multi-queue-num-queues", ""}},
	{name: "multi-queue-num-queues 2 with queue-1 missing", two: true,
		kv: []string{"queue-1/ring-ref0", rmKey, "queue-1/ring-ref1", rmKey, "queue-1/event-channel", rmKey}},
	{name: "multi-queue-num-queues missing with queue-N published", two: true, kv: []string{"multi-queue-num-queues", rmKey}},
	{name: "queue-1 event-channel garbage", two: true, kv: []string{"queue-1/event-channel", "zz"}},
	{name: "queue-1 ring-ref1 never granted", two: true, kv: []string{"queue-1/ring-ref1", "77777"}},
	{name: "ring-ref abc", kv: []string{"ring-ref", "abc"}},
	{name: "ring-ref -5", kv: []string{"ring-ref", "-5"}},
	{name: "ring-ref 99999999999", kv: []string{"ring-ref", "99999999999"}},
	{name: "ring-ref empty", kv: []string{"ring-ref", ""}},
	{name: "ring-ref missing", kv: []string{"ring-ref", rmKey}},
	{name: "ring-ref never granted", kv: []string{"ring-ref", "12345"}},
	{name: "ring-ref 0", kv: []string{"ring-ref", "0"}},
	{name: "ring-ref 2^32-1", kv: []string{"ring-ref", "4294967295"}},
	{name: "ring-ref read-only", kv: []string{"ring-ref", phRO}},
	{name: "ring-ref granted to another domain", kv: []string{"ring-ref", phForeign}},
	{name: "ring-ref granted to the other driver domain", kv: []string{"ring-ref", phOtherDD}},
	{name: "event-channel abc", kv: []string{"event-channel", "abc"}},
	{name: "event-channel -1", kv: []string{"event-channel", "-1"}},
	{name: "event-channel 2^32", kv: []string{"event-channel", "4294967296"}},
	{name: "event-channel empty", kv: []string{"event-channel", ""}},
	{name: "event-channel missing", kv: []string{"event-channel", rmKey}},
	{name: "event-channel never allocated", kv: []string{"event-channel", "77"}},
	{name: "event-channel 0", kv: []string{"event-channel", "0"}},
	{name: "event-channel offered to another domain", kv: []string{"event-channel", phPortD5}},
	{name: "event-channel closed again", kv: []string{"event-channel", phPortDead}},
	{name: "protocol x86_16-abi", kv: []string{"protocol", "x86_16-abi"}},
	{name: "protocol arm-abi", kv: []string{"protocol", "arm-abi"}},
	{name: "protocol in capitals", kv: []string{"protocol", "X86_64-ABI"}},
	{name: "protocol of 4000 bytes", kv: []string{"protocol", longValue}},
	{name: "feature-persistent 2", kv: []string{"feature-persistent", "2"}},
	{name: "feature-persistent yes", kv: []string{"feature-persistent", "yes"}},
	{name: "feature-persistent -1", kv: []string{"feature-persistent", "-1"}},
	{name: "control: valid keys (1 ring)", ok: true},
	{name: "control: valid keys (2 rings of 2 pages)", two: true, ok: true},
}

// TestBlkFrontendKeys: a frontend publishing nonsense keys gets its disk
// refused (Closing, with an error under error/), nothing stays mapped or
// bound in either driver domain, and the honest guest is unaffected. The
// control cases connect and, closed, leave nothing behind either.
func TestBlkFrontendKeys(t *testing.T) {
	r := newRig(t)
	for _, tg := range []target{targets[0], targets[2]} {
		for _, c := range vbdKeys {
			t.Run(tg.name+"/"+c.name, func(t *testing.T) {
				base := r.resources()
				cfg := blkCfg{Proto: blkback.ProtoX86_64}
				if c.two {
					cfg.Order, cfg.Queues = 1, 2
				}
				cfg.Edit = edits(t, c.kv...)
				w := r.newWindow(t, fmt.Sprintf("keys-%d", r.nextDev.Load()+1), 64)
				rb := r.attachBlk(t, tg.backDom, "win:"+w.name, cfg)
				if c.ok {
					rb.connected(t)
					data := pattern(4096, 1)
					rb.write(t, 0, 0, data)
					if !bytes.Equal(rb.read(t, 0, 0, 1), data) {
						t.Fatal("control disk read back differs")
					}
				} else {
					if rb.state == "4" {
						t.Fatal("the backend connected")
					}
					if e := r.awaitError(t, tg.backDom, "vbd", hostileID, rb.disk.DevID); e == "" {
						t.Fatal("no error")
					}
					if got := r.resources(); got != base {
						t.Fatalf("refused disk holds resources: %+v, before %+v", got, base)
					}
				}
				rb.close(t)
				if got := r.resources(); got != base {
					t.Fatalf("closed disk leaves resources: %+v, before %+v", got, base)
				}
				r.checkCase(t)
				r.retire(t, w)
			})
		}
	}
}

// ---- vif ----

// rawVif is a netif frontend that only does the handshake (with whatever
// keys it likes).
type rawVif struct {
	r      *rig
	nic    netfront.Nic
	evh    evtchn.Handle
	port   evtchn.Port
	shares []grant.Share
	state  string
	closed bool
}

func (r *rig) attachVif(t testing.TB, kv []string) *rawVif {
	t.Helper()
	ctx := ctxFor(t)
	rv := &rawVif{r: r, evh: r.hostile.Evtchn()}
	rv.nic = netfront.Nic{BackDom: dd1, FrontDom: hostileID, DevID: r.devID(), MAC: "00:16:3e:00:00:03"}
	t.Cleanup(func() { rv.close(t) })
	if err := netfront.AddNic(ctx, r.d0, rv.nic); err != nil {
		t.Fatal(err)
	}
	r.await(t, rv.nic.BackPath()+"/state", "InitWait", func(v string, err error) bool { return v == "2" })
	sharer := r.hostile.Sharer()
	rings, err := sharer.Share(dd1, 4, true)
	if err != nil {
		t.Fatal(err)
	}
	rv.shares = append(rv.shares, rings)
	mem := rings.Bytes()
	for p := 0; p < 4; p++ {
		binary.LittleEndian.PutUint32(mem[p*4096+hdrReqEvent:], 1)
		binary.LittleEndian.PutUint32(mem[p*4096+hdrRspEvent:], 1)
	}
	if rv.port, err = rv.evh.BindUnbound(dd1); err != nil {
		t.Fatal(err)
	}
	port2, err := rv.evh.BindUnbound(dd1)
	if err != nil {
		t.Fatal(err)
	}
	refs := rings.Refs()
	keys := map[string]string{
		"tx-ring-ref": strconv.Itoa(int(refs[0])), "rx-ring-ref": strconv.Itoa(int(refs[1])),
		"event-channel": strconv.Itoa(int(rv.port)), "request-rx-copy": "1", "feature-rx-notify": "1",
		"feature-sg": "1",
	}
	two := map[string]string{
		"queue-0/tx-ring-ref": keys["tx-ring-ref"], "queue-0/rx-ring-ref": keys["rx-ring-ref"],
		"queue-0/event-channel": keys["event-channel"], "queue-1/tx-ring-ref": strconv.Itoa(int(refs[2])),
		"queue-1/rx-ring-ref": strconv.Itoa(int(refs[3])), "queue-1/event-channel": strconv.Itoa(int(port2)),
	}
	k := &kit{sharer: sharer, evh: rv.evh, back: dd1}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] == "multi-queue-num-queues" {
			for kk, vv := range two {
				keys[kk] = vv
			}
		}
		keys[kv[i]] = k.resolve(t, kv[i+1])
	}
	rv.shares = append(rv.shares, k.shares...)
	rv.state = r.publish(t, rv.nic.FrontPath(), rv.nic.BackPath(), keys, "4")
	return rv
}

func (rv *rawVif) close(t testing.TB) {
	if rv.closed {
		return
	}
	rv.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	fp := rv.nic.FrontPath()
	rv.r.hstore.Write(ctx, fp+"/state", "5")
	rv.r.hstore.Write(ctx, fp+"/state", "6")
	netfront.RemoveNic(ctx, rv.r.d0, rv.nic)
	rv.r.await(t, rv.nic.BackPath()+"/state", "Closed", func(v string, err error) bool { return v == "6" || err != nil })
	rv.r.removeNodes(ctx, dd1, "vif", rv.nic.DevID, rv.nic.BackPath(), fp)
	rv.evh.Close()
	for _, sh := range rv.shares {
		sh.Close()
	}
}

// vifKeys are nonsense netfront keys (the base is one queue, one event
// channel, rx-copy, sg); "multi-queue-num-queues" cases publish two queue
// directories.
var vifKeys = []keyCase{
	{name: "multi-queue-num-queues 0", kv: []string{"multi-queue-num-queues", "0"}},
	{name: "multi-queue-num-queues 3 (max 2)", kv: []string{"multi-queue-num-queues", "3"}},
	{name: "multi-queue-num-queues 2^32", kv: []string{"multi-queue-num-queues", "4294967296"}},
	{name: "multi-queue-num-queues -1", kv: []string{"multi-queue-num-queues", "-1"}},
	{name: "multi-queue-num-queues x", kv: []string{"multi-queue-num-queues", "x"}},
	{name: "multi-queue-num-queues 2 with queue-1 missing", kv: []string{"multi-queue-num-queues", "2",
		"queue-1/tx-ring-ref", rmKey, "queue-1/rx-ring-ref", rmKey, "queue-1/event-channel", rmKey}},
	{name: "tx-ring-ref abc", kv: []string{"tx-ring-ref", "abc"}},
	{name: "tx-ring-ref -1", kv: []string{"tx-ring-ref", "-1"}},
	{name: "tx-ring-ref 99999999999", kv: []string{"tx-ring-ref", "99999999999"}},
	{name: "tx-ring-ref missing", kv: []string{"tx-ring-ref", rmKey}},
	{name: "tx-ring-ref never granted", kv: []string{"tx-ring-ref", "12345"}},
	{name: "tx-ring-ref read-only", kv: []string{"tx-ring-ref", phRO}},
	{name: "tx-ring-ref granted to another domain", kv: []string{"tx-ring-ref", phForeign}},
	{name: "rx-ring-ref missing", kv: []string{"rx-ring-ref", rmKey}},
	{name: "rx-ring-ref empty", kv: []string{"rx-ring-ref", ""}},
	{name: "rx-ring-ref read-only", kv: []string{"rx-ring-ref", phRO}},
	{name: "rx-ring-ref granted to the other driver domain", kv: []string{"rx-ring-ref", phOtherDD}},
	{name: "event-channel missing", kv: []string{"event-channel", rmKey}},
	{name: "event-channel abc", kv: []string{"event-channel", "abc"}},
	{name: "event-channel 4294967296", kv: []string{"event-channel", "4294967296"}},
	{name: "event-channel never allocated", kv: []string{"event-channel", "77"}},
	{name: "event-channel offered to another domain", kv: []string{"event-channel", phPortD5}},
	{name: "event-channel closed again", kv: []string{"event-channel", phPortDead}},
	{name: "split with a garbage rx port and no event-channel", kv: []string{"event-channel", rmKey,
		"event-channel-tx", phPortD5, "event-channel-rx", "junk"}},
	{name: "split with both ports offered to another domain", kv: []string{"event-channel-tx", phPortD5, "event-channel-rx", phPortD5}},
	{name: "request-rx-copy 0", kv: []string{"request-rx-copy", "0"}},
	{name: "request-rx-copy missing", kv: []string{"request-rx-copy", rmKey}},
	{name: "request-rx-copy x", kv: []string{"request-rx-copy", "x"}},
	{name: "feature-sg -1", kv: []string{"feature-sg", "-1"}},
	{name: "feature-gso-tcpv4 99999999999", kv: []string{"feature-gso-tcpv4", "99999999999"}},
	{name: "control: valid keys", ok: true},
	{name: "control: valid keys, 2 queues", kv: []string{"multi-queue-num-queues", "2"}, ok: true},
}

// TestVifFrontendKeys is TestBlkFrontendKeys for netback.
func TestVifFrontendKeys(t *testing.T) {
	r := newRig(t)
	for _, c := range vifKeys {
		t.Run(c.name, func(t *testing.T) {
			base := r.resources()
			rv := r.attachVif(t, c.kv)
			if c.ok {
				if rv.state != "4" {
					t.Fatalf("control vif did not connect: state %s", rv.state)
				}
			} else {
				if rv.state == "4" {
					t.Fatal("the backend connected")
				}
				r.awaitError(t, dd1, "vif", hostileID, rv.nic.DevID)
				if got := r.resources(); got != base {
					t.Fatalf("refused vif holds resources: %+v, before %+v", got, base)
				}
			}
			rv.close(t)
			if got := r.resources(); got != base {
				t.Fatalf("closed vif leaves resources: %+v, before %+v", got, base)
			}
			r.checkCase(t)
		})
	}
}

// ---- keys rewritten after connect ----

// After a rewrite the device must keep serving (the backend reads the
// keys only at connect), or end up Closed (the frontend state became
// nonsense or vanished), or anything at all as long as nothing crashes
// and closing it releases everything.
const (
	serves = "serves"
	closed = "closed"
	anyOK  = "any"
)

type rewriteCase struct {
	name  string
	kv    []string // written in order by the guest (rmKey removes)
	junk  int      // junk nodes created under the frontend directory
	rmDir bool     // the guest removes its frontend directory
	after string
}

func flapping() []string {
	var kv []string
	for i := 0; i < 10; i++ {
		for s := 1; s <= 6; s++ {
			kv = append(kv, "state", strconv.Itoa(s))
		}
	}
	return kv
}

func stateCases() []rewriteCase {
	return []rewriteCase{
		{name: "state 7 (Reconfiguring)", kv: []string{"state", "7"}, after: serves},
		{name: "state 1 without closing", kv: []string{"state", "1"}, after: serves},
		{name: "state 4 rewritten 50 times", kv: slicesRepeat([]string{"state", "4"}, 50), after: serves},
		{name: "state abc", kv: []string{"state", "abc"}, after: closed},
		{name: "state 99", kv: []string{"state", "99"}, after: closed},
		{name: "state -1", kv: []string{"state", "-1"}, after: closed},
		{name: "state empty", kv: []string{"state", ""}, after: closed},
		{name: "state 0", kv: []string{"state", "0"}, after: closed},
		{name: "state removed", kv: []string{"state", rmKey}, after: closed},
		{name: "state of 4000 bytes", kv: []string{"state", longValue}, after: closed},
		{name: "frontend directory removed", rmDir: true, after: closed},
		{name: "state flapping 1..6, 10 times", kv: flapping(), after: anyOK},
		{name: "state 5 then 4", kv: []string{"state", "5", "state", "4"}, after: anyOK},
		{name: "200 junk nodes", junk: 200, after: serves},
	}
}

func slicesRepeat(s []string, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, s...)
	}
	return out
}

var vbdRewrites = append([]rewriteCase{
	{name: "ring-ref0 abc", kv: []string{"queue-0/ring-ref0", "abc"}, after: serves},
	{name: "ring-ref1 99999999999", kv: []string{"queue-1/ring-ref1", "99999999999"}, after: serves},
	{name: "ring-ref0 granted to another domain", kv: []string{"queue-0/ring-ref0", phForeign}, after: serves},
	{name: "event-channel -1", kv: []string{"queue-0/event-channel", "-1"}, after: serves},
	{name: "event-channel offered to another domain", kv: []string{"queue-1/event-channel", phPortD5}, after: serves},
	{name: "protocol switched to x86_32", kv: []string{"protocol", "x86_32-abi"}, after: serves},
	{name: "protocol of 4000 bytes", kv: []string{"protocol", longValue}, after: serves},
	{name: "ring-page-order 31", kv: []string{"ring-page-order", "31"}, after: serves},
	{name: "multi-queue-num-queues 1000", kv: []string{"multi-queue-num-queues", "1000"}, after: serves},
	{name: "feature-persistent switched off", kv: []string{"feature-persistent", "0"}, after: serves},
	{name: "every ring key removed", kv: []string{"queue-0/ring-ref0", rmKey, "queue-0/ring-ref1", rmKey,
		"queue-0/event-channel", rmKey, "queue-1", rmKey, "ring-page-order", rmKey, "multi-queue-num-queues", rmKey}, after: serves},
	{name: "state 3 (Initialised again)", kv: []string{"state", "3"}, after: serves},
}, stateCases()...)

// write applies a rewrite case to the frontend directory fp.
func (r *rig) rewrite(t testing.TB, fp string, k *kit, c rewriteCase) {
	t.Helper()
	ctx := ctxFor(t)
	for i := 0; i+1 < len(c.kv); i += 2 {
		var err error
		if c.kv[i+1] == rmKey {
			err = r.hstore.Rm(ctx, fp+"/"+c.kv[i])
		} else {
			err = r.hstore.Write(ctx, fp+"/"+c.kv[i], k.resolve(t, c.kv[i+1]))
		}
		if err != nil {
			t.Fatalf("rewrite %s: %v", c.kv[i], err)
		}
	}
	for i := 0; i < c.junk; i++ {
		if err := r.hstore.Write(ctx, fp+"/junk/"+strconv.Itoa(i), longValue[:i]); err != nil {
			t.Fatalf("junk node %d: %v", i, err)
		}
	}
	if c.rmDir {
		if err := r.hstore.Rm(ctx, fp); err != nil {
			t.Fatalf("remove frontend directory: %v", err)
		}
	}
}

// TestBlkKeysRewrittenAfterConnect: the frontend rewrites, removes and
// floods its keys after its disk connected. Nothing crashes; the disk
// keeps serving both rings unless its state became nonsense (then the
// backend closes it); closing it releases everything; the honest guest is
// unaffected throughout.
func TestBlkKeysRewrittenAfterConnect(t *testing.T) {
	r := newRig(t)
	for _, tg := range []target{targets[0], targets[2]} {
		for _, c := range vbdRewrites {
			t.Run(tg.name+"/"+c.name, func(t *testing.T) {
				base := r.resources()
				cfg := blkCfg{Proto: blkback.ProtoX86_64, Order: 1, Queues: 2, Persistent: true}
				rb, disk, _ := r.diskFor(t, tg, cfg)
				k := &kit{sharer: r.hostile.Sharer(), evh: rb.evh, back: tg.backDom}
				defer k.release()
				r.rewrite(t, rb.disk.FrontPath(), k, c)
				switch c.after {
				case serves:
					for q := 0; q < 2; q++ {
						data := pattern(8192, uint64(q)+3)
						rb.write(t, q, 16*uint64(q), data)
						if !bytes.Equal(rb.read(t, q, 16*uint64(q), 2), data) {
							t.Fatalf("ring %d read back differs", q)
						}
					}
				case closed:
					r.await(t, rb.disk.BackPath()+"/state", "Closed", func(v string, err error) bool { return v == "6" })
				}
				rb.close(t)
				if got := r.resources(); got != base {
					t.Fatalf("closed disk leaves resources: %+v, before %+v", got, base)
				}
				r.checkCase(t)
				r.retire(t, disk)
			})
		}
	}
}

var vifRewrites = append([]rewriteCase{
	{name: "tx-ring-ref abc", kv: []string{"tx-ring-ref", "abc"}, after: serves},
	{name: "rx-ring-ref removed", kv: []string{"rx-ring-ref", rmKey}, after: serves},
	{name: "tx-ring-ref granted to another domain", kv: []string{"tx-ring-ref", phForeign}, after: serves},
	{name: "event-channel 77", kv: []string{"event-channel", "77"}, after: serves},
	{name: "split event channels appear", kv: []string{"event-channel-tx", phPortD5, "event-channel-rx", "x"}, after: serves},
	{name: "request-rx-copy 0", kv: []string{"request-rx-copy", "0"}, after: serves},
	{name: "feature-sg x", kv: []string{"feature-sg", "x"}, after: serves},
	{name: "multi-queue-num-queues 99", kv: []string{"multi-queue-num-queues", "99"}, after: serves},
	{name: "mac of 4000 bytes", kv: []string{"mac", longValue}, after: serves},
	{name: "request-multicast-control 1", kv: []string{"request-multicast-control", "1"}, after: serves},
	{name: "state 3 (Initialised)", kv: []string{"state", "3"}, after: anyOK},
}, stateCases()...)

// TestVifKeysRewrittenAfterConnect is TestBlkKeysRewrittenAfterConnect for
// netback.
func TestVifKeysRewrittenAfterConnect(t *testing.T) {
	r := newRig(t)
	for i, c := range vifRewrites {
		t.Run(c.name, func(t *testing.T) {
			base := r.resources()
			v := r.hostileVif(t, netfront.Config{})
			k := &kit{sharer: r.hostile.Sharer(), evh: r.hostile.Evtchn(), back: dd1}
			defer k.evh.Close()
			defer k.release()
			r.rewrite(t, v.nic.FrontPath(), k, c)
			switch c.after {
			case serves:
				v.marker(t, uint64(i))
				fr := frame(120, uint64(i)+77)
				in := make([]byte, netback.VnetHdrSize+len(fr))
				copy(in[netback.VnetHdrSize:], fr)
				if err := v.tap.MemQueue(0).Inject(ctxFor(t), in); err != nil {
					t.Fatal(err)
				}
				if p, err := v.f.Recv(ctxFor(t), 0); err != nil || !bytes.Equal(p.Frame, fr) {
					t.Fatalf("receive after the rewrite: %v", err)
				}
			case closed:
				r.await(t, v.nic.BackPath()+"/state", "Closed", func(s string, err error) bool { return s == "6" })
			}
			v.close()
			if got := r.resources(); got != base {
				t.Fatalf("closed vif leaves resources: %+v, before %+v", got, base)
			}
			r.checkCase(t)
		})
	}
}
