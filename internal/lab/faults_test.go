package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func bashSyntax(t *testing.T, name, script string) {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash on this host:", err)
	}
	cmd := exec.Command(bash, "-n")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s: bash -n: %v\n%s", name, err, out)
	}
}

func TestFaultScriptsParseAsShell(t *testing.T) {
	for _, p := range []FaultPlan{DefaultFaultPlan(), {Kill: true, KillEvery: time.Second, Runtime: 5 * time.Second}, {Hang: true, RestoreWait: time.Minute, Drvdomctl: "/lab/bin/drvdomctl"}, {}} {
		s := Scenario{Backend: BackendDrvdom, DrvdomImage: "x.cpio", GuestScript: FaultGuestScript(p), Dom0Phase: FaultDom0Phase(p)}
		bashSyntax(t, "guest.sh", s.GuestScript)
		bashSyntax(t, "dom0.sh", s.Dom0Script())
	}
	s := Scenario{Backend: BackendKernel, KernelHotplug: HotplugDevd, GuestScript: BootGuestScript, Dom0Phase: BootDom0Phase}
	bashSyntax(t, "boot guest.sh", s.GuestScript)
	bashSyntax(t, "boot dom0.sh", s.Dom0Script())
	if !strings.Contains(s.DrvdomConfig().Extra, "lab.hotplug=devd") {
		t.Errorf("devd driver domain command line %q", s.DrvdomConfig().Extra)
	}
	if !strings.Contains(InitDrvdom, `elif [ "$hotplug" = devd ]; then`) || !strings.Contains(InitDrvdom, "xl devd -F &") {
		t.Error("InitDrvdom does not run xl devd for lab.hotplug=devd")
	}
}

func TestFaultScriptsFollowThePlan(t *testing.T) {
	p := DefaultFaultPlan()
	g, d := FaultGuestScript(p), FaultDom0Phase(p)
	for _, want := range []string{"--verify=crc32c", "--verify_backlog=", "--iodepth=16", "--size=64M ", "--runtime=360 ", "timeout -k 10 -s INT 135 iperf3 -c " + Dom0IP + " -t 75",
		"PHASE kill-start", "PHASE kill-stop", "PHASE hang", "--verify_only", "guest-no-io-errors", "guest-ping-after-restart"} {
		if !strings.Contains(g, want) {
			t.Errorf("guest script lacks %q", want)
		}
	}
	if !strings.Contains(g, "--verify_backlog=16 ") || !strings.Contains(g, "--size=10M --rw") || !strings.Contains(g, "fio-nokill.json") {
		t.Error("guest script lacks the fio baseline or a verify_backlog that verifies")
	}
	for _, want := range []string{"sleep 2\n", "kill-worker", "stop-worker", "drvdomctl supervise --name " + DrvdomName, "xenstore-chmod \"$FK\" n0 b$DD",
		"lab_t hang", "lab_t drvdom-shutdown", "lab_t drvdom-restarted", "lab_t vbd-reattached", "lab_t guest-restored", `DD=$(xl domid`} {
		if !strings.Contains(d, want) {
			t.Errorf("dom0 phase lacks %q", want)
		}
	}
	p.Hang = false
	if g, d := FaultGuestScript(p), FaultDom0Phase(p); strings.Contains(g, "PHASE hang") || strings.Contains(d, "stop-worker") || strings.Contains(d, "supervise") {
		t.Error("a plan without Hang still hangs the driver domain")
	}
	for _, c := range FaultChecks(p) {
		if strings.Contains(c, "hang") || strings.Contains(c, "restart") && c != "drvdom-worker-restarts" {
			t.Errorf("check %s expected without Hang", c)
		}
	}
	if s := WithOnWatchdog((Scenario{DrvdomImage: "x"}).DrvdomConfig().Render(), "restart"); !strings.HasSuffix(s, "\non_watchdog = \"restart\"\n") || strings.Count(s, "on_watchdog") != 1 {
		t.Errorf("config:\n%s", s)
	}
}

func TestParseBootTimes(t *testing.T) {
	tl := Timeline(ParseMarkers([]byte("@@LAB T images-copied 12.5@@\n@@LAB T drvdom-ready 20.0@@\n@@LAB T guest-created 25@@\n@@LAB T first-read 40.5@@\n")))
	for k, v := range tl {
		tl["dom0/"+k] = v
	}
	bt := ParseBootTimes(tl)
	if !bt.OK || bt.DDReady != 7.5 || bt.Serving != 28 || bt.GuestPart != 20.5 {
		t.Errorf("%+v", bt)
	}
	delete(tl, "dom0/first-read")
	if ParseBootTimes(tl).OK {
		t.Error("boot time without the first read")
	}
}

func TestParseFaultFigures(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "console"), 0o755); err != nil {
		t.Fatal(err)
	}
	ddlog := `time=1 level=WARN msg="fault injected" fault=kill-worker err=<nil>
time=2 level=WARN msg="worker exited; restarting" role=supervisor code=-1 ran=2s after=200ms
time=3 level=WARN msg="fault injected" fault=kill-worker err="no worker running"
time=4 level=WARN msg="fault injected" fault=kill-worker err=<nil>
time=5 level=WARN msg="worker exited; restarting" role=supervisor code=-1 ran=1s after=400ms
`
	if err := os.WriteFile(filepath.Join(dir, "console", "guest-"+DrvdomName+".log"), []byte(ddlog), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dom0.log"), []byte("x\n@@LAB FIGURE kills 3@@\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	iperf := `{"intervals":[{"sum":{"bits_per_second":1e8}},{"sum":{"bits_per_second":0}},{"sum":{"bits_per_second":1e5}},{"sum":{"bits_per_second":9e7}},{"sum":{"bits_per_second":0}},{"sum":{"bits_per_second":1.1e8}}],
"end":{"sum_sent":{"bits_per_second":8e7},"sum_received":{"bits_per_second":7.9e7}}}`
	r := &Report{Out: dir, Files: map[string][]byte{"iperf3-kill.json": []byte(iperf),
		"fio-kill.json": []byte(`{"jobs":[{"jobname":"kill","error":0,"read":{"iops":100,"total_ios":6016},"write":{"iops":120,"total_ios":6016}}]}`)},
		Timeline: map[string]float64{"dom0/hang": 100, "dom0/drvdom-restarted": 170, "dom0/vbd-reattached": 190.5, "dom0/guest-restored": 200}}
	f := ParseFaultFigures(r)
	if f.Kills != 3 || f.Injected != 3 || f.NoWorker != 1 || f.Restarts != 2 {
		t.Errorf("counts %+v", f)
	}
	if f.Fio == nil || f.Fio.WriteIOPS != 120 || f.Fio.Errors != 0 || f.Iperf == nil || f.Iperf.ReceivedBps != 7.9e7 {
		t.Errorf("fio/iperf %+v %+v", f.Fio, f.Iperf)
	}
	if f.LongestStall != 2 || f.StalledSeconds != 3 {
		t.Errorf("stalls: longest %d total %d, want 2 and 3", f.LongestStall, f.StalledSeconds)
	}
	if f.HangToShutdown != -1 || f.HangToRestart != 70 || f.HangToVBD != 90.5 || f.HangToVIF != -1 || f.HangToGuest != 100 {
		t.Errorf("hang figures %+v", f)
	}
	cs := f.Checks()
	if len(cs) != 2 || !cs[0].Pass || cs[0].Name != "kill-fio-verified" || !cs[1].Pass || cs[1].Name != "kill-iperf3-stall" {
		t.Errorf("checks %+v", cs)
	}
	// fio that wrote little and verified nothing, and a 12 s stall, fail.
	bad := f
	bad.Reads, bad.Writes, bad.LongestStall = 0, 177, MaxIperfStall+2
	for _, c := range bad.Checks() {
		if c.Pass {
			t.Errorf("%s passes: %s", c.Name, c.Detail)
		}
	}
	// Lab run faults1 (time_based, backlog only): 156 writes never read
	// back. Not every write verified: a failure.
	tail := f
	tail.Reads, tail.Writes = 13204, 13360
	if c := tail.Checks()[0]; c.Pass {
		t.Errorf("%s passes with writes never read back: %s", c.Name, c.Detail)
	}
	// Stalled most of the time (run 4 in the lab: the median interval was
	// 0): the stalls still count.
	mostly := `{"intervals":[{"sum":{"bits_per_second":6.6e7}},{"sum":{"bits_per_second":0}},{"sum":{"bits_per_second":0}},{"sum":{"bits_per_second":1.05e7}},` +
		`{"sum":{"bits_per_second":0}},{"sum":{"bits_per_second":0}},{"sum":{"bits_per_second":0}},{"sum":{"bits_per_second":0}},{"sum":{"bits_per_second":4.2e7}},{"sum":{"bits_per_second":5.2e7}}]}`
	if l, tot := iperfStalls([]byte(mostly)); l != 4 || tot != 6 {
		t.Errorf("mostly stalled: longest %d total %d, want 4 and 6", l, tot)
	}
	var b strings.Builder
	f.Print(&b)
	for _, want := range []string{"worker restarts (DD log)      2", "longest stall 2 s", "hang -> guest pings dom0      100.0 s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("Print lacks %q:\n%s", want, b.String())
		}
	}
}
