package lab

import (
	"os/exec"
	"strings"
	"testing"
)

// hostBash is this host's bash, for tests that run the lab's shell
// functions for real; t is skipped where the host has none.
func hostBash(t *testing.T) string {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash on this host:", err)
	}
	return bash
}

// hostLibSh is LibSh as it runs on this host: the lab's PATH goes after
// the host's instead of replacing it (the lab's directories are not here).
func hostLibSh() string {
	return strings.ReplaceAll(LibSh, "export PATH=", "export PATH=$PATH:")
}
