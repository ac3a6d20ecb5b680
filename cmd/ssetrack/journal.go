package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssetrack/ssetrack/extproc/journal"
)

// journalFlags are the NATS and JetStream flags shared by serve and tail.
type journalFlags struct {
	enabled      bool
	urls         stringList
	natsListen   string
	dataDir      string
	creds        string
	nkey         string
	tlsCA        string
	tlsCert      string
	tlsKey       string
	stream       string
	subject      string
	kvBucket     string
	replicas     int
	maxAge       time.Duration
	maxBytes     int64
	maxPerSubj   int64
	dupWindow    time.Duration
	queueSize    int
	batchEvents  int
	batchBytes   int
	batchDelay   time.Duration
	publishTimeo time.Duration
}

func (j *journalFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&j.enabled, "journal", true, "persist events to NATS JetStream (false: dedup only, nothing persisted)")
	j.registerConn(fs)
	fs.StringVar(&j.natsListen, "nats-listen", "127.0.0.1:4222", "client `address` of the embedded NATS server (used when --nats-url is empty)")
	fs.StringVar(&j.dataDir, "data-dir", "ssetrack-data", "`directory` for the embedded JetStream store")
	fs.IntVar(&j.replicas, "replicas", 1, "JetStream stream and KV replicas (1..3)")
	fs.DurationVar(&j.maxAge, "max-age", 24*time.Hour, "keep events in JetStream this long (0: forever)")
	fs.Int64Var(&j.maxBytes, "max-bytes", 0, "JetStream stream size limit in `bytes` (0: none)")
	fs.Int64Var(&j.maxPerSubj, "max-msgs-per-session", 0, "batches kept per session subject (0: no limit)")
	fs.DurationVar(&j.dupWindow, "duplicate-window", 2*time.Minute, "JetStream duplicate window: retried batches inside it are stored once")
	fs.IntVar(&j.queueSize, "queue-size", 65536, "records the publisher queue holds; past it events are forwarded but not persisted (counted)")
	fs.IntVar(&j.batchEvents, "batch-events", 256, "flush a batch at this many events")
	fs.IntVar(&j.batchBytes, "batch-bytes", 64<<10, "flush a batch at this many `bytes`")
	fs.DurationVar(&j.batchDelay, "batch-delay", 20*time.Millisecond, "flush a batch this long after its first event")
	fs.DurationVar(&j.publishTimeo, "publish-timeout", 5*time.Second, "wait this long for a publish ack before retrying")
}

// registerConn adds the flags that say where NATS is and how to reach it.
func (j *journalFlags) registerConn(fs *flag.FlagSet) {
	fs.Var(&j.urls, "nats-url", "NATS `url`; repeatable or comma-separated (empty: run an embedded server)")
	fs.StringVar(&j.creds, "nats-creds", "", "NATS credentials `file`")
	fs.StringVar(&j.nkey, "nats-nkey", "", "NATS nkey seed `file`")
	fs.StringVar(&j.tlsCA, "nats-tls-ca", "", "PEM CA `file` to verify the NATS servers")
	fs.StringVar(&j.tlsCert, "nats-tls-cert", "", "PEM client certificate `file` for NATS")
	fs.StringVar(&j.tlsKey, "nats-tls-key", "", "PEM client key `file` for NATS")
	fs.StringVar(&j.stream, "stream", "SSETRACK", "JetStream stream `name`")
	fs.StringVar(&j.subject, "subject-prefix", "ssetrack.events", "subject `prefix`: a session's events go to <prefix>.<encoded session id>")
	fs.StringVar(&j.kvBucket, "kv-bucket", "ssetrack-sessions", "JetStream KV `bucket` for session state")
}

func (j *journalFlags) validate() []error {
	var errs []error
	if j.replicas < 1 || j.replicas > 3 {
		errs = append(errs, fmt.Errorf("--replicas %d: want 1..3", j.replicas))
	}
	if j.queueSize < 1 {
		errs = append(errs, fmt.Errorf("--queue-size %d: want >= 1", j.queueSize))
	}
	if j.batchEvents < 1 {
		errs = append(errs, fmt.Errorf("--batch-events %d: want >= 1", j.batchEvents))
	}
	if j.batchBytes < 1 {
		errs = append(errs, fmt.Errorf("--batch-bytes %d: want >= 1", j.batchBytes))
	}
	if j.batchDelay <= 0 {
		errs = append(errs, fmt.Errorf("--batch-delay %v: want > 0", j.batchDelay))
	}
	if j.publishTimeo <= 0 {
		errs = append(errs, fmt.Errorf("--publish-timeout %v: want > 0", j.publishTimeo))
	}
	if (j.tlsCert == "") != (j.tlsKey == "") {
		errs = append(errs, errors.New("--nats-tls-cert and --nats-tls-key go together"))
	}
	if len(j.urls.values) > 0 && j.creds != "" && j.nkey != "" {
		errs = append(errs, errors.New("--nats-creds and --nats-nkey exclude each other"))
	}
	return errs
}

// journalRuntime is the running journal and what it needs to stop. A nil
// *journalRuntime is a disabled journal: always ready, nothing to close.
type journalRuntime struct {
	journal *journal.Publisher
	readyFn func() error
	closeFn func(ctx context.Context) error
}

func (r *journalRuntime) ready() error {
	if r == nil || r.readyFn == nil {
		return nil
	}
	return r.readyFn()
}

func (r *journalRuntime) close(ctx context.Context, log *slog.Logger) {
	if r == nil || r.closeFn == nil {
		return
	}
	if err := r.closeFn(ctx); err != nil {
		log.Error("journal shutdown", "err", err)
	}
}

// connConfig returns the NATS connection settings.
func (j *journalFlags) connConfig(urls []string) journal.ConnConfig {
	return journal.ConnConfig{
		URLs:         urls,
		CredsFile:    j.creds,
		NKeySeedFile: j.nkey,
		TLSCAFile:    j.tlsCA,
		TLSCertFile:  j.tlsCert,
		TLSKeyFile:   j.tlsKey,
	}
}

// config returns the JetStream layout and publisher settings.
func (j *journalFlags) config(window int) journal.Config {
	return journal.Config{
		Stream:            j.stream,
		SubjectPrefix:     j.subject,
		Bucket:            j.kvBucket,
		Replicas:          j.replicas,
		MaxAge:            j.maxAge,
		MaxBytes:          j.maxBytes,
		MaxMsgsPerSubject: j.maxPerSubj,
		DuplicateWindow:   j.dupWindow,
		QueueSize:         j.queueSize,
		Batch: journal.BatchConfig{
			MaxEvents: j.batchEvents,
			MaxBytes:  j.batchBytes,
			MaxDelay:  j.batchDelay,
		},
		PublishTimeout: j.publishTimeo,
		HistoryEvents:  window,
	}
}

// startJournal connects to NATS (or starts the embedded server) and starts
// the publisher; nil when the journal is disabled.
func startJournal(ctx context.Context, j *journalFlags, window int, log *slog.Logger, reg prometheus.Registerer) (*journalRuntime, error) {
	if !j.enabled {
		log.Warn("journal disabled: events are deduplicated but not persisted")
		return nil, nil
	}
	urls := j.urls.values
	var embedded *journal.Server
	if len(urls) == 0 {
		dir := filepath.Join(j.dataDir, "jetstream")
		srv, err := journal.StartServer(journal.ServerConfig{Listen: j.natsListen, DataDir: dir})
		if err != nil {
			return nil, fmt.Errorf("start embedded NATS: %w", err)
		}
		embedded = srv
		urls = []string{srv.ClientURL()}
		log.Info("embedded NATS JetStream running", "url", srv.ClientURL(), "store", dir)
	}
	stopEmbedded := func(ctx context.Context) {
		if embedded != nil {
			embedded.Shutdown(ctx)
		}
	}
	// Drain is asynchronous: closed tells when it is done.
	closed := make(chan struct{})
	nc, err := journal.Connect(j.connConfig(urls), log, nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		stopEmbedded(context.Background())
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	pub, err := journal.New(ctx, nc, j.config(window), log, reg)
	if err != nil {
		nc.Close()
		stopEmbedded(context.Background())
		redacted := make([]string, len(urls))
		for i, u := range urls {
			redacted[i] = journal.RedactURL(u)
		}
		return nil, fmt.Errorf("start journal on NATS %s: %w", strings.Join(redacted, ","), err)
	}
	return &journalRuntime{
		journal: pub,
		readyFn: func() error {
			if st := nc.Status(); st != nats.CONNECTED {
				return fmt.Errorf("NATS connection %s", st)
			}
			return nil
		},
		closeFn: func(ctx context.Context) error {
			// Publisher first (flush and wait for acks), then the connection,
			// then the embedded server.
			err := pub.Shutdown(ctx)
			if derr := nc.Drain(); derr != nil && err == nil {
				err = derr
			}
			select {
			case <-closed:
			case <-ctx.Done():
			}
			stopEmbedded(ctx)
			return err
		},
	}, nil
}
