package journal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
)

// ConnConfig says how to reach a NATS cluster. Secrets are referred to by
// file path only, so the struct can be logged.
type ConnConfig struct {
	// URLs lists one or several servers of the cluster, e.g.
	// "nats://n1:4222". At least one is required.
	URLs []string
	// Name is the client connection name shown by the server. Default
	// "ssetrack".
	Name string
	// CredsFile is a JWT user credentials file (nats.UserCredentials).
	CredsFile string
	// NKeySeedFile is an nkey seed file (nats.NkeyOptionFromSeed).
	NKeySeedFile string
	// TLSCAFile is a PEM bundle of CAs that verify the servers.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the client certificate and key for
	// mutual TLS; both or neither.
	TLSCertFile, TLSKeyFile string
	// ReconnectWait is the pause between reconnect attempts. Default 250ms.
	ReconnectWait time.Duration
	// PingInterval is how often the client pings its server; after two
	// unanswered pings it counts the server as gone and moves to another
	// one. It is what notices a server that stopped answering without
	// closing the connection (frozen, or cut off by a partition), which
	// nats.go's default of 2 minutes would leave in place for 4 to 6
	// minutes, with every publish and read timing out. Default 5s.
	PingInterval time.Duration
}

// DefaultPingInterval is ConnConfig.PingInterval's default.
const DefaultPingInterval = 5 * time.Second

// validate checks c, each problem a *FieldError under "Conn.". The
// embedded server needs no URL and takes no credentials, so only the TLS
// pair is checked for it.
func (c ConnConfig) validate(embedded bool) error {
	var errs []error
	if !embedded && len(c.URLs) == 0 {
		errs = append(errs, &FieldError{Field: "Conn.URLs", Value: "", Rule: "want at least one NATS URL"})
	}
	for _, u := range c.URLs {
		// nats.go reads a URL without a scheme as nats://.
		s := u
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		if p, err := url.Parse(s); err != nil || p.Host == "" {
			errs = append(errs, &FieldError{Field: "Conn.URLs", Value: RedactURL(u), Rule: "not a NATS URL (want nats://host:port)"})
		}
	}
	if !embedded && c.CredsFile != "" && c.NKeySeedFile != "" {
		errs = append(errs, &FieldError{Field: "Conn.CredsFile", Value: c.CredsFile, Rule: "excludes", Other: "Conn.NKeySeedFile"})
	}
	if c.TLSCertFile != "" && c.TLSKeyFile == "" {
		errs = append(errs, &FieldError{Field: "Conn.TLSCertFile", Value: c.TLSCertFile, Rule: "needs", Other: "Conn.TLSKeyFile"})
	}
	if c.TLSKeyFile != "" && c.TLSCertFile == "" {
		errs = append(errs, &FieldError{Field: "Conn.TLSKeyFile", Value: c.TLSKeyFile, Rule: "needs", Other: "Conn.TLSCertFile"})
	}
	return errors.Join(errs...)
}

// connHooks are the connection events a Journal follows.
type connHooks struct {
	up      func()          // connected, first time or again
	dialErr func(err error) // a (re)connect attempt failed
	closed  func()          // the connection is closed for good
}

// Options builds the nats.Options for c. The connection reconnects forever
// (a journal outlives NATS outages), keeps retrying when the first connect
// fails (nats.RetryOnFailedConnect) and when the server refuses its
// credentials (nats.IgnoreAuthErrorAbort: nats.go otherwise closes the
// connection for good at the second refusal, and a journal would stay off
// after the operator fixed the server's accounts), buffers up to 8 MiB while
// reconnecting, and leaves a server that stops answering pings
// (PingInterval); log, if not nil, receives connection state changes, with
// any user:password stripped from URLs: a failed connect attempt at warn
// level when its error differs from the last one logged or 30 s have
// passed (debug otherwise), a refused credential at error level.
func (c ConnConfig) Options(log *slog.Logger) ([]nats.Option, error) {
	return c.options(log, connHooks{})
}

func (c ConnConfig) options(log *slog.Logger, hooks connHooks) ([]nats.Option, error) {
	var errs []error
	if err := c.validate(false); err != nil {
		errs = append(errs, err)
	}
	name := c.Name
	if name == "" {
		name = "ssetrack"
	}
	wait := c.ReconnectWait
	if wait <= 0 {
		wait = 250 * time.Millisecond
	}
	ping := c.PingInterval
	if ping <= 0 {
		ping = DefaultPingInterval
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.PingInterval(ping),
		nats.MaxPingsOutstanding(2),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(wait),
		nats.ReconnectBufSize(8 << 20),
		nats.RetryOnFailedConnect(true),
		nats.IgnoreAuthErrorAbort(),
	}
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(c.NKeySeedFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("nkey seed file: %w", err))
		} else {
			opts = append(opts, o)
		}
	}
	if c.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(c.TLSCAFile))
	}
	if c.TLSCertFile != "" && c.TLSKeyFile != "" {
		opts = append(opts, nats.ClientCert(c.TLSCertFile, c.TLSKeyFile))
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dialLog := &repeatLog{every: 30 * time.Second}
	up := func(nc *nats.Conn, what string) {
		log.Info(what, "url", RedactURL(nc.ConnectedUrl()))
		if hooks.up != nil {
			hooks.up()
		}
	}
	opts = append(opts,
		nats.ConnectHandler(func(nc *nats.Conn) { up(nc, "nats connected") }),
		nats.ReconnectHandler(func(nc *nats.Conn) { up(nc, "nats reconnected") }),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			// (nats.go reports here a connect that failed before the
			// server answered; a refused credential comes to ErrorHandler.)
			if dialLog.note(err) {
				log.Warn("nats connect attempt failed; retrying", "err", err)
			} else {
				log.Debug("nats connect attempt failed", "err", err)
			}
			if hooks.dialErr != nil {
				hooks.dialErr(err)
			}
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			if authError(err) {
				log.Error("nats refused the credentials; retrying", "err", err)
				return
			}
			log.Warn("nats async error", "err", err)
		}),
	)
	if hooks.closed != nil {
		opts = append(opts, nats.ClosedHandler(func(*nats.Conn) { hooks.closed() }))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return opts, nil
}

// authError reports whether err is the server refusing the connection's
// credentials.
func authError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked)
}

// repeatLog decides which of a run of repeated errors to log at a higher
// level: one whose text differs from the last logged, or the first after
// every.
type repeatLog struct {
	every time.Duration
	mu    sync.Mutex
	last  string
	at    time.Time
}

// note reports whether err should be logged at the higher level, and if so
// remembers it.
func (r *repeatLog) note(err error) bool { return r.noteMsg(err.Error()) }

// noteMsg is note for an error's text.
func (r *repeatLog) noteMsg(msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if msg == r.last && time.Since(r.at) < r.every {
		return false
	}
	r.last, r.at = msg, time.Now()
	return true
}

// Connect dials the cluster described by c; extra options are applied
// after c's. When no server answers, it returns a connection that keeps
// trying in the background (see Options).
func Connect(c ConnConfig, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	return dial(c, log, connHooks{}, extra...)
}

func dial(c ConnConfig, log *slog.Logger, hooks connHooks, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := c.options(log, hooks)
	if err != nil {
		return nil, err
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(strings.Join(c.URLs, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("connect nats: %w", err)
	}
	return nc, nil
}

// OpenReader connects to the cluster c describes and returns a reader of
// the stream cfg names (default history.DefaultStream) and a func that
// closes the connection. Unlike a Journal it fails at once when no server
// answers or the stream does not exist.
func OpenReader(ctx context.Context, c ConnConfig, cfg Config) (*history.Reader, func(), error) {
	cfg = cfg.withDefaults()
	nc, err := Connect(c, nil, nats.RetryOnFailedConnect(false))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream context: %w", err)
	}
	stream, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("open stream %s: %w", cfg.Stream, err)
	}
	return history.NewReader(stream, cfg.SubjectPrefix, history.WithDirectBatches(js)), nc.Close, nil
}

// RedactURL returns u without its user information, for logs.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.User == nil {
		if err != nil {
			return "(unparsable url)"
		}
		return u
	}
	p.User = nil
	return p.String()
}
