package xenbus

import (
	"fmt"
	"runtime"
	"testing"

	"drvdom/xenstore"
)

// TestRunAddsOnlyDeviceGoroutines: Run serves its watches on the caller's
// goroutine, so a process has as many goroutines while the Manager runs
// with no device as it had before Run started, whether a device never came
// or came and went (detached, or its guest destroyed). drvdomd's worker
// publishes its first goroutine count before Run has set its watches, and
// dom0's soak compares it with the count after the guests are gone (issue
// 8: a goroutine per driver type counted after but not before read as a
// leak of two).
func TestRunAddsOnlyDeviceGoroutines(t *testing.T) {
	e := newEnv(t)
	vbd := &fakeDriver{typ: "vbd"}
	vif := &fakeDriver{typ: "vif"}
	// Every xenstored connection is being served (its goroutines exist):
	// any answer, even EACCES, says so.
	for _, c := range []*xenstore.Client{e.dom0, e.ddc, e.guestc} {
		c.Directory(e.ctx, "/local/domain")
	}
	// The goroutine that will run Run is part of the baseline, as the
	// worker's main goroutine is.
	release := make(chan struct{})
	done := make(chan struct{})
	go func() { <-release; close(done) }()
	base := runtime.NumGoroutine()
	close(release)
	<-done
	m, _ := e.start(vbd, vif)
	// A leak shows as more goroutines than the baseline; fewer is some
	// transient goroutine of the baseline (a xenstored connection's
	// writer, say) that has finished since, which a loaded machine makes
	// likely (5 runs of 10 failed on "12 goroutines, 13 before Run" while
	// the race-detected initramfs tests ran alongside).
	atBase := func(what string) {
		t.Helper()
		eventually(t, func() string {
			if n := runtime.NumGoroutine(); n > base {
				buf := make([]byte, 1<<16)
				return fmt.Sprintf("%s: %d goroutines, %d before Run:\n%s", what, n, base, buf[:runtime.Stack(buf, true)])
			}
			return ""
		})
	}
	// Run is watching once a device added now is probed.
	e.addDevice("vif", 0)
	e.waitBack("vif", 0, InitWait)
	e.front("vif", 0, Connected)
	e.waitBack("vif", 0, Connected)
	if err := e.dom0.Write(e.ctx, backPath("vif", 0)+"/online", "0"); err != nil {
		t.Fatal(err)
	}
	e.front("vif", 0, Closed)
	e.waitRemoved(m, "vif", 0)
	atBase("vif detached")

	// The guest's devices vanish without closing (xl destroy).
	e.addDevice("vbd", 51712)
	e.waitBack("vbd", 51712, InitWait)
	e.front("vbd", 51712, Initialised)
	e.waitBack("vbd", 51712, Connected)
	// libxl's order: online=0 while the backend is there, then the
	// frontend goes. The other way round raced: a backend removed for its
	// vanished frontend before the write was made anew by it (a xenstore
	// write creates its parents), holding only online=0, and the test
	// read that as the directory not removed.
	if err := e.dom0.Write(e.ctx, backPath("vbd", 51712)+"/online", "0"); err != nil {
		t.Fatal(err)
	}
	if err := e.dom0.Rm(e.ctx, frontPath("vbd", 51712)); err != nil {
		t.Fatal(err)
	}
	e.waitRemoved(m, "vbd", 51712)
	atBase("guest destroyed")
	if open, _ := vbd.counts(); open != 0 {
		t.Errorf("vbd instances open: %d", open)
	}
}
