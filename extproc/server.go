// Package extproc is ssetrack's Envoy external processor: Envoy's ext_proc
// messages in, decisions out. One gRPC stream carries one HTTP request; the
// goroutine serving it owns all per-request state (no locks), and reaches
// shared state only through the session table and the journal.
//
// The request path reads in file order: server.go (the gRPC service, one
// exchange per stream), exchange.go (the per-request state machine),
// request.go, response.go, replay.go and body.go (its phases), rewrite.go
// (a chunk's keep, drop and insert decisions) and metrics.go.
//
// It owns the ext_proc exchange only: SSE parsing is package sse, session
// state package session. It must not import NATS or package journal:
// persistence reaches it through the Recorder and Replayer interfaces, which
// cmd/ssetrack wires.
package extproc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ssetrack/ssetrack/extproc/session"
	"github.com/ssetrack/ssetrack/extproc/sse"
)

// Defaults for Config's zero fields.
const (
	DefaultSessionHeader = "mcp-session-id"
	DefaultMaxSessionID  = 4096
	DefaultStatelessMCP  = "2026-07-28"
	// DefaultJournalTimeout is under Envoy's default ext_proc message_timeout
	// (200ms), past which Envoy gives up on the message.
	DefaultJournalTimeout = 150 * time.Millisecond

	headerReplay          = "ssetrack-replay"
	headerLastEventID     = "last-event-id"
	headerProtocolVersion = "mcp-protocol-version"
)

// Config configures a Server. The zero value (with a Sessions table) works.
type Config struct {
	// SessionHeaders are the request (and response) headers that carry the
	// session id, lower-case, first match wins. Default: mcp-session-id.
	SessionHeaders []string
	// SessionQuery, if set, names a query parameter of the request path
	// that carries the session id when no session header does (browsers'
	// EventSource cannot send headers).
	SessionQuery string
	// SessionCookie, if set, names a cookie that carries the session id
	// when neither a header nor the query does; an upstream may also assign
	// it with Set-Cookie on the first response.
	SessionCookie string
	// MaxSessionID caps a session id's length; a longer id is treated as no
	// session (the response is forwarded and observed, never deduplicated).
	MaxSessionID int
	// MaxEventSize is the largest SSE block ssetrack parses and tracks;
	// larger ones are forwarded untouched. 0: sse.DefaultMaxEventSize.
	MaxEventSize int
	// InjectLastEventID sets last-event-id on the upstream request of a GET
	// that has none, from the session's most recent stream: for upstreams
	// with a single stream per session.
	InjectLastEventID bool
	// PrincipalHeader, if set, names the request header that identifies the
	// caller (e.g. authorization). A session is bound to the first caller
	// seen on it, and replay is served to that caller only. Only a keyed
	// hash of the value is kept (in memory and in the journal).
	PrincipalHeader string
	// PrincipalKey keys that hash; replicas must share it for a binding to
	// hold across them and across restarts.
	PrincipalKey []byte
	// PeerWait is how long a resume waits before it reads the session's
	// history again, when it names a Last-Event-ID the session does not
	// hold and this process did not hold the session before the resume:
	// another replica may have delivered that event moments ago, its batch
	// still on the way to the journal (at most its batch delay). 0: no
	// wait. It is spent within JournalTimeout, at most half of it.
	PeerWait time.Duration
	// JournalTimeout bounds the journal reads made while answering one
	// header message: a session's history load (request or response
	// headers) and a replay read (response headers) share it. It must stay
	// under Envoy's message_timeout. Default DefaultJournalTimeout.
	JournalTimeout time.Duration
	// StatelessMCPVersion is the first MCP protocol version without sessions
	// or resumption; such traffic is observed only. Empty: DefaultStatelessMCP.
	StatelessMCPVersion string
	// Sessions holds the sessions; required.
	Sessions *session.Table
	// Recorder persists delivered events; nil: none are.
	Recorder Recorder
	// Replayer, if set, gives a resuming client, from the journal, the
	// events its stream delivered after its Last-Event-ID, before the
	// upstream's own; the upstream's repeats of them are then dropped. It
	// needs a Recorder: only recorded events can be replayed.
	Replayer Replayer
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger; nil discards.
	Logger *slog.Logger
}

// Recorder persists the events ssetrack delivered. Package journal
// implements it on NATS JetStream.
type Recorder interface {
	// Append hands a record to the journal. It must never block: a record
	// it cannot take is dropped and counted, and Append returns false. The
	// journal owns rec's slices after the call.
	Append(rec session.Record) bool
}

// Successor is implemented by a Recorder shared by replicas (package
// journal's): when the session's owner resumes a stream here from a
// Last-Event-ID, Takeover tells the other replicas, so that a response of
// the stream one of them still serves (the client's old connection, half
// open) stops being recorded there if it delivered that id
// (session.Table.TakenOver). Not covered: a resume from an id the session
// does not know (anchored at the upstream's first id: no notice), an id
// that has left the other replica's dedup window, and a resume that came
// right after another with no event between (its response's first event
// does not place it, see nextSince). It must never block.
type Successor interface {
	Takeover(sessionID, stream, lastEventID string)
}

// Replayer gives back a stream's stored events, so a resuming client can be
// sent what passed the gateway but never reached it. Package journal
// implements it on NATS JetStream.
type Replayer interface {
	// Replay returns the stored SSE bytes of the events of stream that
	// followed the event after, through the event through, and the ids among
	// them. It returns session.ErrHistoryMissing when after is not stored
	// and session.ErrHistoryIncomplete when through is not (yet): history
	// is never replayed in part. An empty through asks for everything
	// stored after the event after (a stream whose last id the session
	// does not know). It does network I/O, bounded by ctx.
	Replay(ctx context.Context, sessionID, stream, after, through string) (data []byte, ids []string, err error)
	// StreamOf returns the stream of the session that carried the stored
	// event id: a resume whose Last-Event-ID has left the dedup window is
	// matched to its stream this way. It returns session.ErrHistoryMissing
	// when no stored event has the id. It does network I/O, bounded by ctx.
	StreamOf(ctx context.Context, sessionID, id string) (stream string, err error)
}

// Server implements Envoy's ExternalProcessor gRPC service.
type Server struct {
	procv3.UnimplementedExternalProcessorServer

	cfg     Config
	headers map[string]int // session headers, to their priority
	metrics *metrics
	log     *slog.Logger
	warned  sync.Map    // response kinds explained in the log once (exchange.explain)
	locator locator     // the journal searches of resumes (exchange.locateStream)
	ending  atomic.Bool // EndStreams was called
}

// EndStreams makes every open SSE response that ssetrack tracks, and can
// replay to its client, end at its next body chunk. The chunk is processed
// as usual (its events recorded, so a replay has them), but the answer is
// an immediate response instead of its bytes; the response's headers are
// out, so Envoy resets the client's stream. The client reconnects with
// Last-Event-ID and ssetrack (another replica) replays what it missed. It
// is for a replica that stops while others run: without it, a stream whose
// ext_proc stream is cut goes on through Envoy without ssetrack
// (failure_mode_allow), neither deduplicated nor journaled. A stream that
// sends no chunk until then is cut all the same.
func (s *Server) EndStreams() { s.ending.Store(true) }

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Sessions == nil {
		return nil, errors.New("extproc: config has no session table")
	}
	if cfg.Replayer != nil && cfg.Recorder == nil {
		return nil, errors.New("extproc: a replayer needs a recorder")
	}
	if len(cfg.SessionHeaders) == 0 {
		cfg.SessionHeaders = []string{DefaultSessionHeader}
	}
	cfg.PrincipalHeader = strings.ToLower(strings.TrimSpace(cfg.PrincipalHeader))
	if cfg.PrincipalHeader != "" && len(cfg.PrincipalKey) == 0 {
		return nil, errors.New("extproc: a principal header needs a principal key")
	}
	for i, h := range cfg.SessionHeaders {
		cfg.SessionHeaders[i] = strings.ToLower(strings.TrimSpace(h))
	}
	if cfg.MaxSessionID <= 0 {
		cfg.MaxSessionID = DefaultMaxSessionID
	}
	if cfg.MaxEventSize <= 0 {
		cfg.MaxEventSize = sse.DefaultMaxEventSize
	}
	if cfg.JournalTimeout <= 0 {
		cfg.JournalTimeout = DefaultJournalTimeout
	}
	if cfg.StatelessMCPVersion == "" {
		cfg.StatelessMCPVersion = DefaultStatelessMCP
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:     cfg,
		headers: map[string]int{},
		log:     cfg.Logger,
		locator: locator{slots: make(chan struct{}, maxLocates)},
	}
	for i, h := range cfg.SessionHeaders {
		if _, dup := s.headers[h]; !dup {
			s.headers[h] = i
		}
	}
	s.metrics = newMetrics(cfg.Registerer, func() float64 { return float64(cfg.Sessions.Len()) })
	return s, nil
}

// Process serves one HTTP request's ext_proc stream.
func (s *Server) Process(stream procv3.ExternalProcessor_ProcessServer) error {
	x := newExchange(s, stream.Context())
	defer x.close()
	answered := time.Now() // when ssetrack last answered, or the stream began
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
				// Envoy ended the stream (not a transport error, nor ssetrack
				// ending its streams as it stops).
				if x.awaiting() && !s.ending.Load() {
					s.metrics.abandoned.Observe(time.Since(answered).Seconds())
				}
				return nil
			}
			return err
		}
		start := time.Now()
		resp, phase := x.handle(req)
		if x.before != nil {
			err, x.before = stream.Send(x.before), nil
			if err != nil {
				x.answerLost()
				s.metrics.errors.WithLabelValues("send").Inc()
				return err
			}
		}
		if resp == nil {
			continue
		}
		err = stream.Send(resp)
		answered = time.Now()
		s.metrics.answer[phase].Observe(answered.Sub(start).Seconds())
		if err != nil {
			// Mostly Envoy ended the stream first (the upstream reset, the
			// client left): the answer's events did not reach the client.
			x.answerLost()
			s.metrics.errors.WithLabelValues("send").Inc()
			return err
		}
	}
}
