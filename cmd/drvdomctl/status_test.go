package main

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	"drvdom/xenstore"
	"drvdom/xenstore/xenstored"
)

// mapStore is a tiny tree for status's reads.
type mapStore map[string]string

func (m mapStore) Read(_ context.Context, p string) (string, error) {
	if v, ok := m[p]; ok {
		return v, nil
	}
	return "", fmt.Errorf("read %s: %w", p, xenstore.ErrNotExist)
}

func (m mapStore) Directory(_ context.Context, p string) ([]string, error) {
	seen := map[string]bool{}
	for k := range m {
		if rest, ok := strings.CutPrefix(k, p+"/"); ok {
			seen[strings.SplitN(rest, "/", 2)[0]] = true
		}
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("directory %s: %w", p, xenstore.ErrNotExist)
	}
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

func TestStatus(t *testing.T) {
	s := mapStore{
		"/local/domain/0/name":                               "Domain-0",
		"/local/domain/1/name":                               "drvdom",
		"/local/domain/2/name":                               "guest",
		"/local/domain/1/backend/vbd/2/51712/state":          "4",
		"/local/domain/1/backend/vbd/2/51712/online":         "1",
		"/local/domain/1/backend/vbd/2/51712/hotplug-status": "connected",
		"/local/domain/1/backend/vbd/2/51712/frontend":       "/local/domain/2/device/vbd/51712",
		"/local/domain/2/device/vbd/51712/state":             "4",
		"/local/domain/1/backend/vif/2/0/state":              "5",
		"/local/domain/1/backend/vif/2/0/online":             "1",
		"/local/domain/1/backend/vif/2/0/frontend":           "/local/domain/2/device/vif/0",
		"/local/domain/2/device/vif/0/state":                 "zz",
		"/local/domain/1/error/backend/vif/2/0/error":        "5 connect: map ring: grant refused",
		"/local/domain/1/backend/vbd/2/51728/state":          "6",
		"/local/domain/1/backend/vbd/2/51728/online":         "1",
		"/local/domain/1/backend/vbd/2/51728/hotplug-status": "error",
		"/local/domain/1/backend/vbd/2/51728/hotplug-error":  "stat /srv/x.img: no such file",
	}
	var b bytes.Buffer
	if err := writeStatus(context.Background(), s, "drvdom", -1, &b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"DEVICES served by domain 1 (drvdom)",
		"vbd   2 (guest)  51712  Connected  Connected",
		"vif   2 (guest)  0      Closing    bad(\"zz\")",
		"5 connect: map ring: grant refused",
		"stat /srv/x.img: no such file",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if err := writeStatus(context.Background(), s, "nosuch", -1, &b); err == nil {
		t.Error("no error for a missing driver domain")
	}
}

func TestStatusOnXenstored(t *testing.T) {
	srv := xenstored.New()
	defer srv.Close()
	srv.IntroduceDomain(1)
	srv.IntroduceDomain(2)
	c := xenstore.NewClient(srv.Connect(0))
	defer c.Close()
	ctx := context.Background()
	for k, v := range map[string]string{
		"/local/domain/0/name":                         "Domain-0",
		"/local/domain/1/name":                         "dd",
		"/local/domain/2/name":                         "g",
		"/local/domain/1/backend/vbd/2/51728/state":    "2",
		"/local/domain/1/backend/vbd/2/51728/online":   "1",
		"/local/domain/1/backend/vbd/2/51728/frontend": "/local/domain/2/device/vbd/51728",
		"/local/domain/2/device/vbd/51728/state":       "1",
		"/local/domain/1/backend/vbd/2/51712/state":    "4",
		"/local/domain/1/backend/vbd/2/51712/online":   "1",
		"/local/domain/1/backend/vbd/2/51712/frontend": "/local/domain/2/device/vbd/51712",
		"/local/domain/2/device/vbd/51712/state":       "4",
	} {
		if err := c.Write(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	if err := writeStatus(ctx, c, "", 1, &b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	i := strings.Index(out, "51712  Connected  Connected")
	j := strings.Index(out, "51728  InitWait   Initialising")
	if i < 0 || j < 0 || i > j {
		t.Errorf("devices missing or not in numeric order:\n%s", out)
	}
}
