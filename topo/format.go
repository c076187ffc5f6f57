package topo

import (
	"bufio"
	"io"
)

// Header is the comment line that starts every formatted topology.
const Header = "# vnet topology"

// Format writes the canonical form of t to w: [Header], then the host, vm,
// link and rule lines, each group sorted and followed by a blank line (empty
// groups are left out). t itself is not modified. Format refuses, with the
// error of [Topology.Validate], a topology that would not parse back, so
// [Parse] of its output always succeeds and gives the canonical topology,
// and formatting that again gives the same bytes.
func (t *Topology) Format(w io.Writer) error {
	c := t.Clone()
	c.Canonical()
	if err := c.Validate(); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	bw.WriteString(Header + "\n")
	group := func(lines []string) {
		if len(lines) == 0 {
			return
		}
		bw.WriteString("\n")
		for _, s := range lines {
			bw.WriteString(s + "\n")
		}
	}
	group(mapStrings(c.Hosts, func(h string) string { return "host " + h }))
	group(mapStrings(c.VMs, VM.String))
	group(mapStrings(c.Links, Link.String))
	group(mapStrings(c.Rules, Rule.String))
	return bw.Flush() // bufio.Writer keeps the first write error
}

func mapStrings[T any](s []T, f func(T) string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}
