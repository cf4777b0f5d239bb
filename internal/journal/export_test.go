package journal

// SetHook makes j call fn before each store to its memory (crash tests).
func (j *Journal) SetHook(fn func()) { j.hook = fn }
