package grant

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"

	"drvdom/evtchn"
)

// SelfTest proves the Xen devices of this domain work end to end, with this
// domain as its own peer (self is this domain's id): it shares two pages
// through gntalloc, maps them through gntdev read-write and read-only and
// checks writes through each side, grant-copies both ways (and checks that a
// bad ref and a page-crossing segment are refused per segment), checks an
// unmap notification clears its byte, and bounces an event both ways over a
// BindUnbound/BindInterdomain loopback pair. It cleans up after itself and
// returns the first failure.
func SelfTest(ctx context.Context, self uint16, log *slog.Logger) (err error) {
	step := stepLogger(log)
	closeAll := func(what string, c interface{ Close() error }) {
		if e := c.Close(); e != nil && err == nil {
			err = fmt.Errorf("grant selftest: close %s: %w", what, e)
		}
	}
	sharer, e := OpenGntalloc()
	if err := step("open gntalloc", e); err != nil {
		return err
	}
	defer closeAll("gntalloc", sharer)
	mapper, e := OpenGntdev()
	if err := step("open gntdev", e); err != nil {
		return err
	}
	defer closeAll("gntdev", mapper)
	h, e := evtchn.Open()
	if err := step("open evtchn", e); err != nil {
		return err
	}
	defer closeAll("evtchn", h)
	return selfTest(ctx, self, sharer, mapper, h, step)
}

// selfTest is SelfTest on given devices (the simulator's in tests).
func selfTest(ctx context.Context, self uint16, sharer Sharer, mapper Mapper, h evtchn.Handle, step func(string, error) error) (err error) {
	closeAll := func(what string, c interface{ Close() error }) {
		if e := c.Close(); e != nil && err == nil {
			err = fmt.Errorf("grant selftest: close %s: %w", what, e)
		}
	}
	sh, e := sharer.Share(self, 2, true)
	if err := step("share 2 pages", e); err != nil {
		return err
	}
	defer closeAll("share", sh)
	mem := sh.Bytes()
	for i := range mem {
		mem[i] = byte(i*7 + 3)
	}

	m, e := mapper.Map(self, sh.Refs(), true)
	if err := step("map read-write", e); err != nil {
		return err
	}
	mapped := true
	defer func() {
		if mapped {
			closeAll("mapping", closerFunc(m.Unmap))
		}
	}()
	if !bytes.Equal(m.Bytes(), mem) {
		return step("read through mapping", errors.New("mapping differs from shared pages"))
	}
	copy(m.Bytes()[PageSize+10:], "through gntdev")
	if err := step("write through mapping", expect(mem[PageSize+10:], "through gntdev")); err != nil {
		return err
	}

	ro, e := mapper.Map(self, sh.Refs()[1:], false)
	if err := step("map read-only", e); err != nil {
		return err
	}
	e = expect(ro.Bytes()[10:], "through gntdev")
	if ue := ro.Unmap(); e == nil {
		e = ue
	}
	if err := step("read through read-only mapping", e); err != nil {
		return err
	}

	local := []byte("grant copy out..")
	back := make([]byte, len(local))
	segs := []CopySeg{
		{Src: CopyPtr{Local: local}, Dst: CopyPtr{Ref: sh.Refs()[0], Dom: self, Offset: 100}, Len: uint16(len(local))},
		{Src: CopyPtr{Ref: sh.Refs()[0], Dom: self, Offset: 100}, Dst: CopyPtr{Local: back}, Len: uint16(len(local))},
		{Src: CopyPtr{Local: local}, Dst: CopyPtr{Ref: sh.Refs()[0], Dom: self, Offset: PageSize - 4}, Len: 8},
		{Src: CopyPtr{Local: local}, Dst: CopyPtr{Ref: 0xFFFFFF, Dom: self}, Len: 4},
	}
	e = mapper.Copy(segs)
	if e == nil && segs[3].Status >= 0 {
		e = fmt.Errorf("copy to a ref never granted: status %d", segs[3].Status)
	}
	if e == nil {
		for i, want := range []Status{StatusOkay, StatusOkay, StatusBadCopyArg} {
			if Status(segs[i].Status) != want {
				e = fmt.Errorf("segment %d: status %d, want %d (%v)", i, segs[i].Status, want, want)
				break
			}
		}
	}
	if e == nil {
		e = expect(mem[100:], string(local))
	}
	if e == nil && !bytes.Equal(back, local) {
		e = fmt.Errorf("copied back %q, want %q", back, local)
	}
	if err := step("grant copy", e); err != nil {
		return err
	}

	if n, ok := m.(UnmapNotifier); ok {
		mem[16] = 0xFF
		e = n.SetUnmapNotify(16, NotifyClearByte, 0)
		if e == nil {
			mapped = false
			e = m.Unmap()
		}
		if e == nil && mem[16] != 0 {
			e = fmt.Errorf("byte not cleared on unmap (%#x)", mem[16])
		}
		if err := step("unmap notify clears its byte", e); err != nil {
			return err
		}
	}

	return eventLoopback(ctx, self, h, step)
}

// eventLoopback binds a loopback pair and bounces one event each way.
func eventLoopback(ctx context.Context, self uint16, h evtchn.Handle, step func(string, error) error) error {
	a, e := h.BindUnbound(self)
	if err := step("bind unbound", e); err != nil {
		return err
	}
	b, e := h.BindInterdomain(self, a)
	if err := step("bind interdomain", e); err != nil {
		return err
	}
	for _, dir := range [][2]evtchn.Port{{a, b}, {b, a}} {
		e := h.Notify(dir[0])
		if e == nil {
			e = waitFor(ctx, h, dir[1])
		}
		if err := step(fmt.Sprintf("event %d -> %d", dir[0], dir[1]), e); err != nil {
			return err
		}
	}
	e = h.Unbind(b)
	if e == nil {
		e = h.Unbind(a)
	}
	return step("unbind", e)
}

// waitFor waits until want is delivered, unmasking whatever arrives (the
// bind itself may raise a port).
func waitFor(ctx context.Context, h evtchn.Handle, want evtchn.Port) error {
	ports := make([]evtchn.Port, 8)
	for {
		n, err := h.Wait(ctx, ports)
		if err != nil {
			return err
		}
		seen := false
		for _, p := range ports[:n] {
			if err := h.Unmask(p); err != nil {
				return err
			}
			seen = seen || p == want
		}
		if seen {
			return nil
		}
	}
}

func expect(got []byte, want string) error {
	if len(got) < len(want) || string(got[:len(want)]) != want {
		return fmt.Errorf("read %q, want %q", got[:min(len(got), len(want))], want)
	}
	return nil
}

func stepLogger(log *slog.Logger) func(string, error) error {
	if log == nil {
		log = slog.Default()
	}
	return func(name string, e error) error {
		if e != nil {
			return fmt.Errorf("grant selftest: %s: %w", name, e)
		}
		log.Info("selftest ok", "step", name)
		return nil
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
