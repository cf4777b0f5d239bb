package netback

import (
	"bytes"
	"context"
	"reflect"
	"testing"
	"time"

	"drvdom/grant"
)

// opsMapper counts what Linux's gntdev makes of each grant copy batch on
// real Xen: it splits every segment at the pages of its local side (one
// gnttab_copy op and one get_user_pages_fast per piece) and hands Xen 16
// ops per hypercall (GNTDEV_COPY_BATCH), the count running on across the
// segments of one ioctl. The simulator's copy has none of these costs, so
// benchmarks report them as metrics.
type opsMapper struct {
	grant.Mapper
	calls, ops, hypercalls int
}

func (m *opsMapper) Copy(segs []grant.CopySeg) error {
	n := 0
	for _, s := range segs {
		if s.Len == 0 {
			continue
		}
		loc := s.Src.Local
		if loc == nil {
			loc = s.Dst.Local
		}
		a := reflect.ValueOf(&loc[0]).Pointer() // a pointer: no allocation
		n += int((a+uintptr(s.Len)-1)/PageSize-a/PageSize) + 1
	}
	m.calls++
	m.ops += n
	m.hypercalls += (n + 15) / 16
	return m.Mapper.Copy(segs)
}

func (m *opsMapper) report(b *testing.B, pkts int) {
	b.ReportMetric(float64(m.ops)/float64(pkts), "gntops/pkt")
	b.ReportMetric(float64(m.hypercalls)/float64(pkts), "hcalls/pkt")
}

// sendTxGSO puts a TSO frame on the tx ring as Linux netfront lays one
// out: the headers (hdrLen bytes of the linear area, at offset hdrOff of
// its page), the GSO extra, then the payload from a page fragment starting
// at offset fragOff, one slot per guest page it touches.
func (r *rig) sendTxGSO(frame []byte, hdrLen, hdrOff, fragOff int, gsoSize uint16) {
	pages := r.txData.Bytes()
	refs := r.txData.Refs()
	id := func() uint16 { return uint16(r.tx.Size()-r.tx.Free()) % 256 }
	i0 := id()
	copy(pages[int(i0)*PageSize+hdrOff:], frame[:hdrLen])
	TxRequest{Gref: uint32(refs[i0]), Offset: uint16(hdrOff), ID: i0, Size: uint16(len(frame)),
		Flags: TxCsumBlank | TxMoreData | TxExtraInfo}.Encode(r.tx.Request())
	ExtraInfo{Type: ExtraTypeGSO, GSOSize: gsoSize, GSOType: GSOTypeTCPv4}.Encode(r.tx.Request())
	off := fragOff
	for rest := frame[hdrLen:]; len(rest) > 0; off = 0 {
		n := min(len(rest), PageSize-off)
		i := id()
		copy(pages[int(i)*PageSize+off:], rest[:n])
		req := TxRequest{Gref: uint32(refs[i]), Offset: uint16(off), ID: i, Size: uint16(n)}
		if len(rest) > n {
			req.Flags = TxMoreData
		}
		req.Encode(r.tx.Request())
		rest = rest[n:]
	}
	r.tx.PushRequests()
}

// BenchmarkQueueTxGSO: the tx path with the lab's traffic, 57 KB TSO
// packets from netfront (headers in their own slot, payload from a page
// fragment at an odd offset), two per wakeup.
func BenchmarkQueueTxGSO(b *testing.B) {
	r := newRig(b)
	m := &opsMapper{Mapper: r.q.mapper}
	r.q.mapper = m
	frame := BuildFrame(FrameOpts{Payload: 57000, PartialSum: true})
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	start := time.Now()
	for i := 0; i < b.N; i += 2 {
		n := min(2, b.N-i)
		send := func(j int) { r.sendTxGSO(frame, 66, 0x742, 0x5a0*(j+1), 1448) }
		if bad := r.txWakeup(b, n, send); bad != n { // the GSO extras' RspNull
			b.Fatalf("%d tx responses not okay, want the %d extras'", bad, n)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pkts/s")
	m.report(b, b.N)
}

// BenchmarkQueueRxGSO: the rx path with 57 KB TSO frames from the TAP,
// two waiting per wakeup.
func BenchmarkQueueRxGSO(b *testing.B) {
	r := newRig(b)
	m := &opsMapper{Mapper: r.q.mapper}
	r.q.mapper = m
	frame := BuildFrame(FrameOpts{Payload: 57000, PartialSum: true})
	pkt := make([]byte, VnetHdrSize+len(frame))
	VnetHdr{Flags: VnetFNeedsCsum, GSOType: VnetGSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}.Encode(pkt)
	copy(pkt[VnetHdrSize:], frame)
	r.postRx()
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	start := time.Now()
	for i := 0; i < b.N; i += 2 {
		r.rxWakeup(b, pkt, min(2, b.N-i))
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pkts/s")
	m.report(b, b.N)
}

// BenchmarkQueueSmallOps: 1514-byte frames, 64 per wakeup, both ways: the
// copy ops small frames cost (rx packs them; tx places them).
func BenchmarkQueueSmallOps(b *testing.B) {
	for _, dir := range []string{"tx", "rx"} {
		b.Run(dir, func(b *testing.B) {
			r := newRig(b)
			m := &opsMapper{Mapper: r.q.mapper}
			r.q.mapper = m
			frame := BuildFrame(FrameOpts{Payload: 1460, PartialSum: true})
			pkt := make([]byte, VnetHdrSize+len(frame))
			copy(pkt[VnetHdrSize:], frame)
			if dir == "rx" {
				r.postRx()
			}
			b.ReportAllocs()
			for i := 0; i < b.N; i += 64 {
				n := min(64, b.N-i)
				if dir == "tx" {
					r.txWakeup(b, n, func(int) { r.sendTx(frame, TxCsumBlank) })
				} else {
					r.rxWakeup(b, pkt, n)
				}
			}
			m.report(b, b.N)
			b.ReportMetric(float64(m.calls)/float64(b.N), "copies/pkt")
		})
	}
}

// TestRxGSOAligned: frames read from the TAP, TSO or small, are copied
// into the guest's buffers with one copy op per data slot (each frame
// starts on a page of the arena), byte for byte.
func TestRxGSOAligned(t *testing.T) {
	r := newRig(t)
	m := &opsMapper{Mapper: r.q.mapper}
	r.q.mapper = m
	ctx := context.Background()
	var frames [][]byte
	for i, payload := range []int{57000, 30000, 100, 1460, 60} {
		f := BuildFrame(FrameOpts{Payload: payload, PartialSum: true, Seed: byte(i)})
		pkt := make([]byte, VnetHdrSize+len(f))
		h := VnetHdr{Flags: VnetFNeedsCsum, CsumStart: 34, CsumOffset: 16}
		if len(f) > 1514 {
			h.GSOType, h.HdrLen, h.GSOSize = VnetGSOTCPv4, 54, 1448
		}
		h.Encode(pkt)
		copy(pkt[VnetHdrSize:], f)
		if err := r.tap.Inject(ctx, pkt); err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f)
	}
	r.postRx()
	for r.q.stats.snapshot().RxPackets < uint64(len(frames)) {
		if err := r.q.rxWakeup(ctx); err != nil {
			t.Fatal(err)
		}
	}
	data := 0
	for _, f := range frames {
		data += (len(f) + PageSize - 1) / PageSize
	}
	if m.ops != data || m.calls > 2 {
		t.Errorf("%d copy ops in %d batches for %d data slots", m.ops, m.calls, data)
	}
	pages := r.rxData.Bytes()
	for i, f := range frames {
		var got []byte
		for more := true; more; {
			if r.rx.Unconsumed() == 0 {
				t.Fatalf("frame %d: responses end early", i)
			}
			rsp := DecodeRxResponse(r.rx.Response())
			if rsp.Flags&RxExtraInfo != 0 {
				r.rx.Response() // the GSO extra
			}
			if rsp.Status < 0 {
				t.Fatalf("frame %d: status %d", i, rsp.Status)
			}
			got = append(got, pages[int(rsp.ID)*PageSize:][int(rsp.Offset):][:rsp.Status]...)
			more = rsp.Flags&RxMoreData != 0
		}
		if !bytes.Equal(got, f) {
			t.Fatalf("frame %d (%d bytes): the guest got different bytes", i, len(f))
		}
	}
}
