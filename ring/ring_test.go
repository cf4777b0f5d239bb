package ring

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func newMem(pages int) []byte { return make([]byte, pages*PageSize) }

// The numbers below are ring.h's and the PV protocols': struct <name>_sring
// has req_prod, req_event, rsp_prod, rsp_event, a 4-byte pvt union and
// __pad[44], so entries start at 64; __RING_SIZE rounds down to 2^n.
func TestHeaderLayout(t *testing.T) {
	require.Equal(t, 0, offReqProd)
	require.Equal(t, 4, offReqEvent)
	require.Equal(t, 8, offRspProd)
	require.Equal(t, 12, offRspEvent)
	require.Equal(t, 16+4+44, HeaderSize)
}

func TestEntries(t *testing.T) {
	for _, c := range []struct {
		name             string
		bytes, entrySize int
		want             uint32
	}{
		{"blkif x86_64 1 page", PageSize, 112, 32}, // BLK_RING_SIZE(order 0)
		{"blkif x86_32 1 page", PageSize, 108, 32},
		{"blkif 16 pages", 16 * PageSize, 112, 512}, // order 4
		{"blkif 2 pages", 2 * PageSize, 112, 64},
		{"netif tx", PageSize, 12, 256}, // NET_TX_RING_SIZE
		{"netif rx", PageSize, 8, 256},  // NET_RX_RING_SIZE
		{"too large", PageSize, PageSize, 0},
		{"zero entry", PageSize, 0, 0},
	} {
		require.Equal(t, c.want, Entries(c.bytes, c.entrySize), c.name)
	}
}

func TestLayoutErrors(t *testing.T) {
	for _, mem := range [][]byte{nil, make([]byte, 100), newMem(17), make([]byte, PageSize+1)} {
		_, err := NewBack(mem, 112)
		require.ErrorIs(t, err, ErrLayout)
		_, err = NewFront(mem, 112)
		require.ErrorIs(t, err, ErrLayout)
	}
	_, err := NewBack(newMem(1), PageSize-HeaderSize+1)
	require.ErrorIs(t, err, ErrLayout)
	_, err = NewBack(newMem(2)[1:PageSize+1], 8)
	require.ErrorIs(t, err, ErrLayout, "misaligned memory")
}

func TestFrontInit(t *testing.T) {
	mem := newMem(1)
	for i := range mem[:HeaderSize] {
		mem[i] = 0xAA
	}
	f, err := NewFront(mem, 112)
	require.NoError(t, err)
	le := binary.LittleEndian
	require.Equal(t, uint32(0), le.Uint32(mem[offReqProd:]))
	require.Equal(t, uint32(1), le.Uint32(mem[offReqEvent:]))
	require.Equal(t, uint32(0), le.Uint32(mem[offRspProd:]))
	require.Equal(t, uint32(1), le.Uint32(mem[offRspEvent:]))
	require.Equal(t, make([]byte, HeaderSize-16), mem[16:HeaderSize], "padding cleared")
	require.Equal(t, uint32(32), f.Free())
}

// Entries land where ring.h puts them: slot i at 64 + (i mod size)*entrySize.
func TestSlotPlacement(t *testing.T) {
	mem := newMem(1)
	f, _ := NewFront(mem, 112)
	for i := 0; i < 33; i++ {
		s := f.Request()
		s[0] = byte(i + 1)
		f.Unconsumed() // no effect
		if i == 31 {
			require.Equal(t, byte(32), mem[HeaderSize+31*112])
		}
	}
	require.Equal(t, byte(33), mem[HeaderSize], "index 32 wraps to slot 0")
}

func TestNotifyRules(t *testing.T) {
	mem := newMem(1)
	f, _ := NewFront(mem, 112)
	b, err := NewBack(mem, 112)
	require.NoError(t, err)

	// req_event starts at 1: the first push notifies.
	f.Request()
	require.True(t, f.PushRequests())
	// The backend has not asked again (req_event still 1): no notify.
	f.Request()
	require.False(t, f.PushRequests())

	n, err := b.Unconsumed()
	require.NoError(t, err)
	require.Equal(t, uint32(2), n)
	b.Request()
	b.Request()
	more, err := b.FinalCheckForRequests()
	require.NoError(t, err)
	require.False(t, more)
	require.Equal(t, uint32(3), binary.LittleEndian.Uint32(mem[offReqEvent:]), "req_event = req_cons+1")
	f.Request()
	require.True(t, f.PushRequests(), "the backend asked for an event at the next request")

	// Responses: rsp_event starts at 1.
	b.Response()
	require.True(t, b.PushResponses())
	b.Response()
	require.False(t, b.PushResponses())
	require.Equal(t, uint32(2), f.Unconsumed())
	f.Response()
	f.Response()
	require.False(t, f.FinalCheckForResponses())
	require.Equal(t, uint32(3), binary.LittleEndian.Uint32(mem[offRspEvent:]))
	b.Request()
	b.Response()
	require.True(t, b.PushResponses())
	require.Equal(t, uint32(3), b.SharedRspProd())
}

// A final check must see a request pushed between the first look and the
// event request: the race RING_FINAL_CHECK_FOR_REQUESTS exists to close.
func TestFinalCheckSeesLateRequest(t *testing.T) {
	mem := newMem(1)
	f, _ := NewFront(mem, 112)
	b, _ := NewBack(mem, 112)
	f.Request()
	f.PushRequests()
	more, err := b.FinalCheckForRequests()
	require.NoError(t, err)
	require.True(t, more)
}

func TestOverflow(t *testing.T) {
	mem := newMem(1)
	b, _ := NewBack(mem, 112)
	le := binary.LittleEndian
	le.PutUint32(mem[offReqProd:], 32)
	n, err := b.Unconsumed()
	require.NoError(t, err)
	require.Equal(t, uint32(32), n, "exactly a full ring is fine")
	le.PutUint32(mem[offReqProd:], 33)
	_, err = b.Unconsumed()
	require.ErrorIs(t, err, ErrOverflow)
	le.PutUint32(mem[offReqProd:], 0xFFFFFFF0) // "behind" req_cons after wrap
	_, err = b.Unconsumed()
	require.ErrorIs(t, err, ErrOverflow)
	_, err = b.FinalCheckForRequests()
	require.ErrorIs(t, err, ErrOverflow)

	// After consuming without responding, a full ring is still not more
	// than Size ahead of rsp_prod_pvt, but req_cons cannot pass the slots of
	// unanswered requests.
	le.PutUint32(mem[offReqProd:], 32)
	for i := 0; i < 32; i++ {
		b.Request()
	}
	n, err = b.Unconsumed()
	require.NoError(t, err)
	require.Zero(t, n)
	le.PutUint32(mem[offReqProd:], 33)
	_, err = b.Unconsumed()
	require.ErrorIs(t, err, ErrOverflow, "a request in a slot whose response is unpublished")
}

// Indices wrap at 2^32 as RING_IDX does.
func TestWrapAround(t *testing.T) {
	mem := newMem(1)
	f, _ := NewFront(mem, 8)
	b, _ := NewBack(mem, 8)
	start := uint32(0xFFFFFFF0)
	f.reqProdPvt, f.rspCons = start, start
	le := binary.LittleEndian
	le.PutUint32(mem[offReqProd:], start)
	le.PutUint32(mem[offRspProd:], start)
	b.Resume(start, start)
	for i := uint64(0); i < 100; i++ {
		require.NotZero(t, f.Free())
		le.PutUint64(f.Request(), i)
		f.PushRequests()
		n, err := b.Unconsumed()
		require.NoError(t, err)
		require.Equal(t, uint32(1), n)
		v := le.Uint64(b.Request())
		le.PutUint64(b.Response(), v*3)
		b.PushResponses()
		require.Equal(t, uint32(1), f.Unconsumed())
		require.Equal(t, i*3, le.Uint64(f.Response()))
	}
	require.Equal(t, start+100, b.ReqCons())
	require.Equal(t, start+100, b.RspProdPvt())
}

// Resume continues from journal state: responses already published are not
// produced again, requests taken are not taken again.
func TestResume(t *testing.T) {
	mem := newMem(1)
	f, _ := NewFront(mem, 112)
	b, _ := NewBack(mem, 112)
	for i := 0; i < 5; i++ {
		f.Request()[0] = byte(i)
	}
	f.PushRequests()
	for i := 0; i < 3; i++ {
		b.Request()
	}
	b.Response()
	b.PushResponses()
	// The process dies here; a new one attaches with the journal's indices.
	b2, err := NewBack(mem, 112)
	require.NoError(t, err)
	b2.Resume(3, b2.SharedRspProd())
	require.Equal(t, uint32(1), b2.RspProdPvt())
	n, err := b2.Unconsumed()
	require.NoError(t, err)
	require.Equal(t, uint32(2), n)
	require.Equal(t, byte(3), b2.Request()[0])
}

// A frontend and a backend exchange a million requests across goroutines,
// sleeping on channels standing in for event channels exactly when the
// notify rules say so. A lost wake-up would hang the test; a torn or
// reordered entry fails the check of the echoed value.
func TestMillionRequests(t *testing.T) {
	const total = 1_000_000
	mem := newMem(1)
	f, err := NewFront(mem, 16)
	require.NoError(t, err)
	b, err := NewBack(mem, 16)
	require.NoError(t, err)
	toBack := make(chan struct{}, 1)
	toFront := make(chan struct{}, 1)
	kick := func(c chan struct{}) {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	le := binary.LittleEndian
	var wg sync.WaitGroup
	wg.Add(1)
	var backErr error
	go func() { // backend: echo id, return id*2+1
		defer wg.Done()
		served := 0
		for served < total {
			n, err := b.Unconsumed()
			if err != nil {
				backErr = err
				return
			}
			for ; n > 0; n-- {
				req := b.Request()
				id, v := le.Uint64(req), le.Uint64(req[8:])
				rsp := b.Response()
				le.PutUint64(rsp, id)
				le.PutUint64(rsp[8:], v*2+1)
				served++
			}
			if b.PushResponses() {
				kick(toFront)
			}
			more, err := b.FinalCheckForRequests()
			if err != nil {
				backErr = err
				return
			}
			if !more && served < total {
				<-toBack
			}
		}
	}()
	sent, got := 0, 0
	for got < total {
		for sent < total && f.Free() > 0 {
			r := f.Request()
			le.PutUint64(r, uint64(sent))
			le.PutUint64(r[8:], uint64(sent)^0x5555)
			sent++
		}
		if f.PushRequests() {
			kick(toBack)
		}
		for f.Unconsumed() > 0 {
			r := f.Response()
			id, v := le.Uint64(r), le.Uint64(r[8:])
			if id != uint64(got) || v != (id^0x5555)*2+1 {
				t.Fatalf("response %d: id %d value %#x", got, id, v)
			}
			got++
		}
		// Sleep only with requests outstanding (else refill the ring).
		if got < sent && !f.FinalCheckForResponses() {
			<-toFront
		}
	}
	wg.Wait()
	require.NoError(t, backErr)
	require.Equal(t, uint32(total), b.ReqCons())
}

func TestNoAllocations(t *testing.T) {
	mem := newMem(1)
	f, _ := NewFront(mem, 112)
	b, _ := NewBack(mem, 112)
	allocs := testing.AllocsPerRun(1000, func() { roundTrip(f, b) })
	require.Zero(t, allocs)
}

func roundTrip(f *Front, b *Back) {
	f.Request()[0]++
	f.PushRequests()
	if n, _ := b.Unconsumed(); n == 1 {
		v := b.Request()[0]
		b.Response()[0] = v
	}
	b.PushResponses()
	b.FinalCheckForRequests()
	for f.Unconsumed() > 0 {
		f.Response()
	}
	f.FinalCheckForResponses()
}

// BenchmarkRoundTrip is one request and its response through both ends, with
// the notify checks and final checks of a real exchange.
func BenchmarkRoundTrip(b *testing.B) {
	mem := newMem(1)
	f, _ := NewFront(mem, 112)
	bk, _ := NewBack(mem, 112)
	b.ReportAllocs()
	for b.Loop() {
		roundTrip(f, bk)
	}
}

// FuzzBackIndices drives the backend with arbitrary shared indices, as a
// hostile frontend can write them: the backend never hands out more than a
// ring's worth of slots beyond its published responses and never panics.
func FuzzBackIndices(f *testing.F) {
	f.Add(uint32(0), uint32(0), uint32(0), uint8(0), uint8(0))
	f.Add(uint32(33), uint32(0), uint32(0), uint8(0), uint8(0))
	f.Add(uint32(0xFFFFFFFF), uint32(5), uint32(3), uint8(2), uint8(1))
	f.Add(uint32(7), uint32(0xFFFFFFF0), uint32(0xFFFFFFF0), uint8(4), uint8(0))
	f.Fuzz(func(t *testing.T, reqProd, reqCons, rspPvt uint32, order, entryShift uint8) {
		pages := 1 << (order % (MaxOrder + 1))
		entry := 8 << (entryShift % 5) // 8..128
		mem := newMem(pages)
		b, err := NewBack(mem, entry)
		if err != nil {
			t.Fatal(err)
		}
		b.Resume(reqCons, rspPvt)
		binary.LittleEndian.PutUint32(mem[offReqProd:], reqProd)
		n, err := b.Unconsumed()
		if err != nil {
			if !errors.Is(err, ErrOverflow) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if n > b.Size() {
			t.Fatalf("%d unconsumed in a ring of %d", n, b.Size())
		}
		for ; n > 0; n-- {
			b.Request()
			if b.ReqCons()-b.RspProdPvt() > b.Size() {
				t.Fatalf("req_cons %d overtook rsp_prod_pvt %d by more than the ring", b.ReqCons(), b.RspProdPvt())
			}
		}
	})
}

func TestSetReqEvent(t *testing.T) {
	mem := newMem(1)
	f, _ := NewFront(mem, 8)
	b, _ := NewBack(mem, 8)
	f.Request()
	f.Request()
	f.PushRequests()
	b.SetReqEvent(b.ReqCons() + 2 + 1) // wait for a third request
	require.Equal(t, uint32(3), binary.LittleEndian.Uint32(mem[offReqEvent:]))
	f.Request()
	require.True(t, f.PushRequests(), "the third request notifies")
}
