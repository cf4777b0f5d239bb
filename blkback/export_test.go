package blkback

// Kill models the backend process dying now (see Driver.kill).
func (drv *Driver) Kill() { drv.kill() }

// TestStopWriteDelay is testStopWriteDelay, for the external tests.
var TestStopWriteDelay = &testStopWriteDelay
