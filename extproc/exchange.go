package extproc

import (
	"context"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/ssetrack/ssetrack/extproc/session"
	"github.com/ssetrack/ssetrack/extproc/sse"
)

// exchange is the state machine of one HTTP request and its response, fed
// the ext_proc messages of one gRPC stream in order. Each phase has its own
// method and file: requestHeaders (request.go), responseHeaders
// (response.go) with the replay read (replay.go), responseBody (body.go),
// and the end (close). It belongs to the goroutine serving the stream and
// has no locks; it reaches shared state only through the session table,
// the Recorder and the Replayer.
type exchange struct {
	cfg *Config // the server's, as are srv.headers and srv.log
	m   *metrics
	ctx context.Context

	started bool        // a message was handled: observe and modes are decided
	observe bool        // Envoy's observability_mode: never answer
	modes   filterModes // the filter's body modes, from protocol_config
	srv     *Server     // the state all streams share: warned, locator, ending
	// before is an answer due ahead of the one handle returns: the held
	// tail of a full-duplex body, flushed before the trailers' answer.
	before *procv3.ProcessingResponse

	// The headers of each direction come once per stream; a repeat is the
	// peer's mistake, answered without effect (requestHeaders,
	// responseHeaders).
	gotRequest, gotResponse bool

	requestInfo // from the request headers

	sess   *session.Session // set while acquired
	stream *session.Stream  // set for a tracked SSE response
	owner  bool             // the principal owns the session (may be replayed to)
	// lookupFailed: a journal search for the client's Last-Event-ID
	// (locateStream) did not finish: whether it missed anything is not
	// known.
	lookupFailed bool

	sseBody bool // the response body is SSE and streamed to us
	gotBody bool // a response body chunk arrived
	ended   bool // the response body's end_of_stream was seen
	parser  sse.Parser
	rw      rewriter
	replay  []byte     // events to send before the upstream's first event
	held    *heldState // nil until a block spans chunks
	journal recordState
	// dropCR: the last segment was a dropped duplicate ending in the CR of
	// its blank line, at the end of its chunk; an LF opening the next chunk
	// completes that CRLF and is dropped with it.
	dropCR bool
	// The last chunk's deliveries took the window positions answeredFrom
	// to answeredFrom+answeredN (Delivery.Position at their start and end;
	// none when answeredN is 0): what the answer to it carries if that
	// answer cannot be sent (answerLost). answeredN packs beside the bools.
	answeredN    uint32
	answeredFrom uint64
}

// requestInfo is what the request headers say.
type requestInfo struct {
	sessionID      string
	lastEventID    string
	hasLastEventID bool
	method         string
	stateless      bool   // MCP version without sessions: observe only
	principal      string // keyed hash of the principal header, if configured
	// conflict is set when a header the request's session or resume is
	// read from came twice with different values: the request has no
	// session, not even one its response names.
	conflict bool
}

func newExchange(s *Server, ctx context.Context) *exchange {
	return &exchange{
		cfg: &s.cfg, m: s.metrics, ctx: ctx, srv: s,
		parser: sse.Parser{MaxEventSize: s.cfg.MaxEventSize},
	}
}

// handle answers one message from Envoy; nil means no answer is due. phase
// is the message's kind, for ssetrack_message_seconds.
func (x *exchange) handle(req *procv3.ProcessingRequest) (resp *procv3.ProcessingResponse, phase int) {
	if !x.started {
		// observability_mode is filter configuration, the same on every
		// message: the first message decides for the stream. A flag that
		// flips later is ignored, so a filter waiting for answers never
		// stalls, and answers Envoy would ignore do no harm. Envoy sends
		// protocol_config on the first message only.
		x.started, x.observe = true, req.GetObservabilityMode()
		x.modes = modesOf(req.GetProtocolConfig())
	}
	phase = phaseOther
	x.answeredN = 0 // set by a body chunk's processing
	switch r := req.Request.(type) {
	case *procv3.ProcessingRequest_RequestHeaders:
		resp, phase = x.requestHeaders(r.RequestHeaders), phaseRequestHeaders
	case *procv3.ProcessingRequest_ResponseHeaders:
		resp, phase = x.responseHeaders(r.ResponseHeaders), phaseResponseHeaders
	case *procv3.ProcessingRequest_ResponseBody:
		resp, phase = x.responseBody(r.ResponseBody), phaseResponseBody
	case *procv3.ProcessingRequest_ResponseTrailers:
		resp, phase = x.responseTrailers(), phaseResponseTrailers
	case *procv3.ProcessingRequest_RequestBody:
		// Request bodies pass unchanged; in full duplex that takes echoing them.
		br := &procv3.BodyResponse{}
		if x.modes.request == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
			br.Response = streamedBody(r.RequestBody.GetBody(), r.RequestBody.GetEndOfStream())
		}
		resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestBody{RequestBody: br}}
	case *procv3.ProcessingRequest_RequestTrailers:
		resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestTrailers{RequestTrailers: &procv3.TrailersResponse{}}}
	default:
		// A message this version does not know: nothing to answer.
		return nil, phase
	}
	if x.observe {
		return nil, phase
	}
	return resp, phase
}

// responseTrailers ends the body: trailers come without an end_of_stream
// body chunk. In STREAMED a partial event still held cannot be sent from
// here (a trailers response carries no body; a browser would discard it
// anyway); in FULL_DUPLEX_STREAMED it goes out, as at end_of_stream, in a
// body answer ahead of the trailers' answer.
func (x *exchange) responseTrailers() *procv3.ProcessingResponse {
	// Envoy takes a full-duplex body answer only once a body chunk came:
	// before that it would be spurious and cut the stream.
	if x.modes.fullDuplex() && x.sseBody && x.gotBody && !x.ended && !x.observe && (x.parser.Pending() > x.heldSent() || x.replay != nil) {
		out, _ := x.process(nil, true)
		x.before = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseBody{
			ResponseBody: &procv3.BodyResponse{Response: streamedBody(out, false)},
		}}
	}
	x.abandonTail()
	x.endBody()
	return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &procv3.TrailersResponse{}}}
}

// abandonTail counts a partial event that can no longer be forwarded: the
// body ended without an end_of_stream chunk (HTTP/2 trailers; with Envoy's
// response_trailer_mode SKIP ssetrack is not even told) or the stream was
// cut. Only an incomplete event is ever held (its bytes not yet forwarded),
// which a browser discards too. One whose first bytes went out early
// (forwardHeld) is counted as cut.
func (x *exchange) abandonTail() {
	if !x.sseBody || x.ended {
		return
	}
	if x.parser.Pending() > x.heldSent() {
		x.m.errors.WithLabelValues("partial_event_unsent").Inc()
	}
	x.abandonHeld()
}

// endBody closes the response's stream state once: the journal flushes the
// stream's pending batch.
func (x *exchange) endBody() {
	if x.ended || !x.sseBody {
		return
	}
	x.ended = true
	x.m.streamsActive.Dec()
	if x.stream != nil && x.journal.recorded {
		x.record(session.Record{Session: x.sessionID, Stream: x.stream.ID(), End: true}, nil)
	}
}

// awaiting reports whether Envoy, were the stream to end now, would leave
// the response unfinished for ssetrack: its request headers were answered
// and its response headers have not come, or its SSE body streams to
// ssetrack and has not ended. Never in observability mode, where Envoy
// waits for no answer.
func (x *exchange) awaiting() bool {
	if x.observe {
		return false
	}
	return x.gotRequest && !x.gotResponse || x.sseBody && !x.ended
}

// close releases what the exchange holds; the gRPC stream is over (the
// response ended, or the client or Envoy went away).
func (x *exchange) close() {
	x.abandonTail()
	x.endBody()
	if x.sess != nil {
		x.cfg.Sessions.Release(x.sess)
		x.sess = nil
	}
}
