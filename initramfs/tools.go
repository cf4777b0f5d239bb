//go:build tools

// This file keeps the u-root commands the image is built from in go.mod.
package initramfs

import (
	_ "github.com/u-root/u-root/cmds/core/gosh"
	_ "github.com/u-root/u-root/cmds/core/init"
)
