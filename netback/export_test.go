package netback

// MemQueueDepth exports memQueueDepth to the external tests: how many frames
// a MemTap queue takes before its Write waits for room.
const MemQueueDepth = memQueueDepth
