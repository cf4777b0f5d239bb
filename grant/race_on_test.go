//go:build race

package grant

// raceEnabled: the race detector allocates in the runtime paths that alloc tests measure.
const raceEnabled = true
