package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func writeSys(t *testing.T, root, dev string, files map[string]string) {
	t.Helper()
	for name, v := range files {
		p := filepath.Join(root, dev, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(v+"\n"), 0o644))
	}
}

func TestBlockInventory(t *testing.T) {
	root := t.TempDir()
	writeSys(t, root, "nvme0n2", map[string]string{"size": "2048", "queue/logical_block_size": "4096", "ro": "0"})
	writeSys(t, root, "nvme0n1", map[string]string{"size": "1000", "queue/logical_block_size": "512", "ro": "1"})
	writeSys(t, root, "loop0", map[string]string{"size": "0"})
	writeSys(t, root, "ram0", map[string]string{"size": "8192"})
	devs, err := blockInventory(root)
	require.NoError(t, err)
	require.Equal(t, []blockDevice{
		{Name: "nvme0n1", Sectors: 1000, Logical: 512, ReadOnly: true},
		{Name: "nvme0n2", Sectors: 2048, Logical: 4096},
	}, devs)

	var buf bytes.Buffer
	logBlockDevices(root, slog.New(slog.NewTextHandler(&buf, nil)))
	require.Contains(t, buf.String(), `msg="block device" name=nvme0n2 bytes=1048576 logical_block=4096 ro=false`)
	require.Equal(t, 2, strings.Count(buf.String(), "block device"))
}

func TestBlockInventoryNone(t *testing.T) {
	var buf bytes.Buffer
	logBlockDevices(t.TempDir(), slog.New(slog.NewTextHandler(&buf, nil)))
	require.Contains(t, buf.String(), "no block device")
	buf.Reset()
	logBlockDevices(filepath.Join(t.TempDir(), "missing"), slog.New(slog.NewTextHandler(&buf, nil)))
	require.Contains(t, buf.String(), "cannot list block devices")
}
