package lab

import (
	"strings"
	"testing"
)

// TestBenchRowCPU: guest and network rows get the CPU of the sampler
// intervals that lie mostly inside them (driver domain busy, drvdomd's
// share, dom0 busy); device rows and rows without a span get none.
func TestBenchRowCPU(t *testing.T) {
	// Driver domain, 1 vCPU: snapshots every 5 s from epoch 1000; 100 ticks
	// per interval. 1000-1005: 50 busy, drvdomd 30; 1005-1010: 90 busy,
	// drvdomd 80; 1010-1015: 10 busy.
	dd := "T 10 cpu 0 0 0 0 0 0 0 0\nE 1000\nP 7 100 100 0 0\n" +
		"T 15 cpu 50 0 0 50 0 0 0 0\nE 1005\nP 7 100 100 20 10\n"
	dd2 := "T 20 cpu 100 0 40 60 0 0 0 0\nE 1010\nP 7 100 100 70 40\n" +
		"T 25 cpu 110 0 40 150 0 0 0 0\nE 1015\nP 7 100 100 70 40\n"
	// dom0, 2 vCPUs: 200 ticks per interval, 1005-1010 half busy.
	d0 := "T 5 cpu 0 0 0 0 0 0 0 0\nE 1005\nD eth1: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\nT 10 cpu 100 0 0 100 0 0 0 0\nE 1010\n"
	files := map[string][]byte{
		benchStatPrefix + "1.txt": []byte(dd),
		benchStatPrefix + "2.txt": []byte(dd2),
		BenchDom0StatFile:         []byte(d0),
		// fio in the guest from 1005 to 1010 (end 1010.0 s, 5 s).
		BenchFileName(PathGuest, BackingNVMe, "4k-randread-qd1"): fioAt(1010_000, 5000, 500),
		// iperf3 from 1000 for 5 s.
		BenchFileName(PathNet, "", "guest-to-dom0-P1"): []byte(`{"start":{"timestamp":{"timesecs":1000},"test_start":{"duration":5}},"end":{"sum_received":{"bits_per_second":1e8}}}`),
		// a device row in the same window gets nothing (the samplers start
		// after the baseline), an after-guest device row gets its CPU.
		BenchFileName(PathDevice, BackingNVMe, "4k-randread-qd1"):      fioAt(1010_000, 5000, 900),
		BenchFileName(PathDeviceAfter, BackingNVMe, "4k-randread-qd1"): fioAt(1015_000, 5000, 900),
	}
	ss := BenchSamples(BenchBoot{Index: 1, Rep: 1, Backend: BackendDrvdom}, &Report{Files: files, Result: &Result{}})
	var guest, net, dev BenchSample
	for _, s := range ss {
		switch {
		case s.Path == PathGuest && s.Backing == BackingNVMe && s.Workload == "4k-randread-qd1":
			guest = s
		case s.Path == PathNet && s.Workload == "guest-to-dom0-P1":
			net = s
		case s.Path == PathDevice && s.Backing == BackingNVMe && s.Workload == "4k-randread-qd1":
			dev = s
		}
	}
	near := func(a, b float64) bool { return a > b-0.001 && a < b+0.001 }
	if !guest.OK || !near(guest.DDBusy, 0.9) || !near(guest.DrvdomdCPU, 0.8) || !near(guest.Dom0Busy, 0.5) {
		t.Errorf("guest row %+v", guest)
	}
	if !net.OK || !near(net.DDBusy, 0.5) || !near(net.DrvdomdCPU, 0.3) || net.Dom0Busy != 0 {
		t.Errorf("net row %+v", net)
	}
	if dev.DDBusy != 0 || dev.Dom0Busy != 0 {
		t.Errorf("device row %+v", dev)
	}
	for _, s := range ss {
		if s.Path == PathDeviceAfter && s.Workload == "4k-randread-qd1" && !near(s.DDBusy, 0.1) {
			t.Errorf("after-guest device row %+v", s)
		}
	}
	// A row that covers parts of two intervals gets each in proportion:
	// 1002-1006 is 3/5 of 1000-1005 (50% busy) and 1/5 of 1005-1010 (90%).
	if busy, _, ok := cpuOver(ParseDDStat([]byte(dd+dd2)), 1002, 1006); !ok || !near(busy, 0.6) {
		t.Errorf("partial intervals: busy %v ok %v, want 0.6", busy, ok)
	}
	if _, _, ok := cpuOver(ParseDDStat([]byte(dd+dd2)), 2000, 2005); ok {
		t.Error("a row outside every interval got CPU")
	}
	var b strings.Builder
	be := []string{BackendKernel, BackendDrvdom}
	WriteBenchCPU(&b, AggregateBench(ss, be), ss, be)
	for _, want := range []string{
		"| row | kernel driver domain | kernel dom0 | drvdom driver domain | drvdom dom0 |",
		"| nvme 4k-randread-qd1 | — | — | 90% (drvdomd 80%) | 50% |",
		"| net guest-to-dom0-P1 | — | — | 50% (drvdomd 30%) | — |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("lacks %q in\n%s", want, b.String())
		}
	}
	b.Reset()
	WriteBenchCPU(&b, nil, []BenchSample{{OK: true, IOPS: 1}}, be)
	if b.Len() != 0 {
		t.Errorf("no CPU wrote %q", b.String())
	}
}

func TestParseDDStatEpoch(t *testing.T) {
	s := ParseDDStat([]byte("E 5\nT 1 cpu 1 0 1 1 0 0 0 0\nE 1795923953\nT 2 cpu 1 0 1 1 0 0 0 0\n"))
	if len(s) != 2 || s[0].Epoch != 1795923953 || s[1].Epoch != 0 {
		t.Errorf("%+v", s)
	}
}
