package xenstore

import (
	"fmt"
	"strconv"
	"strings"
)

// Access is one domain's permission on a node, as its wire letter.
type Access byte

// Access letters from docs/misc/xenstore.txt.
const (
	PermNone  Access = 'n'
	PermRead  Access = 'r'
	PermWrite Access = 'w'
	PermBoth  Access = 'b'
)

// Perm is one "<c><domid>" entry. In a node's list the first entry names
// the owner, and its Access is what domains without an entry get.
type Perm struct {
	Domid  uint16
	Access Access
}

func (p Perm) String() string { return string(rune(p.Access)) + strconv.Itoa(int(p.Domid)) }

// ParsePerm parses one "<c><domid>" entry.
func ParsePerm(s string) (Perm, error) {
	if len(s) < 2 {
		return Perm{}, fmt.Errorf("xenstore: perm %q: %w", s, ErrInvalid)
	}
	a := Access(s[0])
	switch a {
	case PermNone, PermRead, PermWrite, PermBoth:
	default:
		return Perm{}, fmt.Errorf("xenstore: perm %q: bad access letter: %w", s, ErrInvalid)
	}
	for _, c := range s[1:] {
		if c < '0' || c > '9' {
			return Perm{}, fmt.Errorf("xenstore: perm %q: bad domid: %w", s, ErrInvalid)
		}
	}
	id, err := strconv.ParseUint(s[1:], 10, 16)
	if err != nil {
		return Perm{}, fmt.Errorf("xenstore: perm %q: %w", s, ErrInvalid)
	}
	return Perm{Domid: uint16(id), Access: a}, nil
}

// ParsePerms parses a list of entries; it needs at least one (the owner).
func ParsePerms(list []string) ([]Perm, error) {
	if len(list) == 0 {
		return nil, fmt.Errorf("xenstore: empty permission list: %w", ErrInvalid)
	}
	out := make([]Perm, 0, len(list))
	for _, s := range list {
		p, err := ParsePerm(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// FormatPerms renders perms as the wire strings ("n0", "r5").
func FormatPerms(perms []Perm) []string {
	out := make([]string, len(perms))
	for i, p := range perms {
		out[i] = p.String()
	}
	return out
}

// PermsString renders perms space-separated, for logs and dumps.
func PermsString(perms []Perm) string { return strings.Join(FormatPerms(perms), " ") }
