package adapt

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// DampConfig configures a Damper.
type DampConfig struct {
	MinDwell            time.Duration // a link stays at least this long, and until unwanted this long
	Hysteresis          float64       // apply improvements only if the objective improves by this share (0 = always)
	MaxChangesPerMinute int           // link additions, deletions and moves per minute (0 = no cap)
}

// Damper decides which changes of a new plan to apply now (see the package doc). It is safe
// for concurrent use; Filter assumes the caller applies what it returns.
type Damper struct {
	cfg     DampConfig
	mu      sync.Mutex
	born    map[HostPair]time.Time // first seen or added
	wanted  map[HostPair]time.Time // last time in a desired plan
	history []time.Time            // counted changes applied
}

// NewDamper returns a Damper.
func NewDamper(cfg DampConfig) *Damper {
	return &Damper{cfg: cfg, born: map[HostPair]time.Time{}, wanted: map[HostPair]time.Time{}}
}

// Reset forgets every link's history and the changes counted.
func (d *Damper) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.born)
	clear(d.wanted)
	d.history = nil
}

func ruleLink(r *Rule) (HostPair, bool) {
	name, ok := strings.CutPrefix(r.To, "link:")
	if !ok || strings.HasPrefix(name, "star-") {
		return HostPair{}, false
	}
	a, b, ok := strings.Cut(name, "-")
	if !ok {
		return HostPair{}, false
	}
	return Pair(a, b), true
}

// Filter splits Diff(current, desired) into the changes to apply now and those held, with a
// one-line reason. current.Objective and desired.Objective must be evaluated for the same
// (current) demands.
func (d *Damper) Filter(now time.Time, current, desired Plan) (apply []Change, held []Change, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg := d.cfg
	curLinks, desLinks := linkSet(current.Links), linkSet(desired.Links)
	for l := range desLinks {
		d.wanted[l] = now
	}
	for l := range curLinks {
		if _, ok := d.born[l]; !ok {
			d.born[l] = now
		}
	}
	for l := range d.born {
		if !curLinks[l] && !desLinks[l] {
			delete(d.born, l)
		}
	}
	for l, t := range d.wanted {
		if !curLinks[l] && !desLinks[l] && now.Sub(t) >= cfg.MinDwell {
			delete(d.wanted, l)
		}
	}
	keep := d.history[:0]
	for _, t := range d.history {
		if now.Sub(t) < time.Minute {
			keep = append(keep, t)
		}
	}
	d.history = keep
	budget := -1
	if cfg.MaxChangesPerMinute > 0 {
		budget = max(0, cfg.MaxChangesPerMinute-len(d.history))
	}

	gain := 0.0
	if current.Objective > 0 {
		gain = (current.Objective - desired.Objective) / current.Objective
	}
	improve := cfg.Hysteresis <= 0 || (desired.Objective < current.Objective && gain >= cfg.Hysteresis)

	var nDwell, nHyst, nRate int
	count := func() bool {
		if budget == 0 {
			return false
		}
		if budget > 0 {
			budget--
		}
		d.history = append(d.history, now)
		return true
	}
	changes := Diff(current, desired)
	verdict := make([]int, len(changes)) // 0 undecided, 1 apply, 2 held
	heldAdd, gone := map[HostPair]bool{}, map[HostPair]bool{}
	heldMove := map[string]bool{}
	// links and moves first (they decide the rules)
	for i, c := range changes {
		switch c.Op {
		case "add-link", "move":
			switch {
			case !improve:
				verdict[i] = 2
				nHyst++
			case !count():
				verdict[i] = 2
				nRate++
			default:
				verdict[i] = 1
				if c.Op == "add-link" {
					d.born[*c.Link] = now
				}
			}
			if verdict[i] == 2 {
				if c.Op == "add-link" {
					heldAdd[*c.Link] = true
				} else {
					heldMove[c.VM] = true
				}
			}
		case "del-link":
			l := *c.Link
			switch {
			case now.Sub(d.born[l]) < cfg.MinDwell, now.Sub(d.wanted[l]) < cfg.MinDwell:
				verdict[i] = 2
				nDwell++
			case !count():
				verdict[i] = 2
				nRate++
			default:
				verdict[i] = 1
				gone[l] = true
			}
		}
	}
	heldRule := map[[3]string]bool{}
	for i, c := range changes {
		if c.Op != "add-rule" {
			continue
		}
		l, fast := ruleLink(c.Rule)
		switch {
		case !improve:
			verdict[i] = 2
			nHyst++
		case fast && (heldAdd[l] || !curLinks[l] && !desLinks[l]), heldMove[c.Rule.Dst]:
			verdict[i] = 2
			nRate++
		default:
			verdict[i] = 1
		}
		if verdict[i] == 2 {
			heldRule[[3]string{c.Rule.Host, c.Rule.Src, c.Rule.Dst}] = true
		}
	}
	for i, c := range changes {
		if c.Op != "del-rule" {
			continue
		}
		l, fast := ruleLink(c.Rule)
		switch {
		case fast && gone[l]:
			verdict[i] = 1 // the link goes: so do its rules
		case !improve:
			verdict[i] = 2
			nHyst++
		case heldMove[c.Rule.Dst], heldRule[[3]string{c.Rule.Host, c.Rule.Src, c.Rule.Dst}]:
			verdict[i] = 2
			nRate++
		default:
			verdict[i] = 1
		}
	}
	for i, c := range changes {
		if verdict[i] == 1 {
			apply = append(apply, c)
		} else {
			held = append(held, c)
		}
	}
	reason = fmt.Sprintf("apply %d, hold %d", len(apply), len(held))
	var why []string
	if nDwell > 0 {
		why = append(why, fmt.Sprintf("dwell %d (links stay %v and until unwanted for %v)", nDwell, cfg.MinDwell, cfg.MinDwell))
	}
	if nHyst > 0 {
		why = append(why, fmt.Sprintf("hysteresis %d (gain %.1f%% < %.1f%%)", nHyst, 100*gain, 100*cfg.Hysteresis))
	}
	if nRate > 0 {
		why = append(why, fmt.Sprintf("rate cap %d (%d changes/min; rules wait for their links)", nRate, cfg.MaxChangesPerMinute))
	}
	if len(why) > 0 {
		reason += ": " + strings.Join(why, ", ")
	}
	return apply, held, reason
}
