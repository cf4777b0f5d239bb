package netback

import (
	"errors"
	"fmt"
)

// Reasons a tx chain is dropped (answered with RspError). They wrap
// ErrBadChain so callers and tests can branch on the class.
var (
	ErrBadChain       = errors.New("netback: malformed tx chain")
	errTooManySlots   = fmt.Errorf("%w: too many slots", ErrBadChain)
	errSlotTooBig     = fmt.Errorf("%w: slot larger than the remaining packet", ErrBadChain)
	errCrossesPage    = fmt.Errorf("%w: slot crosses a page boundary", ErrBadChain)
	errShortFirstSlot = fmt.Errorf("%w: first slot shorter than an Ethernet header", ErrBadChain)
	errBadExtraType   = fmt.Errorf("%w: invalid extra-info type", ErrBadChain)
	errTooManyExtras  = fmt.Errorf("%w: too many extra-info slots", ErrBadChain)
	errBadGSO         = fmt.Errorf("%w: bad GSO extra-info", ErrBadChain)
	errMcastFull      = fmt.Errorf("%w: multicast filter full", ErrBadChain)
	errEndless        = fmt.Errorf("%w: chain does not end", ErrBadChain)
)

// maxChainSlots bounds how many slots one chain may hold the parser for: a
// chain that has not ended by then is cut (all its slots answered with an
// error) and parsing restarts at the next slot. Linux treats such a chain
// as fatal for the vif; cutting it keeps the vif alive and the state bounded.
const maxChainSlots = 2*LegacySlotsMax + int(ExtraTypeMax)

type chainState uint8

const (
	csStart chainState = iota // next slot starts a packet
	csExtra                   // next slot is an extra-info
	csData                    // next slot is a follower tx request
)

// txChain parses one packet's chain of tx ring slots, fed one slot at a time
// (the chain may arrive over several wakeups). It keeps everything needed to
// answer every slot it consumed. Thread-compatible.
//
// Rules (Linux xen-netback netback.c): the first request's size is the whole
// packet; each follower's size is taken from it and may not exceed what is
// left; what is left at the end is the first slot's own length, which must
// hold an Ethernet header. No slot may cross its page. At most maxSlots tx
// requests per packet. Extra-info slots follow the first request while the
// previous one has NETTXF_extra_info / XEN_NETIF_EXTRA_FLAG_MORE; a zero or
// unknown type, or a GSO extra with size 0 or an unknown GSO type, is an error.
type txChain struct {
	state     chainState
	moreData  bool // first request had NETTXF_more_data
	reqs      [LegacySlotsMax]TxRequest
	nreq      int // tx requests consumed (may exceed len(reqs) when dropping)
	remaining int // bytes of the packet not covered by followers yet
	extras    [ExtraTypeMax]ExtraInfo
	extraSeen uint8 // bit t: extras[t] valid
	nextra    int

	// slots consumed, in ring order: id of the tx request (extras: -1).
	ids  [maxChainSlots]int32
	nids int

	drop error // first reason the chain is dropped; nil if valid
}

// reset prepares c for the next packet.
func (c *txChain) reset() {
	c.state = csStart
	c.moreData = false
	c.nreq, c.nextra, c.nids, c.remaining = 0, 0, 0, 0
	c.extraSeen = 0
	c.drop = nil
}

func (c *txChain) fail(err error) {
	if c.drop == nil {
		c.drop = err
	}
}

// feed consumes one ring slot (already copied out of shared memory, at least
// TxEntrySize bytes) and reports whether the chain is complete. When it is,
// the caller reads the result (drop, reqs[:nreq], extras, ids) and calls
// reset. maxSlots is the per-packet limit of tx requests.
func (c *txChain) feed(b []byte, maxSlots int) (done bool) {
	if c.nids == len(c.ids) {
		// Cannot happen: feed ends a chain at maxChainSlots.
		c.fail(errEndless)
		return true
	}
	switch c.state {
	case csStart:
		r := DecodeTxRequest(b)
		c.ids[c.nids] = int32(r.ID)
		c.nids++
		c.reqs[0] = r
		c.nreq = 1
		c.remaining = int(r.Size)
		c.moreData = r.Flags&TxMoreData != 0
		switch {
		case r.Flags&TxExtraInfo != 0:
			c.state = csExtra
		case c.moreData:
			c.state = csData
		default:
			return c.finish()
		}
	case csExtra:
		e := DecodeExtraInfo(b)
		c.ids[c.nids] = -1
		c.nids++
		c.nextra++
		switch {
		case c.nextra > int(ExtraTypeMax):
			c.fail(errTooManyExtras)
		case e.Type == ExtraTypeNone || e.Type >= ExtraTypeMax:
			c.fail(errBadExtraType)
		default:
			c.extras[e.Type] = e
			c.extraSeen |= 1 << e.Type
		}
		switch {
		case e.Flags&ExtraFlagMore != 0:
			c.state = csExtra
		case c.moreData && c.extraSeen&(1<<ExtraTypeMcastAdd|1<<ExtraTypeMcastDel) == 0:
			c.state = csData
		default:
			// Linux answers a multicast control request without reading
			// followers: its data slots, if any, parse as new packets.
			return c.finish()
		}
	case csData:
		r := DecodeTxRequest(b)
		c.ids[c.nids] = int32(r.ID)
		c.nids++
		c.nreq++
		switch {
		case c.nreq > maxSlots || c.nreq > len(c.reqs):
			c.fail(errTooManySlots)
		case int(r.Size) > c.remaining:
			c.fail(errSlotTooBig)
		case int(r.Offset)+int(r.Size) > PageSize:
			c.remaining -= int(r.Size)
			c.fail(errCrossesPage)
		default:
			c.reqs[c.nreq-1] = r
			c.remaining -= int(r.Size)
		}
		if r.Flags&TxMoreData == 0 {
			return c.finish()
		}
	}
	if c.nids == len(c.ids) {
		c.fail(errEndless)
		return true
	}
	return false
}

// finish runs the checks that need the whole chain.
func (c *txChain) finish() bool {
	if c.mcast() {
		return true
	}
	if c.drop != nil {
		return true
	}
	first := &c.reqs[0]
	if c.remaining < EthHeaderLen {
		c.fail(errShortFirstSlot)
		return true
	}
	if int(first.Offset)+c.remaining > PageSize {
		c.fail(errCrossesPage)
		return true
	}
	if c.extraSeen&(1<<ExtraTypeGSO) != 0 {
		g := c.extras[ExtraTypeGSO]
		if g.GSOSize == 0 || (g.GSOType != GSOTypeTCPv4 && g.GSOType != GSOTypeTCPv6) {
			c.fail(errBadGSO)
			return true
		}
	}
	first.Size = uint16(c.remaining) // now the first slot's own length
	return true
}

// mcast reports whether the chain is a multicast control request
// (an MCAST_ADD or MCAST_DEL extra), which carries no packet.
func (c *txChain) mcast() bool {
	return c.extraSeen&(1<<ExtraTypeMcastAdd|1<<ExtraTypeMcastDel) != 0
}

// gso returns the GSO extra, if the chain had one.
func (c *txChain) gso() (ExtraInfo, bool) {
	if c.extraSeen&(1<<ExtraTypeGSO) == 0 {
		return ExtraInfo{}, false
	}
	return c.extras[ExtraTypeGSO], true
}

// packetLen is the total packet size of a valid chain.
func (c *txChain) packetLen() int {
	n := 0
	for i := 0; i < c.nreq; i++ {
		n += int(c.reqs[i].Size)
	}
	return n
}
