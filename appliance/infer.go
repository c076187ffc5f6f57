package appliance

import (
	"time"

	"vnet/bridge"
	"vnet/infer"
)

// ReportInterval is how often a host pushes its local traffic matrix to the
// proxy while some VM pair is active (VTTIF's update rate).
var ReportInterval = time.Second

// ReportPoll is how often a host checks whether a pair just turned active,
// to report it at once rather than at the next interval.
var ReportPoll = 50 * time.Millisecond

// retickGap is the least time between two evaluations of the global
// topology that host reports trigger (each costs milliseconds for tens
// of VMs; many hosts report within one gap).
const retickGap = 25 * time.Millisecond

// maxEntriesPerMsg keeps one matrix report under a UDP link's control limit.
const maxEntriesPerMsg = 400

// matrixReport is a host's local traffic since its previous report.
type matrixReport struct {
	Boot   uint64        `json:"boot"` // random per daemon start: seq restarts with it
	Seq    uint64        `json:"seq"`
	Deltas []infer.Entry `json:"deltas,omitempty"`
	Quiet  []string      `json:"quiet,omitempty"` // "src>dst" pairs that went quiet
}

// accountObserver feeds the switch's received batches to the accountant,
// counting only frames that enter from VM ports (once per network).
type accountObserver struct{ a *infer.Accountant }

func (o accountObserver) ObserveBatch(port string, role bridge.Role, frames [][]byte) {
	o.a.Observe(role == bridge.RoleLocal, frames)
}

func pairString(p infer.Pair) string { return p.Src.String() + ">" + p.Dst.String() }

func parsePair(s string) (infer.Pair, bool) {
	if len(s) != 35 || s[17] != '>' {
		return infer.Pair{}, false
	}
	src, err1 := bridge.ParseMAC(s[:17])
	dst, err2 := bridge.ParseMAC(s[18:])
	if err1 != nil || err2 != nil {
		return infer.Pair{}, false
	}
	return infer.Pair{Src: infer.MAC(src), Dst: infer.MAC(dst)}, true
}

// reports splits one accounting interval into messages small enough for
// any link; the sequence number counts messages, so the proxy can drop a
// duplicate.
func reports(boot uint64, seq *uint64, deltas []infer.Entry, quiet []infer.Pair) []matrixReport {
	var out []matrixReport
	for len(deltas) > 0 || len(quiet) > 0 || len(out) == 0 {
		*seq++
		r := matrixReport{Boot: boot, Seq: *seq}
		n := min(len(deltas), maxEntriesPerMsg)
		r.Deltas, deltas = deltas[:n], deltas[n:]
		for len(quiet) > 0 && len(r.Quiet)+n < maxEntriesPerMsg {
			r.Quiet = append(r.Quiet, pairString(quiet[0]))
			quiet = quiet[1:]
		}
		out = append(out, r)
	}
	return out
}
