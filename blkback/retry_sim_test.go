package blkback_test

import (
	"bytes"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"

	"drvdom/blkback"
	"drvdom/internal/xensim/blkfront"
)

// flakyBacking fails its first `fail` reads and writes with err.
type flakyBacking struct {
	blkback.Backing
	fail  atomic.Int32
	err   error
	tries atomic.Int32
}

func (f *flakyBacking) attempt() error {
	f.tries.Add(1)
	if f.fail.Add(-1) >= 0 {
		return f.err
	}
	return nil
}

func (f *flakyBacking) WriteV(io *blkback.IO) error {
	if err := f.attempt(); err != nil {
		return err
	}
	return f.Backing.WriteV(io)
}

func (f *flakyBacking) ReadV(io *blkback.IO) error {
	if err := f.attempt(); err != nil {
		return err
	}
	return f.Backing.ReadV(io)
}

// TestTransientBackingErrorsAreRetried: ENOMEM from the backing (seen in
// the lab on the driver domain's NVMe under load) is retried, so the guest
// sees its I/O succeed; a persistent ENOMEM and any other error still
// reach the guest as an error response.
func TestTransientBackingErrorsAreRetried(t *testing.T) {
	var fb *flakyBacking
	e := newEnv(t, func(d *blkback.Driver) {
		d.Engine = blkback.EnginePool
		d.Open = func(p string, o blkback.OpenOptions) (blkback.Backing, error) {
			b, err := blkback.OpenBacking(p, o)
			if err != nil {
				return nil, err
			}
			fb = &flakyBacking{Backing: b, err: syscall.ENOMEM}
			return fb, nil
		}
	})
	f, d := e.attach(t, 51712, tempDisk(t, 1<<20), "w", blkfront.Config{Protocol: blkback.ProtoX86_64})
	ctx := ctxT(t)
	data := pattern(4096, 5)

	fb.fail.Store(3)
	if err := f.Write(ctx, 0, 8, data); err != nil {
		t.Fatalf("write through 3 ENOMEMs: %v", err)
	}
	fb.fail.Store(2)
	got := make([]byte, 4096)
	if err := f.Read(ctx, 0, 8, got); err != nil {
		t.Fatalf("read through 2 ENOMEMs: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back other data")
	}
	st := waitStats(t, e, d, func(s blkback.StatsSnapshot) bool { return s.Retries >= 5 })
	if st.Errors != 0 {
		t.Fatalf("errors %d after transient failures", st.Errors)
	}

	fb.fail.Store(1 << 20) // never recovers
	fb.tries.Store(0)
	if err := f.Write(ctx, 0, 8, data); !errors.Is(err, blkfront.ErrStatus(blkback.StatusError)) {
		t.Fatalf("persistent ENOMEM: %v", err)
	}
	if n := fb.tries.Load(); n < 2 || n > 16 {
		t.Fatalf("%d attempts for a persistent ENOMEM: want a bounded retry", n)
	}

	fb.err = syscall.EIO
	fb.fail.Store(1)
	fb.tries.Store(0)
	if err := f.Write(ctx, 0, 8, data); !errors.Is(err, blkfront.ErrStatus(blkback.StatusError)) {
		t.Fatalf("EIO: %v", err)
	}
	if n := fb.tries.Load(); n != 1 {
		t.Fatalf("EIO tried %d times: only transient errors are retried", n)
	}
}
