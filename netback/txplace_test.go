package netback

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
)

// TestTxPlace: the chosen start is within a page of the packed one and
// never has more page-straddling slots than it; in netfront's layouts (a
// header slot, then a page run from any offset) at most the header slot
// straddles (when it is longer than the run's offset).
func TestTxPlace(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	for i := 0; i < 20000; i++ {
		lo := rng.IntN(3 * PageSize)
		reqs := make([]TxRequest, 1+rng.IntN(LegacySlotsMax))
		for j := range reqs {
			off := rng.IntN(PageSize)
			reqs[j] = TxRequest{Offset: uint16(off), Size: uint16(rng.IntN(PageSize - off + 1))}
		}
		s := txPlace(lo, reqs)
		if s < lo || s >= lo+PageSize {
			t.Fatalf("txPlace(%d, %v) = %d: outside [lo, lo+PageSize)", lo, reqs, s)
		}
		if x, x0 := txCrossings(s, reqs), txCrossings(lo, reqs); x > x0 {
			t.Fatalf("txPlace(%d, %v) = %d: %d crossings, packed has %d", lo, reqs, s, x, x0)
		}
	}
	for i := 0; i < 2000; i++ {
		lo := rng.IntN(3 * PageSize)
		hdrOff, hdrLen := rng.IntN(PageSize-128), 54+rng.IntN(74)
		reqs := []TxRequest{{Offset: uint16(hdrOff), Size: uint16(hdrLen)}}
		off := rng.IntN(PageSize)
		for rest := 1 + rng.IntN(60000); rest > 0; off = 0 {
			n := min(rest, PageSize-off)
			reqs = append(reqs, TxRequest{Offset: uint16(off), Size: uint16(n)})
			rest -= n
		}
		if s := txPlace(lo, reqs); txCrossings(s, reqs) > 1 {
			t.Fatalf("netfront layout %v from %d: start %d straddles %d pages", reqs, lo, s, txCrossings(s, reqs))
		}
	}
}

// TestTxGSOPlacedIntact: TSO packets placed by txPlace reach the TAP
// byte for byte, with one copy op per guest slot.
func TestTxGSOPlacedIntact(t *testing.T) {
	r := newRig(t)
	m := &opsMapper{Mapper: r.q.mapper}
	r.q.mapper = m
	ctx := context.Background()
	for i, payload := range []int{1, 1500, 4000, 30000, 57000, 65400} {
		frames := [][]byte{
			BuildFrame(FrameOpts{Payload: payload, PartialSum: true, Seed: byte(i)}),
			BuildFrame(FrameOpts{Payload: payload/2 + 1, PartialSum: true, Seed: byte(i + 100)}),
		}
		slots := 0
		for j, f := range frames {
			off := 0x333 * (j + i + 1) % PageSize
			r.sendTxGSO(f, 54, 0x100*(i+1), off, 1448)
			slots += 1 + (off+len(f)-54+PageSize-1)/PageSize
		}
		m.ops = 0
		if err := r.q.txWork(); err != nil {
			t.Fatal(err)
		}
		if bad := r.reapTx(); bad != len(frames) {
			t.Fatalf("payload %d: %d responses not okay, want the %d extras'", payload, bad, len(frames))
		}
		for _, f := range frames {
			got, err := r.tap.Recv(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[VnetHdrSize:], f) {
				t.Fatalf("payload %d: frame on the TAP differs from the one sent", payload)
			}
			r.tap.Release(got)
		}
		if m.ops != slots {
			t.Errorf("payload %d: %d copy ops for %d slots", payload, m.ops, slots)
		}
	}
}
