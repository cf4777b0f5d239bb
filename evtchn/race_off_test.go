//go:build !race

package evtchn

const raceEnabled = false
