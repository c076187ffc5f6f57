// Command vnet builds an adaptive layer-2 virtual network for virtual
// machines: a proxy where the user is, a host daemon wherever VMs run, and
// links between them that carry the VMs' Ethernet frames.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"vnet/appliance"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) error
}

var commands = []command{
	{"proxy", "run the proxy: the hub of the star, where the user is", runProxy},
	{"host", "run a host daemon where VMs run; it dials the proxy", runHost},
	{"ctl", "inspect and change a running network through the control API", runCtl},
	{"demo", "run a whole network in this process, on loopback, no root", runDemo},
	{"patterns", "run the BSP benchmark workload (one rank per VM)", runPatterns},
	{"keygen", "print a new network key", runKeygen},
	{"version", "print the version", runVersion},
}

const usage = `vnet: an adaptive layer-2 virtual network for VMs.

Usage: vnet COMMAND [flags]

Commands:
%s
Run 'vnet COMMAND --help' for the flags of a command.

Quick start:
  vnet keygen > net.key
  vnet proxy --key-file net.key --listen tcp://:5000            # on your laptop
  sudo vnet host --name h1 --proxy tcp://LAPTOP:5000 --key-file net.key --tap vm0   # where VMs run
  vnet ctl hosts
`

func printUsage() {
	var b strings.Builder
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(os.Stderr, usage, b.String())
}

func main() {
	appliance.Version = versionString()
	if len(os.Args) < 2 {
		printUsage()
		os.Exit(2)
	}
	name := os.Args[1]
	reexecWithSysmonAwake(name)
	limitDaemonProcs(name)
	if name == "-h" || name == "--help" || name == "help" {
		printUsage()
		return
	}
	for _, c := range commands {
		if c.name != name {
			continue
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := c.run(ctx, os.Args[2:])
		stop()
		switch {
		case err == nil:
		case errors.Is(err, pflag.ErrHelp):
		default:
			fmt.Fprintf(os.Stderr, "vnet %s: %v\n", name, err)
			if errors.Is(err, errUsage) {
				os.Exit(2)
			}
			os.Exit(1)
		}
		return
	}
	fmt.Fprintf(os.Stderr, "vnet: unknown command %q\n\n", name)
	printUsage()
	os.Exit(2)
}

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

// newFlags returns a flag set whose --help prints the synopsis, the
// description and the flags.
func newFlags(name, synopsis, description string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("vnet "+name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: vnet %s %s\n\n%s\n\nFlags:\n%s", name, synopsis, strings.TrimSpace(description),
			fs.FlagUsages())
	}
	return fs
}

// parse parses args; a usage error mentions --help.
func parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageErr("%v (see --help)", err)
	}
	return nil
}

// logLevel is the level of the command's logger; a reload may change it.
var logLevel slog.LevelVar

// logFlags adds --log-level and returns a constructor for the logger.
func logFlags(fs *pflag.FlagSet) func() (*slog.Logger, error) {
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	return func() (*slog.Logger, error) {
		var l slog.Level
		if err := l.UnmarshalText([]byte(*level)); err != nil {
			return nil, usageErr("--log-level %q: want debug, info, warn or error", *level)
		}
		logLevel.Set(l)
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: &logLevel})), nil
	}
}

func versionString() string {
	v := version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	return v
}

func runVersion(ctx context.Context, args []string) error {
	fs := newFlags("version", "[--modules]", "Print vnet's version, the commit and the Go version it was built with, and\n"+
		"with --modules the version of every module in the binary.")
	modules := fs.Bool("modules", true, "also list the modules built in, with their versions")
	if err := parse(fs, args); err != nil {
		return err
	}
	printVersion(os.Stdout, *modules)
	return nil
}

// printVersion writes what `vnet version` says: the version, the commit
// (from the build's VCS stamp: go build in a git checkout), Go and the
// target, and the modules.
func printVersion(w io.Writer, modules bool) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintf(w, "vnet %s (no build information)\n", versionString())
		return
	}
	commit, when, dirty := "unknown", "", ""
	goos, goarch := runtime.GOOS, runtime.GOARCH
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			commit = s.Value
		case "vcs.time":
			when = " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = " (modified)"
			}
		}
	}
	fmt.Fprintf(w, "vnet %s, wire protocol 1\n", versionString())
	fmt.Fprintf(w, "commit %s%s%s\n", commit, when, dirty)
	fmt.Fprintf(w, "built with %s for %s/%s\n", bi.GoVersion, goos, goarch)
	if modules {
		for _, m := range bi.Deps {
			if m.Replace != nil {
				m = m.Replace
			}
			fmt.Fprintf(w, "  %s %s\n", m.Path, m.Version)
		}
	}
}
