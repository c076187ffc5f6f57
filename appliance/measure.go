package appliance

import (
	"math"
	"time"

	"vnet/adapt"
	"vnet/tunnel"
)

// setMeasured fills li's counters and measurements from the link as its
// local end sees it.
func setMeasured(li *LinkInfo, l *tunnel.Link) {
	m := l.Measurement()
	li.RTTus, li.TxBytes, li.RxBytes = m.RTT.Microseconds(), l.TxBytes(), l.RxBytes()
	li.SRTTus, li.TransportRTTus = m.SRTT.Microseconds(), m.TransportRTT.Microseconds()
	// Rounded, so that an idle link's status does not change every second.
	li.TxMbps, li.RxMbps = round(m.TxMbps, 100), round(m.RxMbps, 100)
	li.TxCapacityMbps, li.RxCapacityMbps = round(m.TxCapacityMbps, 100), round(m.RxCapacityMbps, 100)
	li.CapacityMbps = round(m.CapacityMbps(), 100)
	li.Loss = round(m.Loss(), 1e4)
}

func round(v, per float64) float64 { return math.Round(v*per) / per }

// mergeEnds completes mine, a link as the reporting daemon measured it,
// with peer, the same link as the other end measured it: each direction's
// capacity is the receiver's estimate when it has one (it saw what
// arrived; a sender sees what left), else the sender's; loss the worse
// report; the RTTs the smaller (both ends time the same round trip).
func mergeEnds(mine, peer LinkInfo) LinkInfo {
	pick := func(receiver, sender float64) float64 {
		if receiver > 0 {
			return receiver
		}
		return sender
	}
	mine.TxCapacityMbps = pick(peer.RxCapacityMbps, mine.TxCapacityMbps)
	mine.RxCapacityMbps = pick(mine.RxCapacityMbps, peer.TxCapacityMbps)
	mine.CapacityMbps = tunnel.Measurement{TxCapacityMbps: mine.TxCapacityMbps,
		RxCapacityMbps: mine.RxCapacityMbps}.CapacityMbps()
	mine.Loss = max(mine.Loss, peer.Loss)
	mine.RTTus = minPositive(mine.RTTus, peer.RTTus)
	mine.TransportRTTus = minPositive(mine.TransportRTTus, peer.TransportRTTus)
	return mine
}

func minPositive(a, b int64) int64 {
	switch {
	case a <= 0:
		return b
	case b <= 0:
		return a
	}
	return min(a, b)
}

// measuredCost is what the planner needs of a link: its RTT and capacity.
func measuredCost(li LinkInfo) adapt.Cost {
	return adapt.Cost{RTT: time.Duration(li.RTTus) * time.Microsecond, Mbps: li.CapacityMbps}
}

// viaStar estimates a host pair without a direct measurement from their
// star links, the path their traffic takes now: the RTTs add up, the
// slower link limits the throughput (zero fields stay unknown).
func viaStar(a, b adapt.Cost) adapt.Cost {
	var c adapt.Cost
	if a.RTT > 0 && b.RTT > 0 {
		c.RTT = a.RTT + b.RTT
	}
	if a.Mbps > 0 && b.Mbps > 0 {
		c.Mbps = min(a.Mbps, b.Mbps)
	}
	return c
}
