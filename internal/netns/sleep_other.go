//go:build !unix

package netns

import "time"

func preciseSleep(d time.Duration) { time.Sleep(d) }
