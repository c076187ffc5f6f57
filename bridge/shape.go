package bridge

import (
	"context"

	"golang.org/x/time/rate"
)

// Shape returns p with its Writes (frames to the far end) held to limiter's
// rate: frames wait in the switch's queue for p, and beyond it are dropped
// and counted, as at a WAN's bottleneck. Several ports may share one
// limiter (one uplink for all). It is for emulation (vnet demo), not for
// production traffic policy.
func Shape(p Port, limiter *rate.Limiter) Port { return &shapedPort{Port: p, l: limiter} }

type shapedPort struct {
	Port
	l *rate.Limiter
}

// Offloads passes the shaped port's own on: shaping counts bytes, so a
// super-frame is shaped like the frames it stands for.
func (s *shapedPort) Offloads() bool {
	op, ok := s.Port.(OffloadPort)
	return ok && op.Offloads()
}

// TakesSealed passes the shaped port's own on: it writes what it is
// given, sealed or not.
func (s *shapedPort) TakesSealed() bool {
	sp, ok := s.Port.(SealedPort)
	return ok && sp.TakesSealed()
}

func (s *shapedPort) Write(bufs [][]byte, offset int) (int, error) {
	n := 0
	for _, b := range bufs {
		n += max(0, len(b)-offset)
	}
	for burst := s.l.Burst(); n > 0; n -= burst {
		if err := s.l.WaitN(context.Background(), min(n, burst)); err != nil {
			return 0, err
		}
	}
	return s.Port.Write(bufs, offset)
}

// FrameLimit passes the shaped port's own on (0 if it has none).
func (s *shapedPort) FrameLimit() int {
	if lp, ok := s.Port.(LimitPort); ok {
		return lp.FrameLimit()
	}
	return 0
}
