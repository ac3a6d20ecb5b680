package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/ssetrack/ssetrack/extproc"
	"github.com/ssetrack/ssetrack/extproc/journal"
	"github.com/ssetrack/ssetrack/extproc/session"
	"github.com/ssetrack/ssetrack/extproc/sse"
)

// serveConfig is everything `ssetrack serve` is told.
type serveConfig struct {
	listen         string
	metricsListen  string
	sessionHeaders stringList
	sessionQuery   string
	sessionCookie  string
	dedupWindow    int
	sessionTTL     time.Duration
	maxSessions    int
	maxEventSize   int
	maxSessionID   int
	injectLastID   bool
	replay         bool
	principalHdr   string
	principalKey   string
	journalTimeout time.Duration
	logLevel       string
	logFormat      string
	tlsCert        string
	tlsKey         string
	tlsClientCA    string
	pprof          bool
	pprofSync      bool
	shutdown       time.Duration
	drainDelay     time.Duration
	gcHeadroom     int64
	journal        journalFlags
}

func serveFlags(stderr io.Writer) (*flag.FlagSet, *serveConfig) {
	c := &serveConfig{sessionHeaders: stringList{values: []string{extproc.DefaultSessionHeader}}}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:9001", "`address` of the ext_proc gRPC listener (also serves gRPC health)")
	fs.StringVar(&c.metricsListen, "metrics-listen", "127.0.0.1:9090", "`address` of the HTTP listener for /metrics, /healthz, /readyz (empty: off)")
	fs.Var(&c.sessionHeaders, "session-header", "request/response `header` carrying the session id; repeatable or comma-separated, first match wins")
	fs.StringVar(&c.sessionQuery, "session-query", "", "query `parameter` carrying the session id when no session header does (for browsers' EventSource)")
	fs.StringVar(&c.sessionCookie, "session-cookie", "", "`cookie` carrying the session id when neither a header nor the query does; may be set by the upstream")
	fs.IntVar(&c.dedupWindow, "dedup-window", session.DefaultWindow, "delivered event ids remembered per session for dedup (1..32768)")
	fs.DurationVar(&c.sessionTTL, "session-ttl", session.DefaultTTL, "evict a session from memory after this long without an open stream")
	fs.IntVar(&c.maxSessions, "max-sessions", session.DefaultMaxSessions, "sessions held in memory at most; the least recently used go first")
	fs.IntVar(&c.maxEventSize, "max-event-size", sse.DefaultMaxEventSize, "largest SSE event in `bytes` that is parsed and tracked; larger ones pass through untouched")
	fs.IntVar(&c.maxSessionID, "max-session-id", extproc.DefaultMaxSessionID, "longest session id in `bytes`; a longer one is treated as no session")
	fs.BoolVar(&c.injectLastID, "inject-last-event-id", false, "on a GET without Last-Event-ID, send the session's last event id upstream (single-stream SSE APIs)")
	fs.BoolVar(&c.replay, "replay", true, "on a resume whose Last-Event-ID is behind what the stream delivered, send the missed events from JetStream first (all or none; see the ssetrack-replay response header)")
	fs.StringVar(&c.principalHdr, "principal-header", "", "request `header` naming the caller (e.g. authorization): a session is bound to its first caller and replay is served to that caller only (only a keyed hash is kept)")
	fs.StringVar(&c.principalKey, "principal-key-file", "", "`file` with the secret key for --principal-header hashes; replicas must share it (empty: a random key per process, so bindings do not survive a restart: replay is then denied)")
	fs.DurationVar(&c.journalTimeout, "journal-timeout", extproc.DefaultJournalTimeout, "bound on the JetStream reads (a session's history, a replay) made while answering one Envoy header message; keep it under Envoy's message_timeout")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log `format`: text or json")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM certificate `file` for the gRPC listener (enables TLS)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key `file` for --tls-cert")
	fs.StringVar(&c.tlsClientCA, "tls-client-ca", "", "PEM CA `file`: require and verify client certificates (mTLS)")
	fs.BoolVar(&c.pprof, "pprof", false, "serve /debug/pprof/ on the metrics listener")
	fs.BoolVar(&c.pprofSync, "pprof-sync", false, "with --pprof, also record where goroutines wait on locks and block (/debug/pprof/mutex: 1 contended lock in 10; /debug/pprof/block: one sample per 10 µs blocked); costs CPU on every contended lock and every block")
	fs.DurationVar(&c.shutdown, "shutdown-timeout", 15*time.Second, "on SIGTERM, how long open streams and the journal get to finish")
	fs.DurationVar(&c.drainDelay, "drain-delay", 0, "on SIGTERM, keep taking new streams this long first, with /readyz and gRPC health saying not serving, so load balancers move new streams to other replicas; then end the SSE streams still open at their next chunk, so their clients resume (with replay) on another replica")
	fs.Int64Var(&c.gcHeadroom, "gc-headroom", DefaultGCHeadroom, "`bytes` the Go heap may grow past its live size before a garbage collection, at least (GOGC = max(100, 100*headroom/live)); 0, or GOGC in the environment, leaves the runtime's own setting")
	c.journal.register(fs)
	fs.Usage = flagUsage(fs, stderr, "ssetrack serve [flags]")
	return fs, c
}

// validate reports every invalid value at once.
func (c *serveConfig) validate() error {
	var errs []error
	if c.listen == "" {
		errs = append(errs, errors.New("--listen must not be empty"))
	}
	if c.dedupWindow < 1 || c.dedupWindow > 1<<15 {
		errs = append(errs, fmt.Errorf("--dedup-window %d: want 1..32768", c.dedupWindow))
	}
	if c.sessionTTL <= 0 {
		errs = append(errs, fmt.Errorf("--session-ttl %v: want > 0", c.sessionTTL))
	}
	if c.maxSessions < 1 {
		errs = append(errs, fmt.Errorf("--max-sessions %d: want >= 1", c.maxSessions))
	}
	if c.maxEventSize < 64 {
		errs = append(errs, fmt.Errorf("--max-event-size %d: want >= 64", c.maxEventSize))
	}
	if c.maxSessionID < 1 {
		errs = append(errs, fmt.Errorf("--max-session-id %d: want >= 1", c.maxSessionID))
	}
	if c.pprofSync && !c.pprof {
		errs = append(errs, errors.New("--pprof-sync needs --pprof"))
	}
	if c.principalKey != "" && c.principalHdr == "" {
		errs = append(errs, errors.New("--principal-key-file needs --principal-header"))
	}
	if _, _, err := net.SplitHostPort(c.listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: want host:port", c.listen))
	}
	if _, _, err := net.SplitHostPort(c.metricsListen); c.metricsListen != "" && err != nil {
		errs = append(errs, fmt.Errorf("--metrics-listen %q: want host:port, or empty for none", c.metricsListen))
	}
	if c.journalTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--journal-timeout %v: want > 0", c.journalTimeout))
	}
	if len(c.sessionHeaders.values) == 0 {
		errs = append(errs, errors.New("--session-header: at least one header"))
	}
	for _, h := range c.sessionHeaders.values {
		if strings.ContainsAny(h, " :\t") {
			errs = append(errs, fmt.Errorf("--session-header %q: not a header name", h))
		}
	}
	if _, err := parseLevel(c.logLevel); err != nil {
		errs = append(errs, err)
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format %q: want text or json", c.logFormat))
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if c.tlsClientCA != "" && c.tlsCert == "" {
		errs = append(errs, errors.New("--tls-client-ca needs --tls-cert and --tls-key"))
	}
	if c.shutdown <= 0 {
		errs = append(errs, fmt.Errorf("--shutdown-timeout %v: want > 0", c.shutdown))
	}
	if c.gcHeadroom < 0 {
		errs = append(errs, fmt.Errorf("--gc-headroom %d: want >= 0", c.gcHeadroom))
	}
	if c.drainDelay < 0 {
		errs = append(errs, fmt.Errorf("--drain-delay %v: want >= 0", c.drainDelay))
	}
	errs = append(errs, c.journal.validate(c.dedupWindow)...)
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	l, _ := parseLevel(level)
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs, c := serveFlags(stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: invalid configuration:\n%w", errUsage, err)
	}
	log := newLogger(stderr, c.logLevel, c.logFormat)
	if c.gcHeadroom > 0 && os.Getenv("GOGC") == "" {
		defer startGCTuner(gcHeadroom(uint64(c.gcHeadroom)))()
	}
	if c.pprofSync {
		runtime.SetMutexProfileFraction(pprofMutexFraction)
		runtime.SetBlockProfileRate(int(pprofBlockRate))
		defer func() {
			runtime.SetMutexProfileFraction(0)
			runtime.SetBlockProfileRate(0)
		}()
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// undo releases, newest first, what was started before a failure; a
	// clean shutdown runs its own ordered sequence instead.
	var undo []func()
	fail := func(err error) error {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return err
	}
	// One journal in three roles: the session table's loader, the
	// processor's recorder and (with --replay) its replayer. A disabled
	// journal leaves them nil interfaces: off.
	var (
		jr       *journal.Journal
		loader   session.Loader
		recorder extproc.Recorder
		replayer extproc.Replayer
	)
	var draining atomic.Bool
	ready := func() error { return nil }
	// The table needs the journal as its loader, and the journal tells the
	// table of the events it loses: they meet through this pointer, set
	// before any record can reach the journal.
	var tableRef atomic.Pointer[session.Table]
	if c.journal.enabled {
		opts := c.journal.options(c.dedupWindow, log, reg)
		if c.pprofSync {
			// The embedded server sets the process's block profile rate as it starts.
			opts.Server.ProfBlockRate = int(pprofBlockRate)
		}
		opts.Config.Lost = func(sessionID, stream string) {
			if t := tableRef.Load(); t != nil {
				t.Lost(sessionID, stream)
			}
		}
		opts.Config.TakenOver = func(sessionID, stream, lastEventID string) bool {
			t := tableRef.Load()
			return t != nil && t.TakenOver(sessionID, stream, lastEventID)
		}
		var err error
		jr, err = journal.Open(ctx, opts)
		if err != nil {
			return fmt.Errorf("start journal: %w", err)
		}
		undo = append(undo, func() {
			if err := jr.Shutdown(context.Background()); err != nil {
				log.Error("journal shutdown", "err", err)
			}
		})
		loader, recorder, ready = jr, jr, jr.Ready
		if c.replay {
			replayer = jr
		}
	} else {
		log.Warn("journal disabled: events are deduplicated but not persisted")
	}

	principalKey, err := loadPrincipalKey(c, log)
	if err != nil {
		return fail(err)
	}
	table := session.NewTable(session.Config{
		Window:      c.dedupWindow,
		TTL:         c.sessionTTL,
		MaxSessions: c.maxSessions,
		Loader:      loader,
		Logger:      log,
	})
	tableRef.Store(table)
	undo = append(undo, table.Close)
	srv, err := extproc.New(extproc.Config{
		SessionHeaders:    c.sessionHeaders.values,
		SessionQuery:      c.sessionQuery,
		SessionCookie:     c.sessionCookie,
		MaxSessionID:      c.maxSessionID,
		MaxEventSize:      c.maxEventSize,
		InjectLastEventID: c.injectLastID,
		PrincipalHeader:   c.principalHdr,
		PrincipalKey:      principalKey,
		JournalTimeout:    c.journalTimeout,
		PeerWait:          peerWait(c),
		Sessions:          table,
		Recorder:          recorder,
		Replayer:          replayer,
		Registerer:        reg,
		Logger:            log,
	})
	if err != nil {
		return fail(err)
	}

	grpcSrv, err := newGRPCServer(c)
	if err != nil {
		return fail(err)
	}
	procv3.RegisterExternalProcessorServer(grpcSrv, srv)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(grpcSrv, hs)

	lis, err := listen("tcp", c.listen)
	if err != nil {
		return fail(fmt.Errorf("listen %s: %w", c.listen, err))
	}
	undo = append(undo, func() { lis.Close() })
	// fatal receives the error of a listener that stopped on its own.
	fatal := make(chan error, 2)
	var metricsSrv *http.Server
	if c.metricsListen != "" {
		mlis, err := listen("tcp", c.metricsListen)
		if err != nil {
			return fail(fmt.Errorf("listen %s: %w", c.metricsListen, err))
		}
		readyOrDraining := func() error {
			if draining.Load() {
				return errors.New("shutting down")
			}
			return ready()
		}
		metricsSrv = &http.Server{Handler: opsHandler(reg, readyOrDraining, c.pprof), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.Serve(mlis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fatal <- fmt.Errorf("metrics listener: %w", err)
			}
		}()
		log.Info("metrics listening", "addr", mlis.Addr().String())
	}

	go func() {
		if err := grpcSrv.Serve(lis); err != nil {
			fatal <- fmt.Errorf("grpc server: %w", err)
		}
	}()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(procv3.ExternalProcessor_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	log.Info("ext_proc listening", "addr", lis.Addr().String(), "tls", c.tlsCert != "", "journal", jr != nil,
		"session_headers", c.sessionHeaders.values, "version", version)

	// A listener that stops on its own is fatal: shut down as on SIGTERM,
	// then return its error (main exits non-zero).
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-fatal:
		log.Error("stopping on a fatal error", "err", failed)
	}

	// Shutdown order: say not ready and keep serving for the drain delay,
	// stop taking streams and let open ones finish (bounded), then the
	// journal flushes what the streams handed it and drains NATS.
	draining.Store(true)
	if c.drainDelay > 0 && failed == nil {
		hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
		hs.SetServingStatus(procv3.ExternalProcessor_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
		log.Info("draining: taking new streams while not ready", "delay", c.drainDelay)
		select {
		case <-time.After(c.drainDelay):
		case failed = <-fatal:
			log.Error("stopping on a fatal error", "err", failed)
		}
		// Other replicas take over: the streams still open end at their
		// next chunk, and their clients resume there (EndStreams).
		srv.EndStreams()
	}
	log.Info("shutting down", "timeout", c.shutdown)
	hs.Shutdown()
	deadline := time.Now().Add(c.shutdown)
	stopped := make(chan struct{})
	go func() { grpcSrv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(c.shutdown / 2):
		// SSE streams rarely end on their own: cut them. Envoy fails open
		// (failure_mode_allow) and the client keeps its stream.
		grpcSrv.Stop()
		<-stopped
	}
	table.Close()
	dctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if jr != nil {
		if err := jr.Shutdown(dctx); err != nil {
			log.Error("journal shutdown", "err", err)
		}
	}
	if metricsSrv != nil {
		metricsSrv.Shutdown(dctx)
	}
	log.Info("stopped")
	return failed
}

// listen opens the gRPC and metrics listeners; tests replace it to make a
// listener fail.
var listen = net.Listen

// loadPrincipalKey reads the key that hashes principals, or makes a random
// one (with a warning) when --principal-header has no key file.
func loadPrincipalKey(c *serveConfig, log *slog.Logger) ([]byte, error) {
	if c.principalHdr == "" {
		return nil, nil
	}
	if c.principalKey == "" {
		log.Warn("--principal-header without --principal-key-file: a random key is used; session bindings do not survive a restart or span replicas, and replay is denied for sessions bound elsewhere")
		key := make([]byte, 32)
		_, err := rand.Read(key)
		return key, err
	}
	key, err := os.ReadFile(c.principalKey)
	if err != nil {
		return nil, fmt.Errorf("read principal key: %w", err)
	}
	if key = bytes.TrimSpace(key); len(key) < 16 {
		return nil, fmt.Errorf("principal key %s: want at least 16 bytes", c.principalKey)
	}
	return key, nil
}

// peerWait is how long a resume that names an id unknown to a session this
// process just loaded waits for another replica's batch: a batch waits up
// to --batch-delay before it is published, and a publish takes a round
// trip (extproc.Config.PeerWait). Without a replaying journal there is
// nothing to wait for.
func peerWait(c *serveConfig) time.Duration {
	if !c.journal.enabled || !c.replay {
		return 0
	}
	d := c.journal.opts.Config.Batch.MaxDelay
	if d <= 0 {
		d = journal.DefaultBatchDelay
	}
	return d + 10*time.Millisecond
}

// grpcBuffers holds gRPC's buffers: the frames it reads, the messages it
// assembles from them and decodes, the answers it encodes. They are sized to
// Envoy's body chunks and not zeroed (see extproc.BufferPool). The server
// takes it as an option; grpc-go's proto codec only from the process-wide
// default pool, which SetDefaultBufferPool replaces, in an init function.
var grpcBuffers = new(extproc.BufferPool)

func init() {
	experimental.SetDefaultBufferPool(grpcBuffers)
}

func newGRPCServer(c *serveConfig) (*grpc.Server, error) {
	opts := []grpc.ServerOption{
		// Envoy keeps one connection and multiplexes every request on it.
		grpc.MaxConcurrentStreams(1 << 20),
		// A body chunk is as large as Envoy's buffers allow; a 4 MiB cap
		// (grpc-go's default) could reject one and break the stream.
		grpc.MaxRecvMsgSize(64 << 20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		experimental.BufferPool(grpcBuffers),
	}
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("load TLS key pair: %w", err)
		}
		tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if c.tlsClientCA != "" {
			pem, err := os.ReadFile(c.tlsClientCA)
			if err != nil {
				return nil, fmt.Errorf("read client CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("client CA %s: no certificates", c.tlsClientCA)
			}
			tc.ClientCAs = pool
			tc.ClientAuth = tls.RequireAndVerifyClientCert
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	return grpc.NewServer(opts...), nil
}

// --pprof-sync's sampling: runtime.SetMutexProfileFraction records one contended lock in
// pprofMutexFraction, runtime.SetBlockProfileRate a blocking event with probability
// (time blocked / pprofBlockRate), so about one sample per pprofBlockRate blocked.
const (
	pprofMutexFraction = 10
	pprofBlockRate     = 10 * time.Microsecond
)

// opsHandler serves metrics, liveness, readiness and optionally pprof.
// /readyz answers 503 with ready's error while it returns one.
func opsHandler(reg *prometheus.Registry, ready func() error, withPprof bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
