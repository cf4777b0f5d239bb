package xenstore

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestCheckPath(t *testing.T) {
	for _, ok := range []string{"/", "/local/domain/0", "device/vbd/51712", "@releaseDomain", "/a-b_c@d",
		"/" + strings.Repeat("a", AbsPathMax-1), strings.Repeat("a", RelPathMax)} {
		assert.NoError(t, CheckPath(ok), ok)
	}
	for _, bad := range []string{"", "//", "/a/", "/a//b", "/a b", "/a\x00", "/ä", "a/"} {
		assert.ErrorIs(t, CheckPath(bad), ErrInvalid, bad)
	}
	assert.ErrorIs(t, CheckPath("/"+strings.Repeat("a", AbsPathMax)), ErrQuota)
	assert.ErrorIs(t, CheckPath(strings.Repeat("a", RelPathMax+1)), ErrQuota)
}

func TestIsChildAndDomainPath(t *testing.T) {
	assert.True(t, IsChild("/a/b", "/a"))
	assert.True(t, IsChild("/a", "/a"))
	assert.True(t, IsChild("/a", "/"))
	assert.False(t, IsChild("/ab", "/a"))
	assert.False(t, IsChild("/a", "/a/b"))
	assert.Equal(t, "/local/domain/65535", DomainPath(65535))
}
