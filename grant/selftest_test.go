package grant

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"drvdom/evtchn"
	"drvdom/xenstore"
)

// TestSelfTestOnXen runs SelfTest on real Xen (a domain with gntdev,
// gntalloc and evtchn loaded and a xenstore to learn its domid from).
func TestSelfTestOnXen(t *testing.T) {
	for _, p := range []string{GntdevPath, GntallocPath, "/dev/xen/evtchn"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs real Xen: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	xs, err := xenstore.Open()
	require.NoError(t, err)
	defer xs.Close()
	v, err := xs.Read(ctx, "domid")
	require.NoError(t, err)
	self, err := strconv.ParseUint(v, 10, 16)
	require.NoError(t, err)
	require.NoError(t, SelfTest(ctx, uint16(self), nil))
}

// TestSelfTestOnSim runs the same steps on the simulator (domain 5 as its
// own peer), so the self-test's own logic is proven here.
func TestSelfTestOnSim(t *testing.T) {
	s := NewSim()
	ev := evtchn.NewSim()
	s.SetEvents(ev)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var steps []string
	step := func(name string, err error) error {
		if err != nil {
			return err
		}
		steps = append(steps, name)
		return nil
	}
	sharer, mapper, h := s.Sharer(5), s.Mapper(5), ev.Open(5)
	require.NoError(t, selfTest(ctx, 5, sharer, mapper, h, step))
	require.Contains(t, steps, "grant copy")
	require.Contains(t, steps, "unmap notify clears its byte")
	require.Contains(t, steps, "unbind")
	require.Equal(t, 0, s.Mapped(5))
	require.Equal(t, 0, s.Shared(5))
	require.Equal(t, 0, ev.BoundPorts(5))
}
