// Package lab builds and boots the project's Xen-in-QEMU lab: Xen 4.17, a
// dom0, a PCI-passthrough driver domain and guests, all made from Debian
// bookworm packages and booted under QEMU TCG. Artifacts are cached under
// ${XDG_CACHE_HOME:-$HOME/.cache}/drvdom, keyed by the package versions they
// come from and by Recipe, so only what changed is rebuilt.
//
// The pure parts (cache keys, apt output parsing, QEMU arguments, the dom0
// init script and xl configs) are unit tested; building and booting need root,
// apt, debootstrap and qemu-system-x86 and are exercised by cmd/xenlab.
package lab

// Recipe is the lab's own recipe version: bump it whenever the way an
// artifact is made changes, so that every cached artifact is rebuilt.
const Recipe = "lab-recipe-1"
