package harness

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrExited is returned (wrapped) when a process exited while it was waited for.
var ErrExited = errors.New("harness: process exited")

// Process is a child process whose output is kept for the log.
type Process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	// err is set before done is closed.
	err error
	// quiet suppresses the output dump on failure (for a start attempt already logged).
	quiet bool
}

// Start starts cmd (its Stdout and Stderr are replaced) in a process group of its own, so
// that a Ctrl-C in the terminal reaches only the caller, which stops its children in order.
// The process is stopped (Stop) when tb ends, and its output logged if tb failed or
// E2E_LOGS=1.
func Start(tb TB, name string, cmd *exec.Cmd) *Process {
	tb.Helper()
	p := &Process{name: name, cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	tb.Logf("starting %s: %s", name, strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Stop()
		if (tb.Failed() || os.Getenv("E2E_LOGS") == "1") && !p.quiet {
			tb.Logf("---- %s output (exit: %v) ----\n%s\n---- end of %s output ----", name, p.err, p.Output(), name)
		}
	})
	return p
}

// Name returns the name the process was started with.
func (p *Process) Name() string { return p.name }

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err returns how the process exited (nil for status 0); valid once Done is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Signal sends sig to the process. os.Process signals through a pidfd, so a recycled PID is
// never hit.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop asks the process to exit (SIGTERM), kills it if it has not within 10 s, and returns
// how it exited.
func (p *Process) Stop() error {
	if !p.Exited() {
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	return p.err
}

// Output returns the last 256 KiB of the process's output (stdout and stderr).
func (p *Process) Output() string {
	b := p.out.Bytes()
	const max = 256 << 10
	if len(b) > max {
		return "[... " + strconv.Itoa(len(b)-max) + " bytes cut ...]\n" + string(b[len(b)-max:])
	}
	return string(b)
}

// waitHTTP polls url until ok accepts the answer; it gives up when the process exits or
// StartTimeout passes.
func (p *Process) waitHTTP(url string, ok func(code int, body []byte) bool) error {
	c := &http.Client{Timeout: 2 * time.Second}
	return poll(StartTimeout, func() error {
		var last string
		resp, err := c.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if ok(resp.StatusCode, b) {
				return nil
			}
			last = fmt.Sprintf("%s: %d %q", url, resp.StatusCode, b)
		} else {
			last = err.Error()
		}
		if p.Exited() {
			return stop(fmt.Errorf("%s: %w (%v); last answer: %s", p.name, ErrExited, p.err, last))
		}
		return fmt.Errorf("%s not ready; last answer: %s", p.name, last)
	})
}

// WaitHTTP waits until url answers 200 OK, and fails tb if the process exits first or
// StartTimeout passes.
func (p *Process) WaitHTTP(tb TB, url string) {
	tb.Helper()
	if err := p.waitHTTP(url, func(code int, _ []byte) bool { return code == http.StatusOK }); err != nil {
		tb.Fatalf("%v\n%s", err, p.Output())
	}
}

// WaitDial waits until addr accepts a TCP connection, and fails tb if the process exits
// first or StartTimeout passes.
func (p *Process) WaitDial(tb TB, addr string) {
	tb.Helper()
	err := poll(StartTimeout, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p.Exited() {
			return stop(fmt.Errorf("%s: %w (%v)", p.name, ErrExited, p.err))
		}
		return err
	})
	if err != nil {
		tb.Fatalf("%s does not accept connections on %s: %v\n%s", p.name, addr, err, p.Output())
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment ago. Another
// process may take one before it is used; the starters retry a process that exits while it
// starts.
func FreePorts(tb TB, n int) []int {
	tb.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("free port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// Addr returns 127.0.0.1:port.
func Addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// Get fetches url (10 s timeout) and returns the body; a status other than 200 is an error.
func Get(url string) ([]byte, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, nil
}
