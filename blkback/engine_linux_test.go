//go:build linux

package blkback

import (
	"runtime"
	"testing"
)

// TestEngineChoice: io_uring for O_DIRECT backings always, and for
// buffered ones only when the process has a single P (a one-vCPU driver
// domain, where the pool's syscall per request costs most).
func TestEngineChoice(t *testing.T) {
	p := tempDisk(t, 1<<20)
	direct, err := OpenBacking(p, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	buffered, err := OpenBacking(p, OpenOptions{NoDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer buffered.Close()
	if _, d := direct.(rawFD).uringFD(); !d {
		t.Skip("O_DIRECT refused on this test machine's temp dir")
	}
	prev := runtime.GOMAXPROCS(2)
	defer runtime.GOMAXPROCS(prev)
	if !preferURing(direct) || preferURing(buffered) {
		t.Errorf("GOMAXPROCS 2: direct %v buffered %v, want io_uring for direct only", preferURing(direct), preferURing(buffered))
	}
	runtime.GOMAXPROCS(1)
	if !preferURing(direct) || !preferURing(buffered) {
		t.Errorf("GOMAXPROCS 1: direct %v buffered %v, want io_uring for both", preferURing(direct), preferURing(buffered))
	}
	if preferURing(NewNullDisk(1<<20, 512)) {
		t.Error("a backing without a descriptor cannot use io_uring")
	}
}
