package tunnel

// routineStop makes a link go silent without closing its socket: it stops
// its keepalives (nobody reads it in the test, so it answers no pings).
func (l *Link) routineStop() { l.stopKeepalive() }
