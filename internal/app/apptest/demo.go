package apptest

// WithDemo turns the demo on (APPROVALD_DEMO=1): the demo site, phone and
// mailbox under /demo/.
func WithDemo() Option { return WithEnv("APPROVALD_DEMO", "1") }
