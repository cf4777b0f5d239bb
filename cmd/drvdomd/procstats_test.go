package main

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestGntdevPages(t *testing.T) {
	maps := `55d0c0a00000-55d0c0a10000 r-xp 00000000 00:02 12 /bin/drvdomd
7f0000000000-7f0000004000 rw-s 00000000 00:05 7 /dev/xen/gntdev
7f0000010000-7f0000011000 rw-s 00004000 00:05 7 /dev/xen/gntdev
7f0000020000-7f0000021000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
`
	n, err := gntdevPages(strings.NewReader(maps))
	require.NoError(t, err)
	require.EqualValues(t, 5, n)
	_, err = gntdevPages(strings.NewReader("zz-1 rw-s 0 0 0 /dev/xen/gntdev\n"))
	require.Error(t, err)
}

func TestReadProcStatsCountsFDs(t *testing.T) {
	a, err := readProcStats("/proc/self")
	require.NoError(t, err)
	require.Equal(t, os.Getpid(), a.PID)
	require.Positive(t, a.RSSKB)
	f, err := os.Open("/dev/null")
	require.NoError(t, err)
	b, err := readProcStats("/proc/self")
	f.Close()
	require.NoError(t, err)
	require.Equal(t, a.FDs+1, b.FDs)
}

type memStore struct {
	mu sync.Mutex
	w  map[string][]string
}

func (m *memStore) Write(_ context.Context, p, v string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.w[p] = append(m.w[p], v)
	return nil
}

func TestPublishProcStatsWritesJSON(t *testing.T) {
	st := &memStore{w: map[string][]string{}}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	publishProcStats(ctx, st, "/local/domain/1/"+StatsKeyPrefix+"worker", 50*time.Millisecond, slog.Default())
	st.mu.Lock()
	defer st.mu.Unlock()
	vs := st.w["/local/domain/1/data/drvdomd-stats-worker"]
	require.NotEmpty(t, vs)
	require.Contains(t, vs[0], `"gntdev_pages":0`)
	require.Contains(t, vs[0], `"pid":`)
}
