package lab

// DriverDomainSmoke returns the default dom0 script: for now it checks the
// toolstack is up (xl list, xl info); M3 extends it with the driver domain.
func DriverDomainSmoke(a *Artifacts) (script string, files map[string]string, err error) {
	return `set -e
xl list
xl info | grep -E '^(xen_version|virt_caps|total_memory)'
ls /sys/bus/pci/devices
`, nil, nil
}
