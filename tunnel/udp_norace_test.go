//go:build !race

package tunnel

// udpRaceEnabled skips allocation counts, which the race detector inflates.
const udpRaceEnabled = false
