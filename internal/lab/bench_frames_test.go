package lab

import (
	"fmt"
	"strings"
	"testing"
)

// netSnap is one bench_netsnap of the guest: /proc/net/dev's eth0 line
// (rx bytes, packets ... tx bytes, packets), Tcp and drvdom-stats.
func netSnap(rxB, rxP, txB, txP uint64) string {
	return fmt.Sprintf("  eth0:%8d %7d    0    0    0     0          0         0 %8d %7d    0    0    0     0       0          0\n", rxB, rxP, txB, txP) +
		"Tcp: RtoAlgorithm RtoMin\nTcp: 1 200\n" +
		`drvdom-stats {"tx_packets":5,"rx_packets":6}` + "\n"
}

func iperfSecsJSON(bps, secs float64) []byte {
	return fmt.Appendf(nil, `{"end":{"sum_sent":{"bits_per_second":%g},"sum_received":{"bits_per_second":%g,"seconds":%g}}}`, bps, bps, secs)
}

// TestBenchNetFrames: a network row's data frames per second and their
// size come from the guest's NIC counters before and after it, sent
// frames for guest->dom0 and received ones for dom0->guest (the ACKs the
// other way are not counted); bench.md's frames table has each backend's
// medians and the ratios.
func TestBenchNetFrames(t *testing.T) {
	boot := func(idx int, be string, g2dTx, g2dBytes, d2gRx, d2gBytes uint64) []BenchSample {
		files := map[string][]byte{
			BenchFileName(PathNet, "", "guest-to-dom0-P1"): iperfSecsJSON(8e6, 10),
			BenchNetStatName("guest-to-dom0-P1"): []byte(netSnap(1000, 10, 5000, 20) +
				netSnap(1000+70_000, 10+1000, 5000+g2dBytes, 20+g2dTx)),
			BenchFileName(PathNet, "", "dom0-to-guest-P1"): iperfSecsJSON(8e6, 10),
			// Counters past 8 digits leave no space after "eth0:".
			BenchNetStatName("dom0-to-guest-P1"): []byte(netSnap(123_456_789, 100, 0, 0) +
				netSnap(123_456_789+d2gBytes, 100+d2gRx, 66_000, 1000)),
		}
		return BenchSamples(BenchBoot{Index: idx, Rep: 1, Backend: be}, &Report{Files: files, Result: &Result{}})
	}
	var ss []BenchSample
	ss = append(ss, boot(1, BackendKernel, 500, 10_000_000, 8000, 12_000_000)...)
	ss = append(ss, boot(2, BackendDrvdom, 2000, 10_000_000, 8000, 12_000_000)...)
	ss = append(ss, boot(3, BackendDrvdom, 1000, 10_000_000, 4000, 12_000_000)...)
	get := func(boot int, wl string) BenchSample {
		for _, s := range ss {
			if s.Boot == boot && s.Workload == wl {
				return s
			}
		}
		t.Fatalf("no sample boot %d %s", boot, wl)
		return BenchSample{}
	}
	if s := get(1, "guest-to-dom0-P1"); !s.OK || s.FramesPerS != 50 || s.FrameBytes != 20_000 {
		t.Errorf("guest->dom0: %+v, want 50 frames/s of 20000 bytes (the guest's tx)", s)
	}
	if s := get(1, "dom0-to-guest-P1"); !s.OK || s.FramesPerS != 800 || s.FrameBytes != 1500 {
		t.Errorf("dom0->guest: %+v, want 800 frames/s of 1500 bytes (the guest's rx)", s)
	}
	be := []string{BackendKernel, BackendDrvdom}
	var b strings.Builder
	WriteBenchFrames(&b, AggregateBench(ss, be), ss, be)
	for _, want := range []string{
		"| row | kernel frames/s | kernel KB/frame | drvdom frames/s | drvdom KB/frame | drvdom/kernel frames/s | drvdom/kernel KB/frame |",
		// drvdom: medians of 200 and 100 frames/s, of 4883 and 9766 KB.
		"| net guest-to-dom0-P1 | 50 | 19.5 | 150 | 7.3 | 3.00x | 0.38x |",
		"| net dom0-to-guest-P1 | 800 | 1.5 | 600 | 2.2 | 0.75x | 1.50x |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("lacks %q in\n%s", want, b.String())
		}
	}

	// A row without its counters, or with one snapshot, has no frames
	// and the table leaves its cells empty; no frames at all: no table.
	if _, _, ok := netFrames([]byte(netSnap(1, 1, 1, 1)), false, 10); ok {
		t.Error("one snapshot gave frames")
	}
	if _, _, ok := netFrames([]byte(netSnap(1, 1, 1, 1)+netSnap(1, 1, 1, 1)), false, 10); ok {
		t.Error("no frames sent gave a frame size")
	}
	b.Reset()
	WriteBenchFrames(&b, AggregateBench(ss, be), []BenchSample{{Path: PathNet, OK: true, Gbps: 1, Backend: BackendKernel, Workload: "guest-to-dom0-P1"}}, be)
	if b.Len() != 0 {
		t.Errorf("rows without frames wrote %q", b.String())
	}
}
