// Package lab builds and boots the project's Xen-in-QEMU lab: Xen 4.17, a
// dom0, a PCI-passthrough driver domain and a guest, all made from Debian
// bookworm packages and booted under QEMU TCG. Artifacts are cached under
// ${XDG_CACHE_HOME:-$HOME/.cache}/drvdom, keyed by the package versions they
// come from and by Recipe, so only what changed is rebuilt.
//
// Artifacts (Builder.Build): the gunzipped hypervisor; the Debian kernel as
// a bzImage (dom0) and as an ELF vmlinux (domUs: libxenguest's xz
// decompression takes ~40 s in a TCG dom0); trimmed, depmod'ed module sets
// per role (dom0, driver-domain, guest, and their union); one debootstrap
// minbase rootfs (RootfsPkgs) shared by every domain and packed, with the
// union module set and BaseInit as /init, into one uncompressed cpio.
//
// A boot (Scenario.Prepare + Run): the run directory is dom0's /lab over
// 9p. The domUs' ramdisks are a small per-run plain cpio (their /lab:
// lib.sh, init-<role>.sh, scripts, optionally drvdomd) followed by the
// shared rootfs cpio or by a driver-domain image (--drvdom-image). Every
// script prints "@@LAB ...@@" markers (CHECK, FILE/EOF, BEGIN/END, T,
// READY, PHASE, FAILED-DOMAIN) on its console; xenconsoled logs the domU
// consoles into the run directory, dom0 follows them to sequence the run,
// and the host parses them (ParseMarkers, Collect).
//
// The driver domain is either the shell rootfs (kernel backends with
// /lab/hotplug.sh or drvdomd's kernel mode; drvdom.backend=drvdom runs
// drvdomd built from this repository) or an image such as `xenlab image`
// builds (u-root + drvdomd); drvdom.backend=kernel|drvdom goes on its kernel
// command line either way.
//
// The pure parts (cache keys, apt output parsing, QEMU arguments, xl
// configs, scripts, cpio, bzImage payloads, marker/fio/iperf3 parsing) are
// unit tested; building and booting need root, apt, debootstrap and
// qemu-system-x86 and are exercised by cmd/xenlab.
package lab

// Recipe is the lab's own recipe version: bump it whenever the way an
// artifact is made changes, so that every cached artifact is rebuilt.
const Recipe = "lab-recipe-1"
