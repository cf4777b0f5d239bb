package xenstore

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Numbers from enum xsd_sockmsg_type in xen/include/public/io/xs_wire.h.
func TestMsgTypeNumbers(t *testing.T) {
	want := map[MsgType]uint32{
		MsgDirectory: 1, MsgRead: 2, MsgGetPerms: 3, MsgWatch: 4, MsgUnwatch: 5,
		MsgTransactionStart: 6, MsgTransactionEnd: 7, MsgIntroduce: 8, MsgRelease: 9,
		MsgGetDomainPath: 10, MsgWrite: 11, MsgMkdir: 12, MsgRm: 13, MsgSetPerms: 14,
		MsgWatchEvent: 15, MsgError: 16, MsgIsDomainIntroduced: 17, MsgResume: 18,
		MsgSetTarget: 19, MsgRestrict: 20, MsgResetWatches: 21, MsgDirectoryPart: 22,
	}
	for typ, n := range want {
		assert.Equal(t, n, uint32(typ), typ.String())
	}
	assert.Equal(t, 16, HeaderSize)
	assert.Equal(t, 4096, PayloadMax)
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Type: MsgRead, ReqID: 7, TxID: 9, Len: 12}
	b := AppendHeader(nil, h)
	require.Len(t, b, HeaderSize)
	assert.Equal(t, []byte{2, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 12, 0, 0, 0}, b)
	got, err := DecodeHeader(b)
	require.NoError(t, err)
	assert.Equal(t, h, got)

	_, err = DecodeHeader(b[:15])
	assert.ErrorIs(t, err, ErrProtocol)
	_, err = DecodeHeader(AppendHeader(nil, Header{Len: PayloadMax + 1}))
	assert.ErrorIs(t, err, ErrProtocol)
}

func TestErrorUnwrap(t *testing.T) {
	for name, want := range map[string]error{"ENOENT": ErrNotExist, "EACCES": ErrPermission,
		"EAGAIN": ErrAgain, "EINVAL": ErrInvalid, "EEXIST": ErrExist, "ENOSPC": ErrNoSpace,
		"EBUSY": ErrBusy, "E2BIG": ErrQuota, "EQUOTA": ErrQuota} {
		n, err := ParseErrorPayload([]byte(name + "\x00"))
		require.NoError(t, err)
		var e error = &Error{Op: "READ", Path: "/a", Errno: n}
		assert.True(t, errors.Is(e, want), name)
	}
	assert.Equal(t, "xenstore READ /a: ENOENT", (&Error{Op: "READ", Path: "/a", Errno: "ENOENT"}).Error())
	_, err := ParseErrorPayload([]byte("garbage\x00"))
	assert.ErrorIs(t, err, ErrProtocol)
}

func TestParseStrings(t *testing.T) {
	assert.Nil(t, ParseStrings(nil))
	assert.Equal(t, []string{"a", "bc"}, ParseStrings([]byte("a\x00bc\x00")))
	assert.Equal(t, []string{"a", "bc"}, ParseStrings([]byte("a\x00bc")))
}

func TestPerms(t *testing.T) {
	p, err := ParsePerms([]string{"n0", "r5", "b65535", "w7"})
	require.NoError(t, err)
	assert.Equal(t, []Perm{{0, PermNone}, {5, PermRead}, {65535, PermBoth}, {7, PermWrite}}, p)
	assert.Equal(t, []string{"n0", "r5", "b65535", "w7"}, FormatPerms(p))
	for _, bad := range []string{"", "x1", "r", "r65536", "r-1", "r+1", "r 1"} {
		_, err := ParsePerm(bad)
		assert.ErrorIs(t, err, ErrInvalid, bad)
	}
	_, err = ParsePerms(nil)
	assert.ErrorIs(t, err, ErrInvalid)
}

func FuzzDecodeHeader(f *testing.F) {
	f.Add(AppendHeader(nil, Header{Type: MsgRead, ReqID: 1, Len: 4}))
	f.Add([]byte{1, 2, 3})
	f.Add(AppendHeader(nil, Header{Len: 1 << 31}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHeader(b)
		if err != nil {
			return
		}
		if h.Len > PayloadMax {
			t.Fatalf("accepted len %d", h.Len)
		}
		if got := AppendHeader(nil, h); string(got) != string(b[:HeaderSize]) {
			t.Fatalf("round trip %x != %x", got, b[:HeaderSize])
		}
	})
}

func FuzzParsePerms(f *testing.F) {
	f.Add("n0\x00r5\x00")
	f.Add("b65535")
	f.Add("x\x00")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePerms(ParseStrings([]byte(s)))
		if err != nil {
			return
		}
		q, err := ParsePerms(FormatPerms(p))
		if err != nil || len(q) != len(p) {
			t.Fatalf("round trip of %v: %v %v", p, q, err)
		}
		for i := range p {
			if p[i] != q[i] {
				t.Fatalf("round trip of %v: %v", p, q)
			}
		}
	})
}

func FuzzParseReply(f *testing.F) {
	f.Add([]byte("ENOENT\x00"))
	f.Add([]byte("a\x00b\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		if name, err := ParseErrorPayload(p); err == nil {
			_ = (&Error{Op: "READ", Errno: name}).Error()
		}
		n := 0
		for _, s := range ParseStrings(p) {
			n += len(s) + 1
		}
		if n < len(p) || n > len(p)+1 {
			t.Fatalf("strings cover %d bytes of %d", n, len(p))
		}
	})
}
