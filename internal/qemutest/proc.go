//go:build linux

package qemutest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Proc is a long-running child process whose stdout and stderr go to a
// log file. It is killed (SIGKILL) if the test process dies first.
type Proc struct {
	Name string
	Log  string
	Argv []string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts argv with its output appended to logPath.
func Start(name, logPath string, argv ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, Argv: argv, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
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

// Signal sends sig to the process (not its group) and waits up to d for
// it to exit; it returns the exit error (nil for status 0).
func (p *Proc) Signal(sig syscall.Signal, d time.Duration) error {
	if done, err := p.Exited(); done {
		return err
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling %s: %w", p.Name, err)
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		return fmt.Errorf("%s (pid %d) did not exit within %v of %v", p.Name, p.Pid(), d, sig)
	}
}

// Kill sends SIGKILL to the process's group and waits for it to exit.
func (p *Proc) Kill() error {
	if done, _ := p.Exited(); done {
		return nil
	}
	if err := syscall.Kill(-p.Pid(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing %s: %w", p.Name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.Pid())
	}
}

// Output is what the process has written so far.
func (p *Proc) Output() string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.Log, err)
	}
	return string(b)
}

// Tail is the last n lines of Output.
func (p *Proc) Tail(n int) string {
	return Tail(p.Output(), n)
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string { return HeadTail(s, 0, n) }

// HeadTail returns the first head and the last tail lines of s, with a
// note of how many lines were left out between them.
func HeadTail(s string, head, tail int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) <= head+tail {
		return strings.Join(lines, "\n")
	}
	out := append([]string(nil), lines[:head]...)
	out = append(out, fmt.Sprintf("[... %d lines omitted]", len(lines)-head-tail))
	out = append(out, lines[len(lines)-tail:]...)
	return strings.Join(out, "\n")
}
