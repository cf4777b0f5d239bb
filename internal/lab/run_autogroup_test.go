package lab

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// A process started as Run starts QEMU (its own session) gets an autogroup
// of its own, and raiseAutogroup sets that group's nice value, not ours.
func TestRaiseAutogroup(t *testing.T) {
	self, err := os.ReadFile("/proc/self/autogroup")
	if err != nil {
		t.Skipf("kernel without scheduler autogroups: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("a negative autogroup nice needs root")
	}
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := raiseAutogroup(cmd.Process.Pid, qemuAutogroupNice); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("/proc/" + itoa(cmd.Process.Pid) + "/autogroup")
	if err != nil {
		t.Fatal(err)
	}
	// A process in no autogroup of its own (one in init's session, as a
	// CI runner's can be) reads an empty file: the root group.
	group := func(b []byte) string {
		if f := strings.Fields(string(b)); len(f) > 0 {
			return f[0]
		}
		return "/"
	}
	if group(got) == "/" {
		t.Fatalf("child in its own session has no autogroup: %q", got)
	}
	if group(got) == group(self) {
		t.Fatalf("child shares our autogroup %s", group(self))
	}
	if !strings.HasSuffix(strings.TrimSpace(string(got)), "nice -10") {
		t.Errorf("child's autogroup %q, want nice -10", got)
	}
	after, _ := os.ReadFile("/proc/self/autogroup")
	if string(after) != string(self) {
		t.Errorf("our own autogroup changed: %q -> %q", self, after)
	}
	if err := raiseAutogroup(1<<22+12345, 0); err == nil {
		t.Error("no error for a pid that does not exist")
	}
}
