package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// SsetrackOptions configures StartSsetrack. The zero value runs `ssetrack serve` with its
// embedded NATS server and journal, logging at debug level.
type SsetrackOptions struct {
	// Name labels the process in logs; default "ssetrack".
	Name string
	// NATSURL points ssetrack at an external NATS (--nats-url); "" runs the embedded server
	// on a free port.
	NATSURL string
	// LogLevel is --log-level; default debug.
	LogLevel string
	// Args are further `ssetrack serve` flags, before those of E2E_SSETRACK_ARGS.
	Args []string
	// Bin is the ssetrack binary; default SsetrackBin.
	Bin string
}

// Ssetrack is a running `ssetrack serve`.
type Ssetrack struct {
	// Proc is the process; Restart replaces it.
	Proc *Process
	// GRPCPort is the ext_proc listener's port, on 127.0.0.1.
	GRPCPort int
	// MetricsURL is the metrics and health listener (http://127.0.0.1:port).
	MetricsURL string
	// NATSURL is the NATS server ssetrack uses: the embedded one, or SsetrackOptions.NATSURL.
	NATSURL string

	name string
	bin  string
	args []string
	tb   TB // the TB that owns the processes
}

// StartSsetrack starts the ssetrack binary (SsetrackBin) on free loopback ports with a
// temporary data directory, waits until /readyz answers 200 (NATS connected, stream and
// bucket created), and stops it when tb ends.
//
// The ports are picked free and then released, so another process may grab one in between;
// and on a busy machine a stray signal meant for another process may end ours. A process
// that exits while starting is retried twice.
func StartSsetrack(tb TB, opts SsetrackOptions) *Ssetrack {
	tb.Helper()
	bin := opts.Bin
	if bin == "" {
		bin = SsetrackBin(tb)
	}
	name := opts.Name
	if name == "" {
		name = "ssetrack"
	}
	level := opts.LogLevel
	if level == "" {
		level = "debug"
	}
	dataDir := tb.TempDir() // unused with --nats-url; keeps the working directory clean
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		ports := FreePorts(tb, 3)
		s := &Ssetrack{GRPCPort: ports[0], MetricsURL: "http://" + Addr(ports[1]), NATSURL: opts.NATSURL, name: name, bin: bin, tb: tb}
		s.args = []string{
			"serve",
			"--listen", Addr(ports[0]),
			"--metrics-listen", Addr(ports[1]),
			"--data-dir", dataDir,
			"--log-level", level,
		}
		if opts.NATSURL != "" {
			s.args = append(s.args, "--nats-url", opts.NATSURL)
		} else {
			s.args = append(s.args, "--nats-listen", Addr(ports[2]))
			s.NATSURL = "nats://" + Addr(ports[2])
		}
		s.args = append(s.args, opts.Args...)
		s.args = append(s.args, strings.Fields(os.Getenv("E2E_SSETRACK_ARGS"))...)
		p := Start(tb, name, exec.Command(bin, s.args...))
		err := p.waitHTTP(s.MetricsURL+"/readyz", isOK)
		if err == nil {
			s.Proc = p
			return s
		}
		lastErr = err
		exited := p.Exited()
		p.Stop()
		p.quiet = true
		tb.Logf("%s did not start (attempt %d): %v\n%s", name, attempt, err, p.Output())
		if !exited {
			break // not ready in time: retrying would not help
		}
	}
	tb.Fatalf("%s did not start: %v", name, lastErr)
	return nil
}

func isOK(code int, _ []byte) bool { return code == 200 }

// Metrics scrapes ssetrack's /metrics.
func (s *Ssetrack) Metrics(tb TB) Metrics {
	tb.Helper()
	return Scrape(tb, s.MetricsURL+"/metrics")
}

// Stop stops ssetrack with SIGTERM and fails tb unless it exits with status 0.
func (s *Ssetrack) Stop(tb TB) {
	tb.Helper()
	if err := s.Proc.Stop(); err != nil {
		tb.Errorf("%s did not shut down cleanly on SIGTERM: %v", s.name, err)
	}
}

// Restart stops ssetrack (as Stop) and starts it again with the same flags: the same ports
// and data directory.
func (s *Ssetrack) Restart(tb TB) {
	tb.Helper()
	s.Stop(tb)
	p := Start(s.tb, s.name+" (restarted)", exec.Command(s.bin, s.args...))
	if err := p.waitHTTP(s.MetricsURL+"/readyz", isOK); err != nil {
		tb.Fatalf("%s did not restart: %v", s.name, err)
	}
	s.Proc = p
}

// Kill kills ssetrack with SIGKILL (no shutdown: what it had not published is lost) and
// waits for it to exit.
func (s *Ssetrack) Kill() {
	if !s.Proc.Exited() {
		_ = s.Proc.Signal(syscall.SIGKILL)
	}
	<-s.Proc.Done()
}

// StartAgain starts ssetrack again after it exited (Kill, or a stop the test checked
// itself), with the same flags: the same ports and data directory. It waits until /readyz
// answers 200.
func (s *Ssetrack) StartAgain(tb TB) {
	tb.Helper()
	s.startAgain(tb, "/readyz", "")
}

// StartAgainUnready is StartAgain for a start without NATS: it waits until /healthz
// answers 200 (serving; /readyz says 503 until the journal is set up).
func (s *Ssetrack) StartAgainUnready(tb TB) {
	tb.Helper()
	s.startAgain(tb, "/healthz", ", NATS away")
}

// startAgain is StartAgain waiting for path to answer 200; note goes into the process's
// name in the logs.
func (s *Ssetrack) startAgain(tb TB, path, note string) {
	tb.Helper()
	if !s.Proc.Exited() {
		tb.Fatalf("%s: started again while it runs", s.name)
	}
	p := Start(s.tb, s.name+" (started again"+note+")", exec.Command(s.bin, s.args...))
	if err := p.waitHTTP(s.MetricsURL+path, isOK); err != nil {
		tb.Fatalf("%s did not start again: %v", s.name, err)
	}
	s.Proc = p
}

// Ready returns ssetrack's /readyz answer as "<status> <body>", or the error, for a log.
func (s *Ssetrack) Ready() string {
	b, err := Get(s.MetricsURL + "/readyz")
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("200 %q", strings.TrimSpace(string(b)))
}
