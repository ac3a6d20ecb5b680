package journal

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
}

// embeddedMaxPayload is the embedded server's message size limit.
const embeddedMaxPayload = 8 << 20

// Server is an in-process nats-server with JetStream.
type Server struct {
	ns *server.Server
}

// StartServer starts an embedded nats-server and waits until it accepts
// connections. Its own logging is off; ssetrack logs what matters.
func StartServer(cfg ServerConfig) (*Server, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:4222"
	}
	if cfg.Name == "" {
		cfg.Name = "ssetrack-embedded"
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: embedded server needs a data dir", ErrInvalidConfig)
	}
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: listen address %q: %v", ErrInvalidConfig, cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("%w: listen port %q", ErrInvalidConfig, portStr)
	}
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
		MaxPayload: embeddedMaxPayload,
		NoLog:      true,
		NoSigs:     true,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(cfg.ReadyTimeout) {
		ns.Shutdown()
		return nil, ErrServerNotReady
	}
	return &Server{ns: ns}, nil
}

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
