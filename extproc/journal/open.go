package journal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// Options configures Open. Its zero value (plus Server.DataDir) runs an
// embedded server on DefaultServerListen with the defaults of Config.
type Options struct {
	// Conn says where NATS is. With no URLs, Open starts an embedded
	// nats-server (Server) and connects to it.
	Conn ConnConfig
	// Server configures the embedded nats-server; used only when
	// Conn.URLs is empty, and then Server.DataDir is required.
	Server ServerConfig
	// Config is the JetStream layout and the publisher's settings.
	Config Config
	// Logger receives the journal's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the journal's metrics; nil leaves them
	// unregistered.
	Registerer prometheus.Registerer
}

// embedded reports whether o asks for the embedded server.
func (o Options) embedded() bool { return len(o.Conn.URLs) == 0 }

// Validate reports every invalid field of o at once (errors.Join of
// *FieldError, each wrapping ErrInvalidConfig). Zero fields take their
// defaults first, so a zero Config field is never an error. Open calls it;
// callers may call it earlier to report problems with their own.
func (o Options) Validate() error {
	errs := []error{o.Config.withDefaults().validate(), o.Conn.validate(o.embedded())}
	if o.embedded() {
		errs = append(errs, o.Server.validate())
	}
	return errors.Join(errs...)
}

// setupRetry is how long the setup goroutine waits before it tries again
// to create the stream and the bucket on a connection that is up but whose
// JetStream refused (a cluster still electing its meta leader, say).
// Reconnects are nats.go's business (ConnConfig.Options); this is not one.
const setupRetry = time.Second

// startupSetup bounds the setup Open makes before it returns: a cluster
// slow to answer (two replicas creating the stream at once on a fresh
// cluster took 10 s) starts the process degraded, its listeners open,
// while the setup goroutine goes on trying.
const startupSetup = 2 * time.Second

// Journal is a running journal: a NATS connection (to the cluster in
// Options.Conn, or to an embedded server it started) and the Publisher
// on it. It implements session.Loader and extproc's Recorder and Replayer.
//
// A Journal starts degraded when NATS is not there yet: Open returns at
// once, Append queues records (bounded by Config.QueueSize, like the
// Publisher's queue, and counted as queue_full losses past it), Load,
// Stale and Replay fail with ErrNotReady, and Ready says why. When the
// connection comes up (nats.go keeps dialling, RetryOnFailedConnect), the
// stream and the bucket are set up, the Publisher starts and takes the
// queued records in order.
//
// Methods are safe for concurrent use.
type Journal struct {
	opts Options
	log  *slog.Logger
	m    *metrics
	srv  *Server // embedded, or nil
	nc   *nats.Conn

	pub atomic.Pointer[Publisher] // nil until the first setup succeeds

	mu      sync.Mutex // guards backlog, backlogBytes, setupErr, dialErr, shut
	backlog []queued   // Append's records before pub exists
	// backlogBytes is the backlog's records' Data bytes.
	backlogBytes int64
	setupErr     error // the last failed setup
	dialErr      error // the last failed connect attempt
	shut         bool

	lastDropLog, dropsToLog atomic.Int64

	up         chan struct{}      // a connect or reconnect happened (cap 1)
	cancel     context.CancelFunc // stops the setup goroutine
	setupDone  chan struct{}      // closed when the setup goroutine returns
	connClosed chan struct{}      // closed by nats when the connection is closed
}

var _ session.Loader = (*Journal)(nil)

// Open validates o, starts the embedded server when o has no URLs, connects
// and, if NATS answers, sets up the stream and the bucket (bounded by ctx).
// When NATS does not answer, or JetStream refuses the setup, Open still
// returns a Journal: it runs degraded (see Journal) and Ready reports the
// reason. Open fails on invalid options and when the embedded server
// cannot start.
func Open(ctx context.Context, o Options) (*Journal, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.Config = o.Config.withDefaults()
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	j := &Journal{
		opts:       o,
		log:        log,
		m:          newMetrics(o.Registerer),
		up:         make(chan struct{}, 1),
		setupDone:  make(chan struct{}),
		connClosed: make(chan struct{}),
	}
	conn := o.Conn
	if o.embedded() {
		sc := o.Server
		if sc.Logger == nil {
			sc.Logger = log
		}
		srv, err := StartServer(sc)
		if err != nil {
			return nil, fmt.Errorf("start embedded NATS: %w", err)
		}
		j.srv = srv
		conn.URLs = []string{srv.ClientURL()}
		log.Info("embedded NATS JetStream running", "url", srv.ClientURL(), "store", sc.DataDir)
	}
	nc, err := dial(conn, log, connHooks{
		up: func() {
			j.mu.Lock()
			j.dialErr = nil
			j.mu.Unlock()
			j.kick()
		},
		dialErr: func(err error) {
			j.mu.Lock()
			j.dialErr = err
			j.mu.Unlock()
		},
		closed: func() { close(j.connClosed) },
	}, j.inProcess()...)
	if err != nil {
		j.stopServer(context.Background())
		return nil, err
	}
	j.nc = nc

	if nc.IsConnected() {
		sctx, cancel := context.WithTimeout(ctx, startupSetup)
		j.trySetup(sctx)
		cancel()
	}
	sctx, cancel := context.WithCancel(context.Background())
	j.cancel = cancel
	if j.pub.Load() != nil {
		close(j.setupDone)
		return j, nil
	}
	if err := j.Ready(); err != nil {
		log.Warn("journal starting degraded: events are deduplicated in memory and queued until NATS is ready",
			"reason", err, "queue_size", o.Config.QueueSize, "urls", redactAll(conn.URLs))
	}
	go j.runSetup(sctx)
	return j, nil
}

// kick tells the setup goroutine that the connection is up.
func (j *Journal) kick() {
	select {
	case j.up <- struct{}{}:
	default:
	}
}

// runSetup is the setup goroutine: it sets up the stream and the bucket
// when the connection comes up, then returns.
func (j *Journal) runSetup(ctx context.Context) {
	defer close(j.setupDone)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-j.up:
		case <-retry.C:
		}
		if !j.nc.IsConnected() {
			continue // the next (re)connect kicks again
		}
		if j.trySetup(ctx) {
			return
		}
		retry.Reset(setupRetry)
	}
}

// trySetup creates the stream and the bucket and starts the Publisher; it
// reports whether that worked.
func (j *Journal) trySetup(ctx context.Context) bool {
	sctx, cancel := context.WithTimeout(ctx, 2*j.opts.Config.PublishTimeout)
	defer cancel()
	p, err := startPublisher(sctx, j.nc, j.opts.Config, j.log, j.m)
	if err != nil {
		j.mu.Lock()
		j.setupErr = err
		j.mu.Unlock()
		j.log.Warn("journal setup failed", "err", err)
		return false
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.shut {
		// Shutdown cancelled ctx after the setup finished: nothing to hand.
		_ = p.Shutdown(context.Background())
		return true
	}
	// The backlog fits: it holds at most QueueSize records and QueueBytes,
	// and p holds none.
	j.m.depth.Sub(float64(len(j.backlog)))
	p.handOver(j.backlog)
	if n := len(j.backlog); n > 0 {
		j.log.Info("journal ready: publishing the records queued while NATS was away", "records", n)
	} else {
		j.log.Info("journal ready", "stream", j.opts.Config.Stream, "bucket", j.opts.Config.Bucket)
	}
	j.backlog, j.backlogBytes, j.setupErr = nil, 0, nil
	j.pub.Store(p)
	return true
}

// Append implements extproc.Recorder. Before the Publisher exists it queues
// rec (bounded by Config.QueueSize and Config.QueueBytes); afterwards it is
// Publisher.Append.
func (j *Journal) Append(rec session.Record) bool {
	if p := j.pub.Load(); p != nil {
		return p.Append(rec)
	}
	j.mu.Lock()
	if p := j.pub.Load(); p != nil { // set up meanwhile; the backlog is in p
		j.mu.Unlock()
		return p.Append(rec)
	}
	defer j.mu.Unlock()
	if j.shut {
		j.m.drop(dropClosed, 1)
		return false
	}
	size := int64(len(rec.Data))
	if len(j.backlog) >= j.opts.Config.QueueSize || size > 0 && j.backlogBytes+size > j.opts.Config.QueueBytes {
		j.m.drop(dropQueueFull, 1)
		logDrop(j.log, &j.lastDropLog, &j.dropsToLog, rec.Session, j.opts.Config)
		return false
	}
	j.backlogBytes += size
	j.backlog = append(j.backlog, queued{rec: rec, at: time.Now()})
	j.m.depth.Inc()
	return true
}

// Load implements session.Loader; it fails with ErrNotReady until the
// stream and the bucket are set up.
func (j *Journal) Load(ctx context.Context, sessionID string) (*session.History, error) {
	p, err := j.publisher()
	if err != nil {
		return nil, err
	}
	return p.Load(ctx, sessionID)
}

// LoadLast implements session.LastLoader through the Publisher (see
// Publisher.LoadLast); before NATS is ready it fails as Load does.
func (j *Journal) LoadLast(ctx context.Context, sessionID string) (*session.History, error) {
	p, err := j.publisher()
	if err != nil {
		return nil, err
	}
	return p.LoadLast(ctx, sessionID)
}

// Stale implements session.Loader; it fails with ErrNotReady until the
// stream and the bucket are set up.
func (j *Journal) Stale(ctx context.Context, sessionID string, seq uint64) (bool, error) {
	p, err := j.publisher()
	if err != nil {
		return false, err
	}
	return p.Stale(ctx, sessionID, seq)
}

// Replay implements extproc.Replayer; it fails with ErrNotReady until the
// stream and the bucket are set up.
func (j *Journal) Replay(ctx context.Context, sessionID, stream, after, through string) ([]byte, []string, error) {
	p, err := j.publisher()
	if err != nil {
		return nil, nil, err
	}
	return p.Replay(ctx, sessionID, stream, after, through)
}

// StreamOf implements extproc.Replayer through the Publisher (see
// Publisher.StreamOf); before NATS is ready it fails as Replay does.
func (j *Journal) StreamOf(ctx context.Context, sessionID, id string) (string, error) {
	p, err := j.publisher()
	if err != nil {
		return "", err
	}
	return p.StreamOf(ctx, sessionID, id)
}

// Takeover implements extproc.Successor through the Publisher (see
// Publisher.Takeover); before NATS is ready the notice is dropped.
func (j *Journal) Takeover(sessionID, stream, lastEventID string) {
	if p := j.pub.Load(); p != nil {
		p.Takeover(sessionID, stream, lastEventID)
	}
}

func (j *Journal) publisher() (*Publisher, error) {
	if p := j.pub.Load(); p != nil {
		return p, nil
	}
	return nil, j.Ready()
}

// Ready returns nil when the journal can publish: connected, stream and
// bucket set up, and the stream has a leader (it asks JetStream, bounded by
// readyTimeout). Otherwise it returns ErrNotReady wrapped with the reason,
// e.g. "journal: not ready: NATS connection RECONNECTING: dial tcp
// 127.0.0.1:4222: connect: connection refused".
func (j *Journal) Ready() error {
	j.mu.Lock()
	shut, setupErr, dialErr := j.shut, j.setupErr, j.dialErr
	j.mu.Unlock()
	switch st := j.nc.Status(); {
	case shut:
		return fmt.Errorf("%w: shutting down", ErrNotReady)
	case st != nats.CONNECTED && dialErr != nil:
		return fmt.Errorf("%w: NATS connection %s: %v", ErrNotReady, st, dialErr)
	case st != nats.CONNECTED && j.nc.LastError() != nil:
		// A server that answered and refused (credentials, TLS): nats.go
		// reports no failed attempt then, but keeps the error.
		return fmt.Errorf("%w: NATS connection %s: %v", ErrNotReady, st, j.nc.LastError())
	case st != nats.CONNECTED:
		return fmt.Errorf("%w: NATS connection %s", ErrNotReady, st)
	case j.pub.Load() != nil:
		return j.streamReady()
	case setupErr != nil:
		return fmt.Errorf("%w: %v", ErrNotReady, setupErr)
	}
	return fmt.Errorf("%w: setting up the JetStream stream and bucket", ErrNotReady)
}

// readyTimeout bounds the stream-info request of one readiness check, well
// under a probe's usual timeout (Kubernetes: 1s).
const readyTimeout = 500 * time.Millisecond

// streamReady asks JetStream for the stream's state. A connection to some
// server is not enough to publish: in a cluster the stream also needs a
// leader, and while one is elected (a few seconds after the leader's node
// is lost) nothing is acknowledged. One stream-info request per call.
func (j *Journal) streamReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	info, err := j.pub.Load().stream.Info(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("%w: JetStream stream info: %v", ErrNotReady, err)
	case info.Cluster != nil && info.Cluster.Leader == "":
		return fmt.Errorf("%w: JetStream stream %s has no leader", ErrNotReady, info.Config.Name)
	}
	return nil
}

// Shutdown flushes the Publisher (bounded by ctx, see Publisher.Shutdown),
// drains the NATS connection and stops the embedded server, in that order.
// Records still queued because NATS never became ready are counted as
// lost (reason shutdown). A second call returns ErrClosed.
func (j *Journal) Shutdown(ctx context.Context) error {
	j.mu.Lock()
	if j.shut {
		j.mu.Unlock()
		return ErrClosed
	}
	j.shut = true
	j.mu.Unlock()
	j.cancel()
	<-j.setupDone

	var errs []error
	if p := j.pub.Load(); p != nil {
		errs = append(errs, p.Shutdown(ctx))
	} else {
		j.mu.Lock()
		if n := len(j.backlog); n > 0 {
			j.m.drop(dropShutdown, n)
			j.m.depth.Sub(float64(n))
			j.log.Error("journal never became ready, queued records lost", "records", n)
		}
		j.backlog = nil
		j.mu.Unlock()
	}
	if err := j.nc.Drain(); err != nil {
		// Drain refuses a connection that is not connected: close it.
		j.nc.Close()
	}
	select {
	case <-j.connClosed:
	case <-ctx.Done():
		j.nc.Close()
		errs = append(errs, fmt.Errorf("drain NATS connection: %w", ctx.Err()))
	}
	errs = append(errs, j.stopServer(ctx))
	return errors.Join(errs...)
}

func (j *Journal) stopServer(ctx context.Context) error {
	if j.srv == nil {
		return nil
	}
	return j.srv.Shutdown(ctx)
}

// ServerURL is the embedded server's client URL, or "" when the journal
// uses a remote cluster.
func (j *Journal) ServerURL() string {
	if j.srv == nil {
		return ""
	}
	return j.srv.ClientURL()
}

func redactAll(urls []string) string {
	r := make([]string, len(urls))
	for i, u := range urls {
		r[i] = RedactURL(u)
	}
	return strings.Join(r, ",")
}

// inProcess connects to the embedded server in memory, without a TCP socket
// (nats.InProcessServer): batches skip two kernel copies and the syscalls.
// The server still listens on its client port for other programs. About 5%
// less CPU per event under a 64-stream drive, 4 interleaved runs each.
func (j *Journal) inProcess() []nats.Option {
	if j.srv == nil {
		return nil
	}
	return []nats.Option{j.srv.InProcess()}
}
