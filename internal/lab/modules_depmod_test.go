package lab

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A kernel package unpacked with dpkg-deb -x has modules but no
// modules.dep (its postinst makes it): depmodExtracted makes it, and leaves
// a tree that has one alone.
func TestDepmodExtracted(t *testing.T) {
	root := t.TempDir()
	fresh := filepath.Join(root, "lib", "modules", "9.9.9-unpacked")
	done := filepath.Join(root, "lib", "modules", "9.9.9-installed")
	for _, d := range []string{filepath.Join(fresh, "kernel"), done} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mark := []byte("# made by the package's postinst\n")
	if err := os.WriteFile(filepath.Join(done, "modules.dep"), mark, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := depmodExtracted(context.Background(), root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(fresh, "modules.dep")); err != nil {
		t.Errorf("unpacked tree: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(done, "modules.dep")); err != nil || string(b) != string(mark) {
		t.Errorf("a tree with modules.dep was rewritten: %q, %v", b, err)
	}
	// No lib/modules at all (the hypervisor's package): nothing to do.
	if err := depmodExtracted(context.Background(), t.TempDir()); err != nil {
		t.Errorf("package without modules: %v", err)
	}
}
