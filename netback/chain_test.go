package netback

import (
	"errors"
	"testing"
)

// slots encodes a chain: TxRequest or ExtraInfo values, one ring slot each.
func slots(items ...any) [][]byte {
	var out [][]byte
	for _, it := range items {
		b := make([]byte, TxEntrySize)
		switch v := it.(type) {
		case TxRequest:
			v.Encode(b)
		case ExtraInfo:
			v.Encode(b)
		default:
			panic("slots: bad item")
		}
		out = append(out, b)
	}
	return out
}

// feedAll feeds a chain and returns how many slots made it complete
// (-1 if it never completed).
func feedAll(c *txChain, ss [][]byte, max int) int {
	for i, s := range ss {
		if c.feed(s, max) {
			return i + 1
		}
	}
	return -1
}

func TestChainValid(t *testing.T) {
	var c txChain
	ss := slots(
		TxRequest{Gref: 1, Offset: 100, Flags: TxMoreData | TxExtraInfo | TxCsumBlank, ID: 5, Size: 9000},
		ExtraInfo{Type: ExtraTypeGSO, GSOSize: 1448, GSOType: GSOTypeTCPv4},
		TxRequest{Gref: 2, Flags: TxMoreData, ID: 6, Size: 4096},
		TxRequest{Gref: 3, ID: 7, Size: 4000},
	)
	if n := feedAll(&c, ss, LegacySlotsMax); n != 4 {
		t.Fatalf("chain completed after %d slots, want 4", n)
	}
	if c.drop != nil {
		t.Fatalf("valid chain dropped: %v", c.drop)
	}
	if c.nreq != 3 || c.reqs[0].Size != 904 || c.packetLen() != 9000 {
		t.Fatalf("nreq %d, first slot %d, len %d; want 3, 904, 9000", c.nreq, c.reqs[0].Size, c.packetLen())
	}
	g, ok := c.gso()
	if !ok || g.GSOSize != 1448 {
		t.Fatalf("gso = %+v %v", g, ok)
	}
	wantIDs := []int32{5, -1, 6, 7}
	for i, id := range wantIDs {
		if c.ids[i] != id {
			t.Fatalf("ids = %v, want %v", c.ids[:c.nids], wantIDs)
		}
	}
}

func TestChainHostile(t *testing.T) {
	long := []any{TxRequest{Gref: 1, Flags: TxMoreData, ID: 0, Size: 60000}}
	for i := 1; i < 19; i++ {
		f := TxMoreData
		if i == 18 {
			f = 0
		}
		long = append(long, TxRequest{Gref: uint32(i + 1), Flags: f, ID: uint16(i), Size: 100})
	}
	cases := []struct {
		name  string
		chain []any
		want  error
		slots int
	}{
		{"short first slot", []any{TxRequest{Gref: 1, ID: 1, Size: 13}}, errShortFirstSlot, 1},
		{"first slot short after followers", []any{
			TxRequest{Gref: 1, Flags: TxMoreData, ID: 1, Size: 100},
			TxRequest{Gref: 2, ID: 2, Size: 90}}, errShortFirstSlot, 2},
		{"first slot crosses page", []any{TxRequest{Gref: 1, Offset: 4000, ID: 1, Size: 200}}, errCrossesPage, 1},
		{"follower crosses page", []any{
			TxRequest{Gref: 1, Flags: TxMoreData, ID: 1, Size: 3000},
			TxRequest{Gref: 2, Offset: 3000, ID: 2, Size: 2000}}, errCrossesPage, 2},
		{"follower bigger than packet", []any{
			TxRequest{Gref: 1, Flags: TxMoreData, ID: 1, Size: 100},
			TxRequest{Gref: 2, ID: 2, Size: 200}}, errSlotTooBig, 2},
		{"19 slots", long, errTooManySlots, 19},
		{"extra type 0", []any{
			TxRequest{Gref: 1, Flags: TxExtraInfo, ID: 1, Size: 60},
			ExtraInfo{Type: 0}}, errBadExtraType, 2},
		{"extra type max", []any{
			TxRequest{Gref: 1, Flags: TxExtraInfo, ID: 1, Size: 60},
			ExtraInfo{Type: ExtraTypeMax}}, errBadExtraType, 2},
		{"gso size 0", []any{
			TxRequest{Gref: 1, Flags: TxExtraInfo, ID: 1, Size: 60},
			ExtraInfo{Type: ExtraTypeGSO, GSOType: GSOTypeTCPv4}}, errBadGSO, 2},
		{"gso bad type", []any{
			TxRequest{Gref: 1, Flags: TxExtraInfo, ID: 1, Size: 60},
			ExtraInfo{Type: ExtraTypeGSO, GSOType: 9, GSOSize: 1000}}, errBadGSO, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var c txChain
			n := feedAll(&c, slots(tc.chain...), LegacySlotsMax)
			if n != tc.slots {
				t.Fatalf("completed after %d slots, want %d", n, tc.slots)
			}
			if !errors.Is(c.drop, tc.want) || !errors.Is(c.drop, ErrBadChain) {
				t.Fatalf("drop = %v, want %v", c.drop, tc.want)
			}
		})
	}
}

func TestChainEndlessIsCut(t *testing.T) {
	var c txChain
	s := slots(TxRequest{Gref: 1, Flags: TxMoreData, ID: 1, Size: 0})[0]
	n := 0
	for !c.feed(s, LegacySlotsMax) {
		n++
		if n > 10*maxChainSlots {
			t.Fatal("endless chain never cut")
		}
	}
	if n+1 != maxChainSlots || c.drop == nil {
		t.Fatalf("cut after %d slots (drop %v), want %d", n+1, c.drop, maxChainSlots)
	}
	c.reset()
	if c.state != csStart || c.nids != 0 {
		t.Fatal("reset did not restart")
	}
}

func TestChainMcast(t *testing.T) {
	var c txChain
	ss := slots(
		TxRequest{Gref: 0, Flags: TxExtraInfo, ID: 3, Size: 0},
		ExtraInfo{Type: ExtraTypeMcastAdd, Mcast: [6]byte{1, 0, 0x5e, 0, 0, 1}},
	)
	if n := feedAll(&c, ss, LegacySlotsMax); n != 2 || !c.mcast() || c.drop != nil {
		t.Fatalf("mcast chain: n=%d mcast=%v drop=%v", n, c.mcast(), c.drop)
	}
}

// FuzzTxChain feeds arbitrary slots and checks the parser's invariants:
// it never panics, never holds more than maxChainSlots, and a chain it
// accepts is consistent (sizes add up, no slot crosses its page, the first
// slot holds an Ethernet header, at most LegacySlotsMax requests).
func FuzzTxChain(f *testing.F) {
	for _, ss := range [][][]byte{
		slots(TxRequest{Gref: 1, ID: 1, Size: 60}),
		slots(TxRequest{Gref: 1, Flags: TxMoreData | TxExtraInfo, ID: 1, Size: 5000},
			ExtraInfo{Type: ExtraTypeGSO, GSOSize: 1448, GSOType: GSOTypeTCPv4},
			TxRequest{Gref: 2, ID: 2, Size: 4000}),
		slots(TxRequest{Flags: TxExtraInfo, ID: 1},
			ExtraInfo{Type: ExtraTypeMcastAdd, Flags: ExtraFlagMore},
			ExtraInfo{Type: ExtraTypeMcastDel}),
		slots(TxRequest{Gref: 1, Offset: 4090, ID: 1, Size: 60}),
	} {
		var seed []byte
		for _, s := range ss {
			seed = append(seed, s...)
		}
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c txChain
		for len(data) >= TxEntrySize {
			slot := data[:TxEntrySize]
			data = data[TxEntrySize:]
			if !c.feed(slot, LegacySlotsMax) {
				if c.nids > maxChainSlots {
					t.Fatalf("chain holds %d slots", c.nids)
				}
				continue
			}
			if c.drop == nil && !c.mcast() {
				if c.nreq < 1 || c.nreq > LegacySlotsMax {
					t.Fatalf("accepted %d requests", c.nreq)
				}
				if c.reqs[0].Size < EthHeaderLen {
					t.Fatalf("accepted first slot of %d bytes", c.reqs[0].Size)
				}
				total := 0
				for i := 0; i < c.nreq; i++ {
					r := c.reqs[i]
					if int(r.Offset)+int(r.Size) > PageSize {
						t.Fatalf("accepted slot %d crossing its page: %+v", i, r)
					}
					total += int(r.Size)
				}
				if total > MaxTxSize || total != c.packetLen() {
					t.Fatalf("accepted packet of %d bytes", total)
				}
				if g, ok := c.gso(); ok && (g.GSOSize == 0 || (g.GSOType != GSOTypeTCPv4 && g.GSOType != GSOTypeTCPv6)) {
					t.Fatalf("accepted bad gso %+v", g)
				}
			}
			c.reset()
		}
	})
}

// FuzzExtraInfo checks the extra-info decoder round-trips what it reads.
func FuzzExtraInfo(f *testing.F) {
	f.Add([]byte{1, 0, 0xa8, 5, 1, 0, 0, 0})
	f.Add([]byte{2, 1, 1, 0, 0x5e, 0, 0, 0xfb})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < ExtraInfoSize {
			return
		}
		e := DecodeExtraInfo(b)
		out := make([]byte, ExtraInfoSize)
		e.Encode(out)
		if out[0] != b[0] || out[1] != b[1] {
			t.Fatalf("type/flags not preserved: % x -> % x", b[:8], out)
		}
		if e.Type == ExtraTypeGSO && (DecodeExtraInfo(out).GSOSize != e.GSOSize || DecodeExtraInfo(out).GSOType != e.GSOType) {
			t.Fatalf("gso not preserved")
		}
	})
}
