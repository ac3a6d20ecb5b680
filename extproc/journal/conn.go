package journal

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
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
}

// Options builds the nats.Options for c. The connection reconnects forever
// (a journal outlives NATS outages) and buffers up to 8 MiB while
// reconnecting; log, if not nil, receives connection state changes, with
// any user:password stripped from URLs.
func (c ConnConfig) Options(log *slog.Logger) ([]nats.Option, error) {
	var errs []error
	if len(c.URLs) == 0 {
		errs = append(errs, fmt.Errorf("%w: no NATS URL", ErrInvalidConfig))
	}
	if c.CredsFile != "" && c.NKeySeedFile != "" {
		errs = append(errs, fmt.Errorf("%w: credentials file and nkey seed file are mutually exclusive", ErrInvalidConfig))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, fmt.Errorf("%w: TLS certificate and key go together", ErrInvalidConfig))
	}
	name := c.Name
	if name == "" {
		name = "ssetrack"
	}
	wait := c.ReconnectWait
	if wait <= 0 {
		wait = 250 * time.Millisecond
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(wait),
		nats.ReconnectBufSize(8 << 20),
		nats.RetryOnFailedConnect(true),
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
	if log != nil {
		opts = append(opts,
			nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
				log.Warn("nats disconnected", "err", err)
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				log.Info("nats reconnected", "url", RedactURL(nc.ConnectedUrl()))
			}),
			nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
				log.Warn("nats async error", "err", err)
			}),
		)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return opts, nil
}

// Connect dials the cluster described by c; extra options are applied
// after c's.
func Connect(c ConnConfig, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := c.Options(log)
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
