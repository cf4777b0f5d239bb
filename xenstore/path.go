package xenstore

import (
	"fmt"
	"strconv"
	"strings"
)

// CheckPath validates a node path by the rules of docs/misc/xenstore.txt:
// ASCII alphanumerics and "-/_@" only, no doubled or trailing slash (the
// root "/" excepted), not empty; an absolute path (leading "/") at most
// AbsPathMax bytes, a relative one at most RelPathMax. A bad character or
// shape wraps ErrInvalid, an overlong path ErrQuota.
func CheckPath(p string) error {
	if p == "" {
		return fmt.Errorf("xenstore: empty path: %w", ErrInvalid)
	}
	limit := RelPathMax
	if p[0] == '/' {
		limit = AbsPathMax
	}
	if len(p) > limit {
		return fmt.Errorf("xenstore: path of %d bytes exceeds %d: %w", len(p), limit, ErrQuota)
	}
	if p == "/" {
		return nil
	}
	if p[len(p)-1] == '/' {
		return fmt.Errorf("xenstore: path %.64q: trailing slash: %w", p, ErrInvalid)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '_', c == '@':
		case c == '/':
			if i > 0 && p[i-1] == '/' {
				return fmt.Errorf("xenstore: path %.64q: doubled slash: %w", p, ErrInvalid)
			}
		default:
			return fmt.Errorf("xenstore: path %.64q: bad character %q: %w", p, c, ErrInvalid)
		}
	}
	return nil
}

// DomainPath is the home directory of domid: /local/domain/<domid>.
func DomainPath(domid uint16) string { return "/local/domain/" + strconv.Itoa(int(domid)) }

// IsChild reports whether child is parent or below it, by xenstore's
// definition (every path is a child of "/" and of itself).
func IsChild(child, parent string) bool {
	if parent == "/" || child == parent {
		return true
	}
	return strings.HasPrefix(child, parent) && len(child) > len(parent) && child[len(parent)] == '/'
}
