package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Platform answers questions about the Xen host; tests inject a fake.
type Platform interface {
	// XLInfo is the output of `xl info`.
	XLInfo(ctx context.Context) (string, error)
	// XLDmesg is the output of `xl dmesg`.
	XLDmesg(ctx context.Context) (string, error)
}

type realPlatform struct{}

func (realPlatform) XLInfo(ctx context.Context) (string, error)  { return runXL(ctx, "info") }
func (realPlatform) XLDmesg(ctx context.Context) (string, error) { return runXL(ctx, "dmesg") }

func runXL(ctx context.Context, arg string) (string, error) {
	out, err := exec.CommandContext(ctx, "xl", arg).Output()
	if err != nil {
		return "", fmt.Errorf("xl %s: %w", arg, err)
	}
	return string(out), nil
}

// IOMMUStatus is what the host says about I/O virtualisation.
type IOMMUStatus struct {
	Present bool
	Why     string // the evidence, for the message
}

// ProbeIOMMU decides whether Xen can isolate a passed-through device's DMA.
// `xl info` lists "hvm_directio"/"pv_directio" (or "iommu_hap_pt_share") in
// virt_caps only when an IOMMU is in use; older Xens print it in xen_caps.
// When xl info says nothing either way, Xen's boot log decides:
// "I/O virtualisation enabled" vs "disabled".
func ProbeIOMMU(ctx context.Context, p Platform) (IOMMUStatus, error) {
	info, infoErr := p.XLInfo(ctx)
	if infoErr == nil {
		for _, line := range strings.Split(info, "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			k = strings.TrimSpace(k)
			if k != "virt_caps" && k != "xen_caps" {
				continue
			}
			for _, f := range strings.Fields(v) {
				switch f {
				case "hvm_directio", "pv_directio", "iommu_hap_pt_share":
					return IOMMUStatus{Present: true, Why: "xl info " + k + " has " + f}, nil
				}
			}
		}
	}
	dmesg, dmesgErr := p.XLDmesg(ctx)
	if dmesgErr == nil {
		switch {
		case strings.Contains(dmesg, "I/O virtualisation enabled"):
			return IOMMUStatus{Present: true, Why: `xl dmesg: "I/O virtualisation enabled"`}, nil
		case strings.Contains(dmesg, "I/O virtualisation disabled"):
			return IOMMUStatus{Present: false, Why: `xl dmesg: "I/O virtualisation disabled"`}, nil
		}
	}
	if infoErr != nil && dmesgErr != nil {
		return IOMMUStatus{}, fmt.Errorf("cannot ask Xen about the IOMMU: %w; %w", infoErr, dmesgErr)
	}
	return IOMMUStatus{Present: false, Why: "xl info virt_caps has no hvm_directio/pv_directio and xl dmesg does not say I/O virtualisation is enabled"}, nil
}
