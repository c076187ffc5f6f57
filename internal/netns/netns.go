// Package netns builds throwaway network topologies for end-to-end tests:
// named network namespaces, veth pairs and bridges made with iproute2, and
// long-running processes started inside them. A Lab remembers everything it
// made and Close takes it all down again (processes first, then the
// namespaces, which takes their interfaces with them), so a failed test
// leaves nothing behind.
//
// Everything here needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and the
// ip command; it is meant for tests only.
package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Missing returns the commands among tools that are not on PATH.
func Missing(tools ...string) []string {
	var out []string
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			out = append(out, t)
		}
	}
	return out
}

// Command returns a command that runs argv inside namespace ns (through
// "ip netns exec"), or in the current namespace if ns is empty. It runs in
// its own process group, and ctx's end kills the whole group.
func Command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Run runs argv inside namespace ns ("" for the current one) and returns
// its combined output. A failure's error includes the command and output.
func Run(ctx context.Context, ns string, argv ...string) (string, error) {
	cmd := Command(ctx, ns, argv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		where := ""
		if ns != "" {
			where = " (in " + ns + ")"
		}
		return string(out), fmt.Errorf("%s%s: %w: %s", strings.Join(argv, " "), where, err,
			strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Lab owns the namespaces and processes a test made.
type Lab struct {
	prefix string

	mu    sync.Mutex
	nss   []string
	procs []*Proc
}

// New returns an empty lab whose namespaces are named prefix+short. The
// prefix must be unique among concurrently running tests (e.g. carry the
// process id).
func New(prefix string) *Lab { return &Lab{prefix: prefix} }

// Prefix is the lab's name prefix.
func (l *Lab) Prefix() string { return l.prefix }

// Name is the full name of the lab's namespace short.
func (l *Lab) Name(short string) string { return l.prefix + short }

// AddNS creates the namespace prefix+short, brings its loopback up and
// returns its full name.
func (l *Lab) AddNS(ctx context.Context, short string) (string, error) {
	name := l.Name(short)
	if _, err := Run(ctx, "", "ip", "netns", "add", name); err != nil {
		return "", err
	}
	l.mu.Lock()
	l.nss = append(l.nss, name)
	l.mu.Unlock()
	if _, err := Run(ctx, "", "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return "", err
	}
	return name, nil
}

// Veth creates a veth pair: ifA in namespace nsA and its peer ifB in nsB.
// Both ends are created directly where they belong, so no name ever exists
// in the caller's namespace. They are left down.
func (l *Lab) Veth(ctx context.Context, nsA, ifA, nsB, ifB string) error {
	_, err := Run(ctx, "", "ip", "-n", nsA, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", nsB)
	return err
}

// Proc is a long-running process the lab started.
type Proc struct {
	Name string // for messages
	Log  string // file holding its stdout and stderr

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts argv inside namespace ns with its stdout and stderr appended
// to the file logPath, and env added to the current environment. Close kills
// it if it is still running.
func (l *Lab) Start(name, ns, logPath string, env []string, argv ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// Pid is the process id (also its process group id).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Kill sends SIGKILL to the process's group and waits for it to exit.
func (p *Proc) Kill() error {
	if done, _ := p.Exited(); done {
		return nil
	}
	if err := killGroup(p.Pid()); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing %s: %w", p.Name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.Pid())
	}
}

// Signal sends sig to the process (ip netns exec has become it).
func (p *Proc) Signal(sig syscall.Signal) error {
	if err := syscall.Kill(p.Pid(), sig); err != nil {
		return fmt.Errorf("signalling %s: %w", p.Name, err)
	}
	return nil
}

// Output is what the process has logged so far.
func (p *Proc) Output() string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.Log, err)
	}
	return string(b)
}

// Procs lists every process the lab started, in order.
func (l *Lab) Procs() []*Proc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Proc(nil), l.procs...)
}

// Close kills every process the lab started, then deletes its namespaces
// (and with them every interface in them), newest first. It keeps going
// after errors and returns them all.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs, nss := l.procs, l.nss
	l.procs, l.nss = nil, nil
	l.mu.Unlock()
	var errs []error
	for _, p := range procs {
		if err := p.Kill(); err != nil {
			errs = append(errs, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := len(nss) - 1; i >= 0; i-- {
		// Processes started by others in the namespace (e.g. with Command
		// and a context that has not ended yet) would keep it alive.
		if out, err := Run(ctx, "", "ip", "netns", "pids", nss[i]); err == nil {
			for _, f := range strings.Fields(out) {
				var pid int
				if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if _, err := Run(ctx, "", "ip", "netns", "del", nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists namespaces whose name starts with prefix.
func Leftovers(ctx context.Context, prefix string) ([]string, error) {
	out, err := Run(ctx, "", "ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var left []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			left = append(left, f[0])
		}
	}
	return left, nil
}

func killGroup(pid int) error { return syscall.Kill(-pid, syscall.SIGKILL) }
