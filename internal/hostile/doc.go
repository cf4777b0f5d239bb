// Package hostile is the hostile-frontend suite (issue 8): on the simulated
// host (internal/xensim) two driver domains (dd1: blkback with mapped and
// persistent grants, and netback; dd2: blkback in grant-copy mode) serve an
// honest guest, which does verified block and network I/O throughout, and a
// hostile guest, which writes whatever it likes into its rings, its grants
// and its xenstore directory. Every malformed case must get an error
// response, or halt that one ring, or refuse that one device with an error
// under error/; nothing outside a device's bounds may be touched (the disks
// are windows of larger files with checksummed guard regions on both sides,
// or real files whose size and siblings are checked); the honest guest must
// keep being served; nothing may panic; closing a device releases every
// mapping and port.
//
// The tests, each a table of subtests:
//   - TestBlkRequests: out-of-device requests (end, wrap-around of the
//     sector and of sector*512, huge counts, discard ranges, indirect
//     segments summing past the end) and bad grants (never made, granted to
//     another domain, read-only as a READ target), on four kinds of disk;
//   - TestBlkRewrittenRequest: the slot (and indirect page) rewritten after
//     the push, from inside the backend's I/O and racing it;
//   - TestBlkRingIndex, TestVifRingIndex, TestVifRxBuffers: producer
//     indices far ahead, backwards, across the wrap; legitimate wrap;
//   - TestBlkFrontendKeys, TestVifFrontendKeys: nonsense handshake keys;
//   - TestBlkKeysRewrittenAfterConnect, TestVifKeysRewrittenAfterConnect;
//   - TestVifTxChains: hostile tx chains; TestBlkGrantChurn,
//     TestBlkRingPageAsData, TestEventStorm.
//
// The package has no non-test code; run it with
//
//	go test -race ./internal/hostile/
package hostile
