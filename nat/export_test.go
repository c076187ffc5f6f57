package nat

import "time"

// SetTiming shrinks Probe's timing for tests; call it before any Probe
// runs (TestMain) and restore after.
func SetTiming(interval, final time.Duration, attempts int) (restore func()) {
	i, f, a := retransmitInterval, finalWait, probeAttempts
	retransmitInterval, finalWait, probeAttempts = interval, final, attempts
	return func() { retransmitInterval, finalWait, probeAttempts = i, f, a }
}

// Timing returns Probe's timing.
func Timing() (interval, final time.Duration, attempts int) {
	return retransmitInterval, finalWait, probeAttempts
}
