//go:build !linux

package grant

import "errors"

var errNotLinux = errors.New("grant: Xen grant devices need Linux")

// OpenGntdev fails: /dev/xen/gntdev exists only on Linux.
func OpenGntdev() (Mapper, error) { return nil, errNotLinux }

// OpenGntalloc fails: /dev/xen/gntalloc exists only on Linux.
func OpenGntalloc() (Sharer, error) { return nil, errNotLinux }
