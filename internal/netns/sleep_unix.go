//go:build unix

package netns

import (
	"time"

	"golang.org/x/sys/unix"
)

// preciseSleep sleeps for d in nanosleep: Go's timers wake a process that
// has nothing else to do through epoll_wait, whose timeout is in whole
// milliseconds, so a time.Sleep of 10 ms may last 11; a delay line must be
// exact to within tens of microseconds. The goroutine's thread blocks
// meanwhile (the runtime runs others on another one).
func preciseSleep(d time.Duration) {
	if d <= 0 {
		return
	}
	ts := unix.NsecToTimespec(int64(d))
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}
