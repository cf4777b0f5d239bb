package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

func TestRunArguments(t *testing.T) {
	var o, e bytes.Buffer
	if code := run(context.Background(), []string{"--bogus"}, &o, &e); code != 2 {
		t.Errorf("unknown argument: exit %d, want 2", code)
	}
	o.Reset()
	if code := run(context.Background(), []string{"config"}, &o, &e); code != 0 || !strings.Contains(o.String(), "backend=") {
		t.Errorf("config: exit %d, %q", code, o.String())
	}
}

func TestSelftestWithoutXen(t *testing.T) {
	if _, err := os.Stat("/dev/xen/gntalloc"); err == nil {
		t.Skip("this machine has Xen devices; the lab runs the real self-test")
	}
	var o, e bytes.Buffer
	if code := selftest(context.Background(), []string{"-domid", "1"}, &o, &e); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.Contains(o.String(), "SELFTEST FAIL") || !strings.Contains(o.String(), "gntalloc") {
		t.Errorf("output %q does not name the missing device", o.String())
	}
}

func TestBuildDriversWithoutXen(t *testing.T) {
	if _, err := os.Stat("/dev/xen/gntdev"); err == nil {
		t.Skip("this machine has /dev/xen/gntdev")
	}
	_, cleanup, err := buildDrivers(driverEnv{Cfg: DefaultConfig(), Log: quiet})
	cleanup()
	if err == nil || !strings.Contains(err.Error(), "gntdev") {
		t.Errorf("err = %v, want one naming gntdev", err)
	}
}
