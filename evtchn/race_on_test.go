//go:build race

package evtchn

// raceEnabled: the race detector allocates in the runtime paths that alloc tests measure.
const raceEnabled = true
