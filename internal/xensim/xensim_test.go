package xensim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"drvdom/evtchn"
	"drvdom/grant"
	"drvdom/xenstore"
)

const (
	driverDom uint16 = 1
	guestDom  uint16 = 2
)

func waitPort(t *testing.T, h evtchn.Handle) evtchn.Port {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ports := make([]evtchn.Port, 4)
	n, err := h.Wait(ctx, ports)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, h.Unmask(ports[0]))
	return ports[0]
}

func TestExchangePageAndEvent(t *testing.T) {
	h := New()
	defer h.Close()
	h.NewDomain(0)
	back, guest := h.NewDomain(driverDom), h.NewDomain(guestDom)
	require.Same(t, back, h.NewDomain(driverDom))
	require.Same(t, guest, h.Domain(guestDom))

	sh, err := guest.Sharer().Share(driverDom, 2, true)
	require.NoError(t, err)
	mp := back.Mapper()
	m, err := mp.Map(guestDom, sh.Refs(), true)
	require.NoError(t, err)
	copy(sh.Bytes()[grant.PageSize:], "request")
	require.Equal(t, "request", string(m.Bytes()[grant.PageSize:grant.PageSize+7]))
	copy(m.Bytes(), "response")
	require.Equal(t, "response", string(sh.Bytes()[:8]))
	require.Equal(t, 2, h.Grants.Mapped(driverDom))

	ge, be := guest.Evtchn(), back.Evtchn()
	gp, err := ge.BindUnbound(driverDom)
	require.NoError(t, err)
	bp, err := be.BindInterdomain(guestDom, gp)
	require.NoError(t, err)
	require.Equal(t, bp, waitPort(t, be), "bind raises the local port")
	require.NoError(t, ge.Notify(gp))
	require.Equal(t, bp, waitPort(t, be))
	require.NoError(t, be.Notify(bp))
	require.Equal(t, gp, waitPort(t, ge))

	// The guest dies: the mapping stays until the backend unmaps, its
	// port falls back to unbound, new maps fail.
	h.Destroy(guestDom)
	require.Nil(t, h.Domain(guestDom))
	require.Equal(t, "response", string(m.Bytes()[:8]))
	require.NoError(t, be.Notify(bp), "notify of an unbound port is dropped")
	_, err = mp.Map(guestDom, sh.Refs(), true)
	require.ErrorIs(t, err, grant.StatusBadDomain)
	require.ErrorIs(t, err, syscall.EINVAL)
	require.ErrorIs(t, ge.Notify(gp), evtchn.ErrClosed)
	require.NoError(t, m.Unmap())
	require.NoError(t, be.Unbind(bp))
	require.Equal(t, 0, h.Grants.Mapped(driverDom))
	require.Equal(t, 0, h.Events.BoundPorts(driverDom))
}

func TestDestroyClosesXenstore(t *testing.T) {
	h := New()
	defer h.Close()
	h.NewDomain(0)
	g := h.NewDomain(guestDom)
	c := g.Xenstore()
	defer c.Close()
	ctx := context.Background()
	home := xenstore.DomainPath(guestDom)
	require.NoError(t, c.Write(ctx, home+"/data/x", "1"))

	dom0 := h.Domain(0).Xenstore()
	defer dom0.Close()
	w, err := dom0.Watch(ctx, "@releaseDomain", "rel")
	require.NoError(t, err)
	defer w.Close()
	drainFirst(t, w) // the registration event

	h.Destroy(guestDom)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("guest's xenstore connection survived Destroy")
	}
	select {
	case ev := <-w.Events():
		require.Equal(t, "@releaseDomain", ev.Path)
	case <-time.After(5 * time.Second):
		t.Fatal("no @releaseDomain")
	}
	v, err := dom0.Read(ctx, home+"/data/x")
	require.NoError(t, err)
	require.Equal(t, "1", v, "the toolstack removes the home, not Destroy")
}

func drainFirst(t *testing.T, w *xenstore.Watch) {
	t.Helper()
	select {
	case <-w.Events():
	case <-time.After(5 * time.Second):
		t.Fatal("no initial watch event")
	}
}

// TestFrontendHandshake plays a netfront-style connect through xenstore:
// the toolstack (dom0) creates both directories, the guest shares a ring
// page, allocates an event channel and publishes ring-ref/event-channel,
// the backend in the driver domain reads them, maps, binds and notifies.
func TestFrontendHandshake(t *testing.T) {
	h := New()
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dom0 := h.NewDomain(0).Xenstore()
	defer dom0.Close()
	back, guest := h.NewDomain(driverDom), h.NewDomain(guestDom)

	front := fmt.Sprintf("%s/device/vif/0", xenstore.DomainPath(guestDom))
	backPath := fmt.Sprintf("%s/backend/vif/%d/0", xenstore.DomainPath(driverDom), guestDom)
	// As libxl does: make both directories with their permissions first,
	// so the keys written into them inherit them.
	require.NoError(t, dom0.Transaction(ctx, func(tx *xenstore.Tx) error {
		for _, d := range []struct {
			path  string
			perms []xenstore.Perm
		}{
			{front, []xenstore.Perm{{Domid: guestDom, Access: xenstore.PermNone}, {Domid: driverDom, Access: xenstore.PermRead}}},
			{backPath, []xenstore.Perm{{Domid: driverDom, Access: xenstore.PermNone}, {Domid: guestDom, Access: xenstore.PermRead}}},
		} {
			if err := tx.Mkdir(ctx, d.path); err != nil {
				return err
			}
			if err := tx.SetPerms(ctx, d.path, d.perms); err != nil {
				return err
			}
		}
		for _, kv := range [][2]string{
			{front + "/backend", backPath}, {front + "/backend-id", strconv.Itoa(int(driverDom))}, {front + "/state", "1"},
			{backPath + "/frontend", front}, {backPath + "/frontend-id", strconv.Itoa(int(guestDom))}, {backPath + "/state", "1"},
		} {
			if err := tx.Write(ctx, kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	}))

	// Backend: watch the frontend's state.
	bs := back.Xenstore()
	defer bs.Close()
	w, err := bs.Watch(ctx, front+"/state", "fe")
	require.NoError(t, err)
	defer w.Close()
	drainFirst(t, w)

	// Frontend: share, bind unbound, publish, Initialised.
	gs := guest.Xenstore()
	defer gs.Close()
	ring, err := guest.Sharer().Share(driverDom, 1, true)
	require.NoError(t, err)
	defer ring.Close()
	copy(ring.Bytes(), "req#1")
	ge := guest.Evtchn()
	defer ge.Close()
	gp, err := ge.BindUnbound(driverDom)
	require.NoError(t, err)
	require.NoError(t, gs.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, front+"/ring-ref", strconv.FormatUint(uint64(ring.Refs()[0]), 10)); err != nil {
			return err
		}
		if err := tx.Write(ctx, front+"/event-channel", strconv.FormatUint(uint64(gp), 10)); err != nil {
			return err
		}
		return tx.Write(ctx, front+"/state", "3")
	}))

	// Another guest cannot read the frontend's keys.
	spy := h.NewDomain(3).Xenstore()
	defer spy.Close()
	_, err = spy.Read(ctx, front+"/ring-ref")
	require.True(t, errors.Is(err, xenstore.ErrPermission) || errors.Is(err, xenstore.ErrNotExist), "got %v", err)

	// Backend: on the state change, read, map, bind, answer, notify.
	for {
		select {
		case <-w.Events():
		case <-ctx.Done():
			t.Fatal("backend never saw Initialised")
		}
		st, err := bs.Read(ctx, front+"/state")
		require.NoError(t, err)
		if st == "3" {
			break
		}
	}
	refStr, err := bs.Read(ctx, front+"/ring-ref")
	require.NoError(t, err)
	portStr, err := bs.Read(ctx, front+"/event-channel")
	require.NoError(t, err)
	ref, err := strconv.ParseUint(refStr, 10, 32)
	require.NoError(t, err)
	port, err := strconv.ParseUint(portStr, 10, 32)
	require.NoError(t, err)

	mp := back.Mapper()
	defer mp.Close()
	m, err := mp.Map(guestDom, []grant.Ref{grant.Ref(ref)}, true)
	require.NoError(t, err)
	require.Equal(t, "req#1", string(m.Bytes()[:5]))
	be := back.Evtchn()
	defer be.Close()
	bp, err := be.BindInterdomain(guestDom, evtchn.Port(port))
	require.NoError(t, err)
	require.Equal(t, bp, waitPort(t, be))
	copy(m.Bytes()[100:], "rsp#1")
	require.NoError(t, be.Notify(bp))
	require.NoError(t, bs.Write(ctx, backPath+"/state", "4"))

	// Frontend sees the event, the response and Connected.
	require.Equal(t, gp, waitPort(t, ge))
	require.Equal(t, "rsp#1", string(ring.Bytes()[100:105]))
	st, err := gs.Read(ctx, backPath+"/state")
	require.NoError(t, err)
	require.Equal(t, "4", st)

	require.NoError(t, m.Unmap())
	require.Equal(t, 0, h.Grants.Mapped(driverDom))
}
