package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"
)

// HostPackages are the Debian packages the lab needs on the host.
var HostPackages = []string{"qemu-system-x86", "debootstrap", "cpio", "kmod"}

var hostTools = map[string]string{
	"qemu-system-x86_64": "qemu-system-x86", "debootstrap": "debootstrap", "cpio": "cpio", "depmod": "kmod", "modprobe": "kmod",
}

// Ensure installs missing host tools with apt-get when running as root.
func Ensure(ctx context.Context, p *Progress) error {
	var missing []string
	seen := map[string]bool{}
	for tool, pkg := range hostTools {
		if _, err := exec.LookPath(tool); err != nil && !seen[pkg] {
			if _, err := os.Stat("/usr/sbin/" + tool); err == nil {
				continue
			}
			seen[pkg] = true
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("lab: missing host packages %v (install them as root)", missing)
	}
	done := p.Step(fmt.Sprintf("apt-get install %v", missing), 60*time.Second)
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	b, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("lab: apt-get install %v: %w: %s", missing, err, b)
	}
	done(err)
	return err
}
