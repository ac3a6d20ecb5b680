package journal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServerConfig configures the embedded nats-server.
type ServerConfig struct {
	// Listen is the client listener, host:port. Default "127.0.0.1:4222";
	// port 0 picks a free port (see Server.ClientURL).
	Listen string
	// DataDir holds the JetStream file store. Required.
	DataDir string
	// Name is the server name. Default "ssetrack-embedded".
	Name string
	// MaxMemory and MaxStore bound JetStream memory and file storage;
	// zero lets the server choose.
	MaxMemory, MaxStore int64
	// ReadyTimeout bounds the wait for the server to accept clients.
	// Default 10s.
	ReadyTimeout time.Duration
	// Logger receives the server's errors (its notices are dropped); nil
	// discards them.
	Logger *slog.Logger
	// ProfBlockRate is nats-server's option of that name: as it starts, the
	// server sets the whole process's block profile rate to it
	// (runtime.SetBlockProfileRate, nanoseconds blocked per sample), so the
	// default 0 turns block profiling off for the process.
	ProfBlockRate int
}

// DefaultServerListen is the embedded server's default client address.
const DefaultServerListen = "127.0.0.1:4222"

// validate checks c, each problem a *FieldError under "Server.".
func (c ServerConfig) validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, &FieldError{Field: "Server.DataDir", Value: "", Rule: "want a directory for the JetStream store"})
	}
	if c.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, &FieldError{Field: "Server.Listen", Value: c.Listen, Rule: "want host:port"})
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			errs = append(errs, &FieldError{Field: "Server.Listen", Value: c.Listen, Rule: "want a port in 0..65535"})
		}
	}
	return errors.Join(errs...)
}

// embeddedMaxPayload is the embedded server's message size limit.
const embeddedMaxPayload = 8 << 20

// Server is an in-process nats-server with JetStream.
type Server struct {
	ns *server.Server
}

// StartServer starts an embedded nats-server and waits until it accepts
// connections. It fails at once, with the server's own reason, when the
// server cannot start (listen address in use, JetStream store unusable).
func StartServer(cfg ServerConfig) (*Server, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultServerListen
	}
	if cfg.Name == "" {
		cfg.Name = "ssetrack-embedded"
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	host, portStr, _ := net.SplitHostPort(cfg.Listen)
	port, _ := strconv.Atoi(portStr)
	if port == 0 {
		port = server.RANDOM_PORT // nats-server reads 0 as "default 4222"
	}
	opts := &server.Options{
		ServerName:         cfg.Name,
		Host:               host,
		Port:               port,
		JetStream:          true,
		StoreDir:           cfg.DataDir,
		JetStreamMaxMemory: cfg.MaxMemory,
		JetStreamMaxStore:  cfg.MaxStore,
		// A batch carries at least one whole event, up to ssetrack's
		// --max-event-size (1 MiB by default) plus headers: the server's
		// 1 MB default could refuse it.
		MaxPayload:    embeddedMaxPayload,
		NoLog:         true,
		NoSigs:        true,
		ProfBlockRate: cfg.ProfBlockRate,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	// nats-server reports a failed start only through its logger (Fatalf)
	// and keeps waiting otherwise: catch it so StartServer fails at once.
	sl := &serverLog{log: cfg.Logger, fatal: make(chan string, 1)}
	if sl.log == nil {
		sl.log = slog.New(slog.DiscardHandler)
	}
	ns.SetLogger(sl, false, false)
	go ns.Start()
	deadline := time.Now().Add(cfg.ReadyTimeout)
	for !ns.ReadyForConnections(20 * time.Millisecond) {
		select {
		case msg := <-sl.fatal:
			ns.Shutdown()
			return nil, fmt.Errorf("embedded nats-server: %s", msg)
		default:
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return nil, ErrServerNotReady
		}
	}
	return &Server{ns: ns}, nil
}

// serverLog is the embedded server's logger: errors go to log, the first
// fatal error to fatal.
type serverLog struct {
	log   *slog.Logger
	fatal chan string
}

func (l *serverLog) Noticef(string, ...any) {}
func (l *serverLog) Debugf(string, ...any)  {}
func (l *serverLog) Tracef(string, ...any)  {}
func (l *serverLog) Warnf(format string, v ...any) {
	l.log.Warn("embedded nats-server: " + fmt.Sprintf(format, v...))
}
func (l *serverLog) Errorf(format string, v ...any) {
	l.log.Error("embedded nats-server: " + fmt.Sprintf(format, v...))
}
func (l *serverLog) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error("embedded nats-server: " + msg)
	select {
	case l.fatal <- msg:
	default:
	}
}

// InProcess is the nats.Connect option that connects to the server in
// memory (nats.InProcessServer), without its TCP listener.
func (s *Server) InProcess() nats.Option { return nats.InProcessServer(s.ns) }

// ClientURL is the URL clients connect to, with the real port.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Addr is the client listener's address, with the real port.
func (s *Server) Addr() string {
	if a := s.ns.Addr(); a != nil {
		return a.String()
	}
	return ""
}

// Shutdown stops the server and waits for it, bounded by ctx. Drain and
// close client connections (the Publisher's first) before calling it.
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("embedded nats-server shutdown: %w", ctx.Err())
	}
}
