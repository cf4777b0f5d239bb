package lab

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRecollectBenchReadsTheBootsAgain: a finished run's boot directories
// (consoles with their files, dom0's sampler file in the directory) give
// the same samples again, now with what this build derives (the guest
// row's CPU, dom0 included), and the outputs go to another directory; the
// run's own directory is left as it was.
func TestRecollectBenchReadsTheBootsAgain(t *testing.T) {
	run, out := t.TempDir(), filepath.Join(t.TempDir(), "again")
	boot := filepath.Join(run, "boot-01-rep1-drvdom")
	if err := os.MkdirAll(filepath.Join(boot, "console"), 0o755); err != nil {
		t.Fatal(err)
	}
	plan := []BenchBoot{{Index: 1, Rep: 1, Backend: BackendDrvdom}}
	j, err := json.Marshal(benchJSON{RuntimeS: 5, Reps: 1, Backends: []string{BackendDrvdom}, Plan: plan,
		Boots: []BenchBootLog{{Boot: 1, Backend: BackendDrvdom, Dir: "/elsewhere/boot-01-rep1-drvdom", ElapsedS: 300, LoadStart: "1.00 1.00 1.00"}}})
	if err != nil {
		t.Fatal(err)
	}
	put := func(name string, data []byte) string {
		return "@@LAB FILE " + name + "@@\n" + string(data) + "\n@@LAB EOF " + name + "@@\n"
	}
	guest := put(BenchFileName(PathGuest, BackingNVMe, "4k-randread-qd1"), fioAt(1010_000, 5000, 500)) +
		"@@LAB CHECK bench-guest-nvme-4k-randread-qd1 PASS fio@@\n"
	dd := put(benchStatPrefix+"1.txt", []byte("T 10 cpu 0 0 0 0 0 0 0 0\nE 1005\nP 7 1 1 0 0\nT 15 cpu 60 0 0 40 0 0 0 0\nE 1010\nP 7 1 1 30 10\n"))
	files := map[string]string{
		filepath.Join(run, "bench.json"):                   string(j),
		filepath.Join(boot, "console", "guest-guest.log"):  guest,
		filepath.Join(boot, "console", "guest-drvdom.log"): dd,
		filepath.Join(boot, "dom0.log"):                    "@@LAB T dom0-done 200@@\n",
		filepath.Join(boot, "exit-code"):                   "0\n",
		filepath.Join(boot, BenchDom0StatFile):             "T 5 cpu 0 0 0 0 0 0 0 0\nE 1005\nT 10 cpu 50 0 0 150 0 0 0 0\nE 1010\n",
	}
	for p, data := range files {
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, o, err := RecollectBench(run, out)
	if err != nil {
		t.Fatal(err)
	}
	if o.Runtime != 5*time.Second || len(res.Boots) != 1 || res.Boots[0].ElapsedS != 300 {
		t.Errorf("options %+v boots %+v", o, res.Boots)
	}
	var got *BenchSample
	for i, s := range res.Samples {
		if s.Path == PathGuest && s.Backing == BackingNVMe && s.Workload == "4k-randread-qd1" {
			got = &res.Samples[i]
		}
	}
	if got == nil || !got.OK || got.IOPS != 500 || got.DDBusy < 0.59 || got.DDBusy > 0.61 || got.DrvdomdCPU < 0.39 || got.Dom0Busy < 0.24 || got.Dom0Busy > 0.26 {
		t.Errorf("guest row %+v", got)
	}
	for _, name := range []string{"bench.json", "bench.md", "bench.svg"} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Error(err)
		}
	}
	if md, _ := os.ReadFile(filepath.Join(out, "bench.md")); !strings.Contains(string(md), "| nvme 4k-randread-qd1 | 60% (drvdomd 40%) | 25% |") {
		t.Errorf("bench.md:\n%s", md)
	}
	if _, err := os.Stat(filepath.Join(boot, BenchFileName(PathGuest, BackingNVMe, "4k-randread-qd1"))); err == nil {
		t.Error("recollect wrote into the run's boot directory")
	}
	if _, _, err := RecollectBench(filepath.Join(run, "nope"), out); err == nil {
		t.Error("a directory without bench.json recollected")
	}
}

func TestBenchMainRecollectFlags(t *testing.T) {
	var sb strings.Builder
	for _, args := range [][]string{{"--recollect", "/x"}, {"--recollect", "/x", "--out", "/x/"}} {
		code, err := BenchMain(t.Context(), NewProgress(nil), args, &sb, nil, nil)
		if code != 2 || err == nil {
			t.Errorf("%v: code %d err %v", args, code, err)
		}
	}
}
