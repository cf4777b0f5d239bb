//go:build linux

package grant

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzSimCopy feeds arbitrary segments (refs, domains, offsets, lengths,
// local buffers) to the simulator's Copy: it must never panic, never write a
// read-only grant, a grant of another domain or a local byte past Len, and
// only report known statuses.
func FuzzSimCopy(f *testing.F) {
	const segSize = 16
	f.Add(make([]byte, segSize))
	f.Add([]byte{0, 1, 0, 0, 0, 0, 0xF0, 0x0F, 0, 0, 0, 1, 2, 2, 0, 0})
	f.Add(bytes.Repeat([]byte{1, 0, 1, 0, 0, 0, 0x10, 0, 0xFF, 0x0F, 0x20, 0, 2, 2, 2, 0}, 3))
	f.Add(bytes.Repeat([]byte{0xFF}, 4*segSize))

	s := NewSim()
	rw := share(f, s, guest, back, 2, true)
	ro := share(f, s, guest, back, 1, false)
	toOther := share(f, s, guest, other, 1, true)
	mp := s.Mapper(back)
	pool := []Ref{rw.Refs()[0], rw.Refs()[1], ro.Refs()[0], toOther.Refs()[0]}
	doms := []uint16{guest, back, other, 55}
	roWant := bytes.Repeat([]byte{0x11}, PageSize)
	otherWant := bytes.Repeat([]byte{0x22}, PageSize)
	copy(ro.Bytes(), roWant)
	copy(toOther.Bytes(), otherWant)
	const guard = 64
	locals := make([][]byte, 0, 16)

	f.Fuzz(func(t *testing.T, in []byte) {
		n := min(len(in)/segSize, 16)
		segs := make([]CopySeg, n)
		locals = locals[:0]
		ptr := func(kind byte, refRaw uint32, dom byte, off uint16) CopyPtr {
			if kind&1 == 0 {
				// Local buffer of (refRaw % 4097) bytes between guard areas.
				l := int(refRaw % (PageSize + 1))
				b := bytes.Repeat([]byte{0x5A}, l+2*guard)
				locals = append(locals, b)
				return CopyPtr{Local: b[guard : guard+l : guard+l]}
			}
			ref := Ref(refRaw)
			if kind&2 == 0 {
				ref = pool[refRaw%uint32(len(pool))]
			}
			return CopyPtr{Ref: ref, Dom: doms[int(dom)%len(doms)], Offset: off}
		}
		for i := range segs {
			b := in[i*segSize:]
			le := binary.LittleEndian
			segs[i] = CopySeg{
				Src:    ptr(b[0], le.Uint32(b[2:]), b[12], le.Uint16(b[6:])),
				Dst:    ptr(b[1], uint32(le.Uint16(b[14:]))*7, b[13], le.Uint16(b[8:])),
				Len:    le.Uint16(b[10:]),
				Status: 99,
			}
		}
		if err := mp.Copy(segs); err != nil {
			t.Fatal(err)
		}
		for i, sg := range segs {
			switch Status(sg.Status) {
			case StatusOkay, StatusBadCopyArg, StatusBadGntref, StatusBadDomain, StatusGeneralError:
			default:
				t.Fatalf("segment %d: unexpected status %d", i, sg.Status)
			}
		}
		if !bytes.Equal(ro.Bytes(), roWant) {
			t.Fatal("read-only grant written")
		}
		if !bytes.Equal(toOther.Bytes(), otherWant) {
			t.Fatal("grant of another domain written")
		}
		for _, b := range locals {
			for _, g := range [][]byte{b[:guard], b[len(b)-guard:]} {
				for _, c := range g {
					if c != 0x5A {
						t.Fatal("local buffer written outside Local[:Len]")
					}
				}
			}
		}
	})
}
