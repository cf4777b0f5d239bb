package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestLabPutPaced runs the domUs' paced lab_put with this host's bash: a
// chunk size that cuts lines, escapes and multibyte characters in two
// still delivers the file byte for byte (trailing newlines aside, as
// ExtractFiles reads any put), and a pause between chunks is taken;
// without bash (dash as /bin/sh) or without LAB_PUT_PACE it is cat.
func TestLabPutPaced(t *testing.T) {
	bash := hostBash(t)
	dir := t.TempDir()
	content := "-n first line \\t with a backslash\n  indented\ttab\n\nnon-ASCII: é ü 漢字\n" +
		strings.Repeat("0123456789", 40) + "\nlast line without newline"
	src := filepath.Join(dir, "f.txt")
	if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	put := func(shell, env string) []byte {
		t.Helper()
		cmd := exec.Command(shell, "-c", hostLibSh()+env+" lab_put f.txt "+src)
		cmd.Env = append(os.Environ(), "TMPDIR="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", shell, err, out)
		}
		return out
	}
	start := time.Now()
	out := put(bash, "LAB_PUT_PACE=0.02 LAB_PUT_CHUNK=7")
	took := time.Since(start)
	if got := string(ExtractFiles(out)["f.txt"]); got != content {
		t.Fatalf("paced lab_put delivered\n%q\nwant\n%q", got, content)
	}
	// 70 chunks with a 20 ms pause after each: the pauses are taken.
	if chunks := (len(content) + 6) / 7; took < time.Duration(chunks)*20*time.Millisecond {
		t.Errorf("%d chunks in %v: the pauses were not taken", chunks, took)
	}
	if fi, err := os.Stat(filepath.Join(dir, "lab-pace.fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("pace fifo: %v %v", fi, err)
	}
	if got := string(ExtractFiles(put(bash, ""))["f.txt"]); got != content {
		t.Errorf("unpaced lab_put delivered %q", got)
	}
	if sh, err := exec.LookPath("dash"); err == nil {
		if got := string(ExtractFiles(put(sh, "LAB_PUT_PACE=0.02"))["f.txt"]); got != content {
			t.Errorf("lab_put under dash delivered %q", got)
		}
	}
}
