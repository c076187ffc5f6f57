package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"vnet/appliance"
	"vnet/infer"
	"vnet/topo"
)

const ctlHelp = `
Inspect and change a running vnet network through a daemon's control API
(the proxy's by default; a host's API gives its local view, read-only).

Commands:
  status                      the daemon: role, uptime, ports and their counters
  hosts                       hosts known to the proxy, their addresses, state and VMs
  links                       star and fast-path links: state, bytes, and what the
                              traffic measured passively: path RTT, rates, capacity
                              (achievable throughput; "-" until a sender was
                              backlogged or a receiver saw loss or queueing), loss;
                              a fast link's PATH is local (the peer's LAN address:
                              hosts behind one NAT or on one subnet), nat (through
                              the peer's NAT mapping) or public, and its address
  rules                       forwarding rules on every host
  vms                         VMs (MACs) and where they are attached
  route SRC-MAC DST-MAC       the hop-by-hop path a frame takes right now, the rule
                              that blocks the pair, and the rules with an IP filter
                              that block (or allow) some of its packets
  matrix [--last 60s]         the VMs' traffic matrix (MB per pair), inferred from
                              their frames (default: over the smoothing window)
  topology [--dot]            the application's inferred topology: edges, archetype
                              (ring, mesh, torus, hypercube, tree, all2all...)
  events                      inference events: topology changes, quiet, adaptation
  plan                        what the adaptation controller would do now, and why
                              (a dry run; the proxy applies it with --adapt)
  link add A B [--kind K]     open a direct fast-path link between hosts A and B
                              (udp: hole-punched through NATs where needed; tcp)
  link del A B                close it (traffic falls back to the star)
  adapt on|off|reset          turn the adaptation controller on or off (off: it changes
                              nothing, what it made stays); reset removes the fast
                              paths and rules it made
  migrate VM HOST             move a VM (its MAC or IP) to HOST with the proxy's
                              --migrate-cmd, then repoint the overlay: the VM keeps
                              its MAC and IP (waits for the move; no --timeout)
  rule add HOST SRC DST [FILTER] TO
                              install a rule on HOST: SRC and DST are MAC, any or
                              not:MAC; TO is link:NAME or port:NAME, or deny (drop
                              the pair's frames) or allow (let them through: a
                              hole in a wider deny); an optional "->" before TO.
                              A deny or allow may have an IP FILTER: any of
                              ip|ip4|ip6, proto tcp|udp|icmp|icmpv6|N,
                              from ADDR[/LEN], to ADDR[/LEN], port N[-M] (the
                              destination port; with proto tcp or udp). It
                              matches only IP frames (never ARP), and beats a
                              rule with the same MACs and no filter
  rule del HOST SRC DST [FILTER] TO
                              remove it
  invite --name H [--expires 1h] [--uses 1] [--proxy URL]...
                              print a one-line token that lets host H join without
                              the network key (vnet host --join TOKEN --state-dir DIR);
                              --proxy names the proxy's endpoints as hosts reach them
                              (default: its listeners)
  hosts revoke H              cut host H off: its links close at once, and neither its
                              stored credentials nor a token for H get in again
  export                      print the live state in the topology language
  apply FILE                  make the desired state equal to FILE (- for stdin):
                              only the difference is applied, and printed
  reload                      the proxy re-reads its --topology and --config files
                              (as on SIGHUP) and applies only what changed; prints
                              the changes, the settings applied and those that
                              need a restart; a bad file changes nothing

Examples:
  vnet ctl hosts
  vnet ctl invite --name h3 --expires 24h     # then on h3: vnet host --join TOKEN --state-dir /var/lib/vnet
  vnet ctl link add h1 h2 && vnet ctl route 52:54:00:00:00:01 52:54:00:00:00:02
  vnet ctl rule add h1 any 52:54:00:00:00:02 -> link:h1-h2
  vnet ctl rule add h1 any any proto tcp to 10.0.0.5 port 22 -> deny
  vnet ctl export > net.topo; $EDITOR net.topo; vnet ctl apply --dry-run net.topo; vnet ctl apply net.topo`

func runCtl(ctx context.Context, args []string) error {
	fs := newFlags("ctl", "[--api ADDR] [--json] COMMAND [ARGS]", ctlHelp)
	api := fs.String("api", envOr("VNET_API", "127.0.0.1:7777"), "the daemon's control API address (env VNET_API)")
	tokenFile := fs.String("api-token-file", "", "the daemon's API token, from `FILE` (or env VNET_API_TOKEN)")
	asJSON := fs.Bool("json", false, "print JSON (the API's shapes) instead of tables")
	dryRun := fs.Bool("dry-run", false, "apply: print what would change, change nothing")
	timeout := fs.Duration("timeout", 10*time.Second, "give up on the daemon after this long")
	last := fs.Duration("last", 0, "matrix: the last DURATION of traffic (default: the smoothed window)")
	dot := fs.Bool("dot", false, "topology: print a Graphviz graph (edge width by traffic)")
	kind := fs.String("kind", "", "link add: udp or tcp (default: udp when both hosts have a UDP socket, else tcp)")
	invName := fs.String("name", "", "invite: the host name the token is for")
	expires := fs.Duration("expires", time.Hour, "invite: the token is refused after this long")
	uses := fs.Int("uses", 1, "invite: how many joins the token allows")
	invProxies := fs.StringArray("proxy", nil, "invite: a proxy endpoint to put in the token, as hosts reach it\n"+
		"(repeatable; at least one tcp://, which joining uses; default: the proxy's listeners)")
	// A rule's "->" is an argument, not a shorthand flag '>'.
	const arrow = "\x00arrow"
	args = slices.Clone(args)
	for i, v := range args {
		if v == "->" {
			args[i] = arrow
		}
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	a := fs.Args()
	for i, v := range a {
		if v == arrow {
			a[i] = "->"
		}
	}
	if len(a) == 0 {
		fs.Usage()
		return usageErr("no command")
	}
	c := &ctlClient{base: "http://" + *api + "/api/v1/", json: *asJSON,
		http: &http.Client{Timeout: *timeout}, api: *api, token: os.Getenv("VNET_API_TOKEN")}
	if *tokenFile != "" {
		var err error
		if c.token, err = appliance.LoadAPIToken(*tokenFile); err != nil {
			return err
		}
	}
	switch cmd := a[0]; {
	case len(a) == 1 && cmd == "status":
		var st appliance.Status
		return c.show("status", &st, func(w io.Writer) { printStatus(w, st) })
	case len(a) == 1 && cmd == "hosts":
		var hs []appliance.HostInfo
		return c.show("hosts", &hs, func(w io.Writer) {
			table(w, "NAME\tSTATE\tNAT\tVMS\tADDRS")
			for _, h := range hs {
				table(w, "%s\t%s\t%s\t%d\t%s", h.Name, h.State, h.NAT, len(h.VMs), strings.Join(h.Addrs, " "))
			}
		})
	case len(a) == 3 && cmd == "hosts" && a[1] == "revoke":
		return c.change(http.MethodPost, "hosts/"+url.PathEscape(a[2])+"/revoke", struct{}{})
	case len(a) == 1 && cmd == "invite":
		if *invName == "" {
			return usageErr("invite needs --name (the host's name)")
		}
		if *expires < time.Second {
			return usageErr("--expires %v: at least 1s", *expires)
		}
		b, _ := json.Marshal(appliance.InviteRequest{Name: *invName, ExpiresS: int64(expires.Seconds()), Uses: *uses, Proxies: *invProxies})
		out, err := c.do(http.MethodPost, "invites", b)
		if err != nil {
			return err
		}
		if c.json {
			os.Stdout.Write(out)
			return nil
		}
		var r appliance.InviteReply
		if err := json.Unmarshal(out, &r); err != nil {
			return fmt.Errorf("unexpected answer from the daemon: %v", err)
		}
		fmt.Println(r.Token)
		fmt.Fprintf(os.Stderr, "invite for %s: %d join(s), until %s; on the host: vnet host --join TOKEN --state-dir DIR\n",
			r.Name, r.Uses, r.Expires.Local().Format(time.RFC3339))
		return nil
	case len(a) == 1 && cmd == "links":
		var ls []appliance.LinkInfo
		return c.show("links", &ls, func(w io.Writer) {
			table(w, "NAME\tA\tB\tKIND\tROLE\tVIA\tPATH\tSTATE\tRTT\tTX\tRX\tTX/S\tRX/S\tCAPACITY\tLOSS\tERROR")
			for _, l := range ls {
				path := "-"
				if l.Path != "" {
					path = strings.TrimSpace(l.Path + " " + l.Addr)
				}
				table(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", l.Name, l.A, l.B, l.Kind, l.Role,
					l.Via, path, l.State, rtt(l.RTTus), size(l.TxBytes), size(l.RxBytes), rate(l.TxMbps), rate(l.RxMbps),
					rate(l.CapacityMbps), loss(l.Loss, l.State), l.Error)
			}
		})
	case len(a) == 1 && cmd == "rules":
		var rs []appliance.RuleInfo
		return c.show("rules", &rs, func(w io.Writer) {
			table(w, "HOST\tSRC\tDST\tFILTER\t\tTO\tFRAMES")
			for _, r := range rs {
				table(w, "%s\t%s\t%s\t%s\t->\t%s\t%d", r.Host, r.Src, r.Dst, cmp.Or(r.Filter, "-"), r.To, r.Hits)
			}
		})
	case len(a) == 1 && cmd == "vms":
		var vs []appliance.VMInfo
		return c.show("vms", &vs, func(w io.Writer) {
			table(w, "MAC\tHOST\tPORT\tIPS")
			for _, v := range vs {
				table(w, "%s\t%s\t%s\t%s", v.MAC, v.Host, v.Port, strings.Join(v.IPs, " "))
			}
		})
	case len(a) == 1 && cmd == "matrix":
		path := "matrix"
		if *last > 0 {
			path += "?last=" + url.QueryEscape(last.String())
		}
		var m infer.Matrix
		return c.show(path, &m, func(w io.Writer) { printMatrix(w, m) })
	case len(a) == 1 && cmd == "topology":
		var t infer.Topology
		if *dot {
			b, err := c.do(http.MethodGet, "topology", nil)
			if err != nil {
				return err
			}
			if err := json.Unmarshal(b, &t); err != nil {
				return err
			}
			printDot(os.Stdout, t)
			return nil
		}
		return c.show("topology", &t, func(w io.Writer) { printTopology(w, t) })
	case len(a) == 1 && cmd == "plan":
		var pr appliance.PlanResult
		return c.show("plan", &pr, func(w io.Writer) {
			table(w, "objective\t%.4g now, %.4g planned", pr.Current, pr.Objective)
			table(w, "links\t%s", strings.Join(pr.Links, " "))
			if pr.Note != "" {
				table(w, "note\t%s", pr.Note)
			}
			for _, r := range pr.Reasons {
				table(w, "why\t%s", r)
			}
			for _, ch := range pr.Changes {
				table(w, "would apply\t%s", ch)
			}
			for _, ch := range pr.Held {
				table(w, "held\t%s", ch)
			}
			if len(pr.Changes) == 0 && len(pr.Held) == 0 {
				table(w, "changes\tnone")
			}
		})
	case len(a) == 1 && cmd == "events":
		var evs []infer.Event
		return c.show("events", &evs, func(w io.Writer) {
			for _, ev := range evs {
				line := fmt.Sprintf("%d\t%s\t%s", ev.Seq, ev.At.Format("15:04:05"), ev.Kind)
				if t := ev.Topology; t != nil {
					line += fmt.Sprintf("\t%s (%.2f), %d nodes, %d edges", t.Archetype, t.Confidence, len(t.Nodes), len(t.Edges))
				}
				if ev.Note != "" {
					line += "\t" + ev.Note
				}
				table(w, "%s", line)
			}
		})
	case len(a) == 3 && cmd == "route":
		var r appliance.Route
		return c.show("route?src="+url.QueryEscape(a[1])+"&dst="+url.QueryEscape(a[2]), &r, func(w io.Writer) {
			for i, h := range r.Hops {
				fmt.Fprintf(w, "%d. %-12s -> %s  (%s)\n", i+1, h.Host, h.To, h.By)
				for _, f := range h.Filters {
					fmt.Fprintf(w, "   %-12s    except: %s\n", "", f)
				}
			}
			if r.Delivered {
				fmt.Fprintln(w, "delivered")
			} else {
				fmt.Fprintln(w, "not delivered")
			}
			if r.Note != "" {
				fmt.Fprintln(w, "note:", r.Note)
			}
		})
	case len(a) == 4 && cmd == "link" && (a[1] == "add" || a[1] == "del"):
		method := http.MethodPost
		if a[1] == "del" {
			method = http.MethodDelete
		}
		body := map[string]string{"a": a[2], "b": a[3]}
		if *kind != "" && method == http.MethodPost {
			body["kind"] = *kind
		}
		return c.change(method, "links", body)
	case len(a) == 2 && cmd == "adapt" && (a[1] == "on" || a[1] == "off" || a[1] == "reset"):
		body := map[string]any{"on": a[1] == "on"}
		if a[1] == "reset" {
			body = map[string]any{"reset": true}
		}
		return c.change(http.MethodPost, "adapt", body)
	case len(a) == 3 && cmd == "migrate":
		if !fs.Changed("timeout") {
			c.http.Timeout = appliance.MigrateTimeout + time.Minute
		}
		b, _ := json.Marshal(map[string]string{"vm": a[1], "host": a[2]})
		out, err := c.do(http.MethodPost, "migrate", b)
		if err != nil {
			return err
		}
		if c.json {
			os.Stdout.Write(out)
			return nil
		}
		var r appliance.MigrateResult
		if err := json.Unmarshal(out, &r); err != nil {
			return fmt.Errorf("unexpected answer from the daemon: %v", err)
		}
		fmt.Printf("moved %s from %s to %s: the move took %d ms, the VM was reachable %d ms after it\n",
			r.VM, r.From, r.To, r.MoveMS, r.ReachableMS)
		if r.Note != "" {
			fmt.Println("note:", r.Note)
		}
		return nil
	case len(a) >= 6 && cmd == "rule" && (a[1] == "add" || a[1] == "del"):
		// HOST SRC DST [FILTER...] [->] TO
		r := a[2:]
		mid := r[3 : len(r)-1]
		if n := len(mid); n > 0 && mid[n-1] == "->" {
			mid = mid[:n-1]
		}
		if slices.Contains(mid, "->") {
			return usageErr("rule %s HOST SRC DST [FILTER] [->] TO", a[1])
		}
		filter, err := topo.ParseFilter(strings.Join(mid, " "))
		if err != nil {
			return err
		}
		method := http.MethodPost
		if a[1] == "del" {
			method = http.MethodDelete
		}
		return c.change(method, "rules", appliance.RuleInfo{Host: r[0], Src: r[1], Dst: r[2], To: r[len(r)-1], Filter: filter})
	case len(a) == 1 && cmd == "export":
		b, err := c.do(http.MethodGet, "export", nil)
		if err != nil {
			return err
		}
		os.Stdout.Write(b)
		return nil
	case len(a) == 2 && cmd == "apply":
		var body []byte
		var err error
		if a[1] == "-" {
			body, err = io.ReadAll(os.Stdin)
		} else {
			body, err = os.ReadFile(a[1])
		}
		if err != nil {
			return err
		}
		path := "apply"
		if *dryRun {
			path += "?dry_run=1"
		}
		b, err := c.do(http.MethodPost, path, body)
		if err != nil {
			return fmt.Errorf("%s: %w", a[1], err)
		}
		var res appliance.ApplyResult
		if err := json.Unmarshal(b, &res); err != nil {
			return err
		}
		if c.json {
			os.Stdout.Write(b)
			return nil
		}
		for _, ch := range res.Changes {
			fmt.Println(ch)
		}
		switch {
		case len(res.Changes) == 0:
			fmt.Println("no changes")
		case res.DryRun:
			fmt.Printf("%d change(s) would be applied (dry run)\n", len(res.Changes))
		default:
			fmt.Printf("%d change(s) applied\n", len(res.Changes))
		}
		return nil
	case len(a) == 1 && cmd == "reload":
		b, err := c.do(http.MethodPost, "reload", nil)
		if err != nil {
			return err
		}
		if c.json {
			os.Stdout.Write(b)
			return nil
		}
		var res appliance.ReloadResult
		if err := json.Unmarshal(b, &res); err != nil {
			return fmt.Errorf("unexpected answer from the daemon: %v", err)
		}
		printReload(os.Stdout, res)
		return nil
	default:
		return usageErr("unknown or incomplete command %q (see vnet ctl --help)", strings.Join(a, " "))
	}
}

// printReload prints what a reload changed: topology changes as apply
// prints them, then the settings.
func printReload(w io.Writer, res appliance.ReloadResult) {
	for _, ch := range res.Changes {
		fmt.Fprintln(w, ch)
	}
	for _, s := range res.Applied {
		fmt.Fprintln(w, "setting applied:", s)
	}
	if len(res.NeedsRestart) > 0 {
		fmt.Fprintln(w, "needs a restart:", strings.Join(res.NeedsRestart, ", "))
	}
	fmt.Fprintf(w, "reloaded: %d topology change(s), %d setting(s) applied, %d need a restart\n",
		len(res.Changes), len(res.Applied), len(res.NeedsRestart))
}

type ctlClient struct {
	base, api string
	token     string // sent as Authorization: Bearer
	json      bool
	http      *http.Client
}

// do performs one API call and returns the body of a successful answer; an
// error answer becomes an error carrying the daemon's message.
func (c *ctlClient) do(method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("cannot reach the control API at %s (is the daemon running? --api): %v", c.api, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// show fetches path into v and prints it as JSON or with human.
func (c *ctlClient) show(path string, v any, human func(io.Writer)) error {
	b, err := c.do(http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	if c.json {
		os.Stdout.Write(b)
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("unexpected answer from the daemon: %v", err)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	human(tw)
	return tw.Flush()
}

func (c *ctlClient) change(method, path string, body any) error {
	b, _ := json.Marshal(body)
	out, err := c.do(method, path, b)
	if err != nil {
		return err
	}
	if c.json {
		os.Stdout.Write(out)
		return nil
	}
	var m map[string]string
	json.Unmarshal(out, &m)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("%s %s\n", k, m[k])
	}
	return nil
}

func printStatus(w io.Writer, st appliance.Status) {
	table(w, "role\t%s", st.Role)
	table(w, "name\t%s", st.Name)
	table(w, "version\t%s", st.Version)
	table(w, "uptime\t%s", time.Duration(st.UptimeS)*time.Second)
	if len(st.Listen) > 0 {
		table(w, "listen\t%s", strings.Join(st.Listen, " "))
	}
	if st.Role == "host" {
		table(w, "proxy\t%s (%s)", st.Proxy, st.ProxyState)
		if st.NAT != "" || len(st.Reflexive) > 0 {
			table(w, "nat\t%s %s", st.NAT, strings.Join(st.Reflexive, " "))
		}
	} else {
		table(w, "hosts\t%d up of %d", st.HostsUp, st.HostsKnown)
	}
	table(w, "links up\t%d", st.LinksUp)
	table(w, "MACs\t%d", st.MACs)
	table(w, "")
	table(w, "PORT\tROLE\tRX FRAMES\tRX\tTX FRAMES\tTX\tDROPS")
	for _, p := range st.Ports {
		var drops []string
		for _, k := range sortedMapKeys(p.Drops) {
			drops = append(drops, fmt.Sprintf("%s=%d", k, p.Drops[k]))
		}
		table(w, "%s\t%s\t%d\t%s\t%d\t%s\t%s", p.Name, p.Role, p.RxFrames, size(p.RxBytes), p.TxFrames, size(p.TxBytes),
			strings.Join(drops, " "))
	}
	for _, c := range []struct {
		name string
		m    map[string]uint64
	}{{"udp", st.UDP}, {"stun", st.STUN}} {
		var kv []string
		for _, k := range sortedMapKeys(c.m) {
			if c.m[k] > 0 {
				kv = append(kv, fmt.Sprintf("%s=%d", k, c.m[k]))
			}
		}
		if len(kv) > 0 {
			table(w, "")
			table(w, "%s\t%s", c.name, strings.Join(kv, " "))
		}
	}
}

func sortedMapKeys(m map[string]uint64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func table(w io.Writer, format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }

func rtt(us int64) string {
	if us <= 0 {
		return "-"
	}
	return (time.Duration(us) * time.Microsecond).String()
}

// rate shows Mbit/s ("-": none, or unknown for a capacity).
func rate(mbps float64) string {
	switch {
	case mbps <= 0:
		return "-"
	case mbps < 10:
		return fmt.Sprintf("%.2fMb/s", mbps)
	}
	return fmt.Sprintf("%.0fMb/s", mbps)
}

func loss(f float64, state string) string {
	if state != "up" {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*f)
}

func size(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1fK", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%dB", b)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// printMatrix prints the matrix as the papers' tables: MB sent per pair,
// sources down, destinations across.
func printMatrix(w io.Writer, m infer.Matrix) {
	if len(m.Entries) == 0 {
		table(w, "no VM traffic in the last %ds", m.WindowS)
		return
	}
	var macs []string
	seen := map[string]bool{}
	cell := map[[2]string]uint64{}
	for _, e := range m.Entries {
		for _, x := range []string{e.Src, e.Dst} {
			if !seen[x] {
				seen[x] = true
				macs = append(macs, x)
			}
		}
		cell[[2]string{e.Src, e.Dst}] = e.Bytes
	}
	sort.Strings(macs)
	table(w, "MB sent over the last %ds (rows: source, columns: destination)", m.WindowS)
	head := "SRC \\ DST"
	for _, d := range macs {
		head += "\t" + d[9:] // the last three bytes tell VMs apart and keep the table narrow
	}
	table(w, "%s", head)
	for _, s := range macs {
		row := s
		for _, d := range macs {
			if b, ok := cell[[2]string{s, d}]; ok {
				row += fmt.Sprintf("\t%.2f", float64(b)/1e6)
			} else {
				row += "\t-"
			}
		}
		table(w, "%s", row)
	}
}

func printTopology(w io.Writer, t infer.Topology) {
	if len(t.Edges) == 0 {
		table(w, "no topology inferred yet (no sustained VM traffic)")
		return
	}
	arch := t.Archetype
	if arch == "" {
		arch = "unknown"
	}
	table(w, "archetype\t%s (confidence %.2f)", arch, t.Confidence)
	if t.Hub != "" {
		table(w, "hub\t%s", t.Hub)
	}
	table(w, "nodes\t%d", len(t.Nodes))
	if !t.ChangedAt.IsZero() {
		table(w, "since\t%s", t.ChangedAt.Format(time.RFC3339))
	}
	table(w, "")
	table(w, "SRC\tDST\tMB\tWEIGHT")
	for _, e := range t.Edges {
		table(w, "%s\t%s\t%.2f\t%.2f", e.Src, e.Dst, float64(e.Bytes)/1e6, e.Weight)
	}
}

// printDot prints the topology for Graphviz: `vnet ctl topology --dot | dot -Tsvg > t.svg`.
func printDot(w io.Writer, t infer.Topology) {
	fmt.Fprintf(w, "digraph vnet {\n  label=%q;\n  node [shape=box, fontname=monospace];\n", "vnet: "+t.Archetype)
	for _, n := range t.Nodes {
		fmt.Fprintf(w, "  %q;\n", n)
	}
	for _, e := range t.Edges {
		fmt.Fprintf(w, "  %q -> %q [penwidth=%.1f, label=\"%.1f MB\"];\n", e.Src, e.Dst, 0.5+5*e.Weight, float64(e.Bytes)/1e6)
	}
	fmt.Fprintln(w, "}")
}
