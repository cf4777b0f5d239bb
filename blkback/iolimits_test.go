package blkback

import (
	"reflect"
	"testing"
)

func TestIOLimitsSplit(t *testing.T) {
	const pg = PageSize
	// n whole pages at distinct page-aligned addresses (not contiguous).
	pages := func(n int) ([]uint64, []int) {
		a, l := make([]uint64, n), make([]int, n)
		for i := range a {
			a[i], l[i] = uint64(0x10000000+i*3*pg), pg
		}
		return a, l
	}
	nvme := ioLimits{maxBytes: 512 << 10, maxSegs: 127, boundary: pg - 1}
	cases := []struct {
		name string
		lim  ioLimits
		addr []uint64
		lens []int
		want []piece
	}{
		{"no limits", ioLimits{}, nil, nil, []piece{{0, 256, 0}}},
		{"4 KiB", nvme, nil, nil, []piece{{0, 1, 0}}},
		{"1 MiB on an NVMe: 127 segments", nvme, nil, nil, []piece{{0, 127, 0}, {127, 254, 127 * pg}, {254, 256, 254 * pg}}},
		{"1 MiB at 128 KiB", ioLimits{maxBytes: 128 << 10}, nil, nil, []piece{
			{0, 32, 0}, {32, 64, 32 * pg}, {64, 96, 64 * pg}, {96, 128, 96 * pg},
			{128, 160, 128 * pg}, {160, 192, 160 * pg}, {192, 224, 192 * pg}, {224, 256, 224 * pg}}},
		{"more than maxPieces: whole", ioLimits{maxBytes: 64 << 10}, nil, nil, []piece{{0, 256, 0}}},
	}
	for _, c := range cases {
		n := 256
		if c.name == "4 KiB" {
			n = 1
		}
		if c.addr == nil {
			c.addr, c.lens = pages(n)
		}
		dst := make([]piece, 0, maxPieces)
		got := c.lim.split(dst, len(c.lens), func(i int) uint64 { return c.addr[i] }, func(i int) int { return c.lens[i] })
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}

	// A sub-page segment (sectors 0-3 of its page) ends short of the
	// boundary: the block layer would split the bio after it, so do we.
	a, l := pages(6)
	l[2] = 4 * SectorSize
	// One starting mid-page (sectors 2-7) begins off the boundary.
	a[4] += 2 * SectorSize
	l[4] = 6 * SectorSize
	got := nvme.split(make([]piece, 0, maxPieces), 6, func(i int) uint64 { return a[i] }, func(i int) int { return l[i] })
	want := []piece{{0, 3, 0}, {3, 4, 2*pg + 4*SectorSize}, {4, 6, 3*pg + 4*SectorSize}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("gaps: %v, want %v", got, want)
	}
	// Without a virtual boundary the same buffers go in one piece.
	got = ioLimits{maxSegs: 127}.split(got, 6, func(i int) uint64 { return a[i] }, func(i int) int { return l[i] })
	if !reflect.DeepEqual(got, []piece{{0, 6, 0}}) {
		t.Errorf("no boundary: %v", got)
	}
}

func TestReadIOLimits(t *testing.T) {
	attrs := func(m map[string]uint64) func(string) (uint64, bool) {
		return func(k string) (uint64, bool) { v, ok := m[k]; return v, ok }
	}
	// Linux 6.1's nvme on QEMU's controller (mdts 7): 512 KiB, 127 segments.
	got := readIOLimits(attrs(map[string]uint64{"queue/max_sectors_kb": 512, "queue/max_segments": 127, "queue/virt_boundary_mask": 4095}))
	if want := (ioLimits{maxBytes: 512 << 10, maxSegs: 127, boundary: 4095}); got != want {
		t.Errorf("nvme: %+v, want %+v", got, want)
	}
	// A loop device: no virtual boundary (mask 0).
	got = readIOLimits(attrs(map[string]uint64{"queue/max_sectors_kb": 1280, "queue/max_segments": 128, "queue/virt_boundary_mask": 0}))
	if want := (ioLimits{maxBytes: 1280 << 10, maxSegs: 128}); got != want {
		t.Errorf("loop: %+v, want %+v", got, want)
	}
	// Missing or absurd attributes: no byte or segment limit, a page boundary.
	got = readIOLimits(attrs(map[string]uint64{"queue/max_sectors_kb": 0, "queue/max_segments": 0}))
	if want := (ioLimits{boundary: PageSize - 1}); got != want {
		t.Errorf("missing: %+v, want %+v", got, want)
	}
}
