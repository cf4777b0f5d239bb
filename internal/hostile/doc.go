// Package hostile is the hostile-frontend suite (issue 8): on the simulated
// host (internal/xensim) a driver domain serves both device types to an
// honest guest, which does verified block and network I/O throughout, and
// to a hostile guest, which writes whatever it likes into its rings, its
// grants and its xenstore directory. Every malformed case must get an error
// response, or halt that one ring, or refuse that one device with an error
// under error/; nothing outside a device's bounds may be touched (the disks
// are windows of larger files with checksummed guard regions on both
// sides); the honest guest must keep being served; nothing may panic.
//
// The package has no non-test code; run it with
//
//	go test -race ./internal/hostile/
//
// Each case is a subtest of a table; -v lists them.
package hostile
