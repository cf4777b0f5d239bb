package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseScratch(t *testing.T) {
	got, err := ParseScratch("/run/drvdom/a.img:64M, /run/b:4096,/c:1G,/d:2k")
	if err != nil {
		t.Fatal(err)
	}
	want := []ScratchFile{{"/run/drvdom/a.img", 64 << 20}, {"/run/b", 4096}, {"/c", 1 << 30}, {"/d", 2048}}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("file %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if s := scratchString(got); s != "/run/drvdom/a.img:67108864,/run/b:4096,/c:1073741824,/d:2048" {
		t.Errorf("scratchString = %q", s)
	}
	for _, v := range []string{"", "none"} {
		if f, err := ParseScratch(v); err != nil || f != nil {
			t.Errorf("ParseScratch(%q) = %v, %v", v, f, err)
		}
	}
	for _, bad := range []string{"rel/a:1M", "/a", "/a:", "/a:0", "/a:-1", "/a:1T", "/a:x", "/a/../b:1M", "/:1M", "/a:1M,/a:2M", "/a:99999999999G"} {
		if f, err := ParseScratch(bad); err == nil {
			t.Errorf("ParseScratch(%q) accepted: %v", bad, f)
		}
	}
}

func TestConfigScratchFromCmdline(t *testing.T) {
	c := DefaultConfig()
	if c.Scratch != nil {
		t.Fatalf("scratch by default: %v", c.Scratch)
	}
	c.ApplyCmdline("console=hvc0 drvdom.scratch=/run/s/file.img:32M,/run/s/ro.img:8M", quiet)
	if len(c.Scratch) != 2 || c.Scratch[0] != (ScratchFile{"/run/s/file.img", 32 << 20}) || c.Scratch[1].Size != 8<<20 {
		t.Errorf("scratch %+v", c.Scratch)
	}
	c.ApplyCmdline("drvdom.scratch=relative:1M", quiet)
	if len(c.Scratch) != 2 {
		t.Errorf("a bad scratch= replaced the good one: %+v", c.Scratch)
	}
}

func TestEnsureScratchCreatesSparseAndKeepsExisting(t *testing.T) {
	dir := t.TempDir()
	newf := filepath.Join(dir, "sub", "new.img")
	old := filepath.Join(dir, "old.img")
	if err := os.WriteFile(old, []byte("guest data"), 0o600); err != nil {
		t.Fatal(err)
	}
	files := []ScratchFile{{newf, 8 << 20}, {old, 16 << 20}}
	if err := ensureScratch(files, quiet); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(newf)
	if err != nil || st.Size() != 8<<20 {
		t.Fatalf("new file: %v %v", st, err)
	}
	if a := allocated(newf); a < 0 || a >= 1<<20 {
		t.Errorf("new file not sparse: %d bytes allocated", a)
	}
	b, err := os.ReadFile(old)
	if err != nil || string(b) != "guest data" {
		t.Errorf("existing file changed: %q %v", b, err)
	}
	// A second boot (drvdomd restarted) keeps what the guest wrote.
	if err := os.WriteFile(newf, []byte("written by a guest"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ensureScratch(files, quiet); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(newf); string(b) != "written by a guest" {
		t.Errorf("restart truncated the file: %q", b)
	}
	// Something that is not a regular file is refused, not replaced.
	if err := ensureScratch([]ScratchFile{{dir, 1 << 20}}, quiet); err == nil {
		t.Error("a directory was accepted as a scratch file")
	}
}

func TestScratchKeyName(t *testing.T) {
	for in, want := range map[string]string{"/run/drvdom/file.img": "file_img", "/a/ro-disk_1": "ro-disk_1", "/x/a b@c": "a_b_c"} {
		if got := scratchKeyName(in); got != want {
			t.Errorf("scratchKeyName(%q) = %q, want %q", in, got, want)
		}
	}
}

type recStore struct {
	mu sync.Mutex
	w  map[string][]string
}

func (r *recStore) Write(_ context.Context, p, v string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w == nil {
		r.w = map[string][]string{}
	}
	r.w[p] = append(r.w[p], v)
	return nil
}

func (r *recStore) values(p string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.w[p]...)
}

// The published allocation follows writes and hole punches, and an
// unchanged file is not rewritten.
func TestPublishScratchFollowsHoles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.img")
	if err := ensureScratch([]ScratchFile{{p, 4 << 20}}, quiet); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	rs := &recStore{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		publishScratch(ctx, rs, 7, []ScratchFile{{p, 4 << 20}}, 5*time.Millisecond, quiet)
	}()
	key := "/local/domain/7/data/scratch/disk_img"
	waitFor := func(what string, ok func(v string) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if v := rs.values(key); len(v) > 0 && ok(v[len(v)-1]) {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("%s: published %v", what, rs.values(key))
	}
	num := func(v string) int64 { n, _ := strconv.ParseInt(v, 10, 64); return n }
	waitFor("written MiB", func(v string) bool { return num(v) >= 1<<20 })
	punched := true
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 1<<20); err != nil {
		punched = false
		t.Logf("this filesystem cannot punch holes (%v): only the no-rewrite half is checked", err)
	}
	if punched {
		waitFor("hole", func(v string) bool { return num(v) >= 0 && num(v) < 1<<20 })
	}
	time.Sleep(50 * time.Millisecond)
	n := len(rs.values(key))
	time.Sleep(50 * time.Millisecond)
	if m := len(rs.values(key)); m != n {
		t.Errorf("an unchanged allocation was rewritten: %d -> %d writes", n, m)
	}
	cancel()
	<-done
	if vs := rs.values(key); strings.Contains(strings.Join(vs, ","), "-1") {
		t.Errorf("published -1: %v", vs)
	}
}
