package extproc

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/ssetrack/ssetrack/extproc/session"
	"github.com/ssetrack/ssetrack/extproc/sse"
)

// exchange is the state of one HTTP request and its response. It belongs to
// the goroutine serving the request's ext_proc stream.
type exchange struct {
	srv *Server
	ctx context.Context

	observe bool // Envoy's observability_mode: never answer

	// From the request headers.
	sessionID      string
	lastEventID    string
	hasLastEventID bool
	method         string
	stateless      bool   // MCP version without sessions: observe only
	principal      string // keyed hash of the principal header, if configured
	owner          bool   // the principal owns the session (may be replayed to)

	sess   *session.Session // set while acquired
	stream *session.Stream  // set for a tracked SSE response

	sseBody  bool // the response body is SSE and streamed to us
	ended    bool // the response body's end_of_stream was seen
	parser   sse.Parser
	out      []byte // reused replacement buffer
	recorded bool   // a journal record was sent for the stream
	replay   []byte // events to send before the upstream's first event
	// recLastID is the last id among the events of the chunk's journal
	// record (reused buffer).
	recLastID []byte
	// crEnd: the last segment was a recorded event ending in the CR of a
	// blank line, at the end of its chunk. lfOwed: the LF completing that
	// CRLF came in a later chunk and was forwarded but not yet journaled;
	// it opens the stream's next record, so the journal keeps the bytes as
	// received.
	crEnd, lfOwed bool
}

func newExchange(s *Server, ctx context.Context) *exchange {
	return &exchange{srv: s, ctx: ctx, parser: sse.Parser{MaxEventSize: s.cfg.MaxEventSize}}
}

// handle answers one message from Envoy; nil means no answer is due.
func (x *exchange) handle(req *procv3.ProcessingRequest) *procv3.ProcessingResponse {
	if req.GetObservabilityMode() {
		x.observe = true
	}
	var resp *procv3.ProcessingResponse
	switch r := req.Request.(type) {
	case *procv3.ProcessingRequest_RequestHeaders:
		resp = x.requestHeaders(r.RequestHeaders)
	case *procv3.ProcessingRequest_ResponseHeaders:
		resp = x.responseHeaders(r.ResponseHeaders)
	case *procv3.ProcessingRequest_ResponseBody:
		resp = x.responseBody(r.ResponseBody)
	case *procv3.ProcessingRequest_RequestBody:
		resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestBody{RequestBody: &procv3.BodyResponse{}}}
	case *procv3.ProcessingRequest_RequestTrailers:
		resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestTrailers{RequestTrailers: &procv3.TrailersResponse{}}}
	case *procv3.ProcessingRequest_ResponseTrailers:
		// Trailers end the body without an end_of_stream chunk. A partial
		// event still held cannot be sent from here (a trailers response
		// carries no body); a browser would discard it anyway.
		x.abandonTail()
		x.endBody()
		resp = &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &procv3.TrailersResponse{}}}
	default:
		// A message this version does not know: nothing to answer.
		return nil
	}
	if x.observe {
		return nil
	}
	return resp
}

func (x *exchange) requestHeaders(h *procv3.HttpHeaders) *procv3.ProcessingResponse {
	cfg := &x.srv.cfg
	var path string
	var cookies []string
	best := len(cfg.SessionHeaders) // index of the session header used
	for _, hv := range h.GetHeaders().GetHeaders() {
		key := hv.GetKey()
		switch {
		case key == headerLastEventID:
			x.lastEventID, x.hasLastEventID = headerValue(hv), true
		case key == headerProtocolVersion:
			if v := headerValue(hv); v >= cfg.StatelessMCPVersion {
				x.stateless = true
			}
		case key == ":method":
			x.method = headerValue(hv)
		case key == ":path":
			path = headerValue(hv)
		case key == "cookie":
			cookies = append(cookies, headerValue(hv))
		case key == cfg.PrincipalHeader && key != "":
			x.principal = principalHash(cfg.PrincipalKey, headerValue(hv))
		default:
			if i, ok := x.srv.headers[key]; ok && i < best {
				best, x.sessionID = i, headerValue(hv)
			}
		}
	}
	if x.sessionID == "" {
		x.sessionID = x.fallbackSessionID(path, cookies)
	}
	x.sessionID = x.validSessionID(x.sessionID)
	hr := &procv3.HeadersResponse{}
	resp := &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestHeaders{RequestHeaders: hr}}
	if cfg.InjectLastEventID && !x.hasLastEventID && x.sessionID != "" && !x.stateless && x.method == "GET" {
		if id := x.latestLastID(); id != "" {
			hr.Response = &procv3.CommonResponse{HeaderMutation: &procv3.HeaderMutation{
				SetHeaders: []*corev3.HeaderValueOption{{
					Header:       &corev3.HeaderValue{Key: headerLastEventID, RawValue: []byte(id)},
					AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
				}},
			}}
			x.lastEventID, x.hasLastEventID = id, true
		}
	}
	return resp
}

// latestLastID acquires the session early and returns the last event id of
// its most recent stream.
func (x *exchange) latestLastID() string {
	ctx, cancel := context.WithTimeout(x.ctx, headerBudget)
	defer cancel()
	if err := x.acquire(ctx, true); err != nil {
		return ""
	}
	return x.sess.LatestLastID()
}

// fallbackSessionID finds a session id for requests without a session
// header, as browsers' EventSource sends them: in the query parameter
// Config.SessionQuery, then in the cookie Config.SessionCookie.
func (x *exchange) fallbackSessionID(path string, cookies []string) string {
	cfg := &x.srv.cfg
	if cfg.SessionQuery != "" {
		if _, query, ok := strings.Cut(path, "?"); ok {
			if v, err := url.ParseQuery(query); err == nil && v.Get(cfg.SessionQuery) != "" {
				return v.Get(cfg.SessionQuery)
			}
		}
	}
	if cfg.SessionCookie != "" {
		for _, line := range cookies {
			cs, err := http.ParseCookie(line)
			if err != nil {
				continue // a malformed cookie header names no session
			}
			for _, c := range cs {
				if c.Name == cfg.SessionCookie && c.Value != "" {
					return c.Value
				}
			}
		}
	}
	return ""
}

// validSessionID returns id if it can name a session, or "" (no session:
// observed and forwarded, never deduplicated) for an id that is too long.
func (x *exchange) validSessionID(id string) string {
	if len(id) > x.srv.cfg.MaxSessionID {
		x.srv.metrics.errors.WithLabelValues("session_id_too_long").Inc()
		return ""
	}
	return id
}

func (x *exchange) acquire(ctx context.Context, load bool) error {
	if x.sess != nil {
		return nil
	}
	s, err := x.srv.cfg.Sessions.Acquire(ctx, x.sessionID, load)
	if err != nil {
		x.srv.metrics.errors.WithLabelValues("session_acquire").Inc()
		return err
	}
	x.sess = s
	return nil
}

func (x *exchange) responseHeaders(h *procv3.HttpHeaders) *procv3.ProcessingResponse {
	var contentType, encoding, status, respSession string
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch key := hv.GetKey(); {
		case key == "content-type":
			contentType = headerValue(hv)
		case key == "content-encoding":
			encoding = headerValue(hv)
		case key == ":status":
			status = headerValue(hv)
		case key == "set-cookie" && respSession == "" && x.srv.cfg.SessionCookie != "":
			if c, err := http.ParseSetCookie(headerValue(hv)); err == nil && c.Name == x.srv.cfg.SessionCookie {
				respSession = c.Value
			}
		case respSession == "":
			if _, ok := x.srv.headers[key]; ok {
				respSession = headerValue(hv)
			}
		}
	}
	hr := &procv3.HeadersResponse{}
	resp := &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: hr}}
	m := x.srv.metrics

	kind := kindSSE
	switch {
	case !isEventStream(contentType):
		kind = kindPassthrough
	case encoding != "" && !strings.EqualFold(encoding, "identity"):
		kind = kindEncoded // compressed SSE: forwarded untouched, counted
	case len(status) != 3 || status[0] != '2':
		kind = kindError
	}
	m.responses.WithLabelValues(kind).Inc()
	if kind != kindSSE || h.GetEndOfStream() {
		// Body not needed: with a static STREAMED config, turn it off.
		resp.ModeOverride = responseBodyMode(filterv3.ProcessingMode_NONE)
		return resp
	}

	x.sseBody = true
	m.streamsActive.Inc()
	if x.sessionID == "" && respSession != "" {
		// An MCP server assigns the session on its initialize response.
		x.sessionID = x.validSessionID(respSession)
	}
	mut := &procv3.HeaderMutation{
		// Envoy streams the body in chunks we may resize: a length would lie.
		RemoveHeaders: []string{"content-length"},
	}
	if x.sessionID != "" && !x.stateless {
		// A history load and a replay read may both happen here, on one
		// Envoy message: together they get one budget, under Envoy's
		// default message_timeout, so Envoy never gives up on the stream.
		ctx, cancel := context.WithTimeout(x.ctx, headerBudget)
		x.openStream(ctx)
		result := x.prepareReplay(ctx)
		cancel()
		if result != "" {
			mut.SetHeaders = append(mut.SetHeaders, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: headerReplay, RawValue: []byte(result)},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			})
		}
	}
	hr.Response = &procv3.CommonResponse{HeaderMutation: mut}
	resp.ModeOverride = responseBodyMode(filterv3.ProcessingMode_STREAMED)
	return resp
}

// responseBodyMode is the mode_override that sets the response body mode.
// Envoy applies an override whole, so every field is written out; trailers
// stay SKIP as in the recommended config.
func responseBodyMode(m filterv3.ProcessingMode_BodySendMode) *filterv3.ProcessingMode {
	return &filterv3.ProcessingMode{
		RequestHeaderMode:  filterv3.ProcessingMode_SEND,
		ResponseHeaderMode: filterv3.ProcessingMode_SEND,
		RequestBodyMode:    filterv3.ProcessingMode_NONE,
		ResponseBodyMode:   m,
	}
}

// openStream binds the response to its session's stream.
func (x *exchange) openStream(ctx context.Context) {
	// A session named by the request may have history elsewhere (another
	// replica, a previous process); one named first by this response is new.
	load := x.sess == nil
	if err := x.acquire(ctx, load); err != nil {
		return // forwarded untracked
	}
	x.stream = x.sess.OpenStream(session.Resume{LastEventID: x.lastEventID, HasLastEventID: x.hasLastEventID})
	x.owner = x.sess.Bind(x.principal)
	m := x.srv.metrics
	switch {
	case !x.hasLastEventID:
		if x.stream.Resumed() {
			m.resumes.WithLabelValues("without_header").Inc()
		}
	case x.stream.Resumed():
		m.resumes.WithLabelValues("matched").Inc()
	default:
		m.resumes.WithLabelValues("unknown").Inc()
	}
}

// Replay results, in the ssetrack-replay response header and the
// ssetrack_replays_total metric.
const (
	replayDone       = "replayed"   // missed events are sent before the upstream's
	replayMissing    = "missing"    // the client's Last-Event-ID is not in the journal
	replayIncomplete = "incomplete" // the journal lacks some missed events: none sent
	replayFailed     = "error"      // the journal read failed or timed out: none sent
	replayDenied     = "denied"     // the caller is not the session's principal
)

// prepareReplay reads from the journal the events the resuming client
// missed on its stream and marks them delivered to this response, so the
// upstream's repeats are dropped; process sends them before the upstream's
// first event. History is replayed whole or not at all: the result (for the
// response header) tells the client which, "" when nothing was missed.
func (x *exchange) prepareReplay(ctx context.Context) string {
	rp, ok := x.srv.cfg.Journal.(session.Replayer)
	if !x.srv.cfg.Replay || !ok || x.stream == nil || x.observe {
		return ""
	}
	after, through, missed := x.stream.Missed()
	if !missed {
		return ""
	}
	if !x.owner {
		x.srv.metrics.replays.WithLabelValues(replayDenied).Inc()
		return replayDenied
	}
	ctx, cancel := context.WithTimeout(ctx, x.srv.cfg.ReplayTimeout)
	defer cancel()
	data, ids, err := rp.Replay(ctx, x.sessionID, x.stream.ID(), after, through)
	result := replayDone
	switch {
	case errors.Is(err, session.ErrHistoryMissing):
		result = replayMissing
	case errors.Is(err, session.ErrHistoryIncomplete):
		result = replayIncomplete
	case err != nil:
		result = replayFailed
		x.srv.log.Warn("replay", "session", session.ShortID(x.sessionID), "err", err)
	default:
		x.stream.Lock()
		for _, id := range ids {
			x.stream.Replayed([]byte(id))
		}
		x.stream.Unlock()
		x.replay = data
	}
	x.srv.metrics.replays.WithLabelValues(result).Inc()
	return result
}

func (x *exchange) responseBody(b *procv3.HttpBody) *procv3.ProcessingResponse {
	br := &procv3.BodyResponse{}
	resp := &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
	if !x.sseBody || x.ended {
		// Not ours to touch, or after end_of_stream: answer, change nothing.
		return resp
	}
	if out, changed := x.process(b.GetBody(), b.GetEndOfStream()); changed && !x.observe {
		x.srv.metrics.chunksRewritten.Inc()
		br.Response = &procv3.CommonResponse{BodyMutation: &procv3.BodyMutation{
			Mutation: &procv3.BodyMutation_Body{Body: out},
		}}
	}
	if b.GetEndOfStream() {
		x.endBody()
	}
	return resp
}

// process parses one chunk and returns what to forward in its place:
// complete events that the client does not have yet and everything that is
// not an event, byte for byte; an incomplete trailing event is held for the
// next chunk, and at end of stream whatever is held is forwarded unchanged.
// changed is false when out is body itself.
func (x *exchange) process(body []byte, eos bool) (out []byte, changed bool) {
	m := x.srv.metrics
	m.chunks.Inc()
	m.bytesSeen.Add(float64(len(body)))

	carried := x.parser.Pending() > 0
	x.parser.Feed(body)
	// Until something is dropped or held, the forwarded bytes are a prefix
	// of body and need no copy: kept counts them. Once dirty, they are
	// assembled in x.out.
	dirty := carried
	kept := 0
	if dirty {
		x.out = x.out[:0]
	}
	// sendReplay puts the missed events (prepareReplay) into the output at
	// the current point; from then on the output is assembled in x.out.
	sendReplay := func() {
		if !dirty {
			dirty = true
			x.out = append(x.out[:0], body[:kept]...)
		}
		x.out = append(x.out, x.replay...)
		x.replay = nil
	}
	if x.replay != nil && !carried && len(body) > 0 && body[0] != 0xEF {
		// Nothing forwarded yet and no BOM can start the stream: the missed
		// events go first.
		sendReplay()
	}
	var seen, forwarded, deduped, oversize int
	var rec session.Record // the chunk's delivered events, for the journal
	locked := false
	st := x.stream
	tracked := !x.observe

	for {
		seg, ok := x.parser.Next()
		if !ok {
			break
		}
		if x.replay != nil && seg.Kind != sse.KindBOM {
			sendReplay() // after the stream's BOM, before its first block
		}
		drop := false
		crEnd := x.crEnd
		x.crEnd = false
		switch seg.Kind {
		case sse.KindComment:
			// Never an event: forwarded at once (heartbeats must not wait).
			x.lfOwed = x.lfOwed || crEnd && seg.Raw[0] == '\n'
		case sse.KindBlock:
			if !seg.HasData && !seg.HasID {
				break // comments, retry, blank lines: forwarded as they are
			}
			seen++
			if st == nil {
				forwarded++
				break
			}
			if !locked {
				st.Lock()
				locked = true
			}
			var id []byte
			if seg.HasID {
				id = seg.ID
			}
			seq, dup := st.Deliver(id)
			if dup {
				// Never persisted twice; dropped unless Envoy only lets us
				// observe.
				deduped++
				drop = tracked
				if !drop {
					forwarded++
				}
				break
			}
			forwarded++
			if x.srv.cfg.Journal != nil {
				x.appendRecord(&rec, seg, seq, carried, len(body))
				x.crEnd = seg.Raw[len(seg.Raw)-1] == '\r'
			}
			if seg.HasID {
				st.SetLastID(seg.ID) // copies: seg.ID may alias the parser's carry buffer
			}
		case sse.KindOversize:
			if seg.End {
				oversize++
			}
		}
		switch {
		case drop && !dirty:
			dirty = true
			x.out = append(x.out[:0], body[:kept]...)
		case drop:
		case dirty:
			x.out = append(x.out, seg.Raw...)
		default:
			kept += len(seg.Raw)
		}
	}
	if locked {
		st.Unlock()
	}
	if eos {
		// Forwarded unchanged. Unless something was carried in (then dirty
		// is set), the held tail is a suffix of body.
		tail := x.parser.Flush()
		if x.replay != nil {
			sendReplay()
		}
		if dirty {
			x.out = append(x.out, tail...)
		} else {
			kept += len(tail)
		}
	}
	if len(x.recLastID) > 0 {
		rec.LastID = string(x.recLastID) // once per chunk, not per event
		x.recLastID = x.recLastID[:0]
	}
	if rec.Count == 0 && x.lfOwed {
		// The LF completing the last event's CRLF came alone: the journal
		// adds it to that event's batch if the batch is still open.
		rec = session.Record{Session: x.sessionID, Stream: x.stream.ID(), Data: []byte{'\n'}}
		x.lfOwed = false
	}
	if len(rec.Data) > 0 && !x.srv.cfg.Journal.Append(rec) {
		m.journalDrops.Inc()
	}
	if seen > 0 {
		m.eventsSeen.Add(float64(seen))
		m.eventsForwarded.Add(float64(forwarded))
	}
	if deduped > 0 {
		m.eventsDeduped.Add(float64(deduped))
	}
	if oversize > 0 {
		m.eventsOversize.Add(float64(oversize))
	}
	if dirty {
		out = x.out
	} else {
		out = body[:kept]
	}
	m.bytesForwarded.Add(float64(len(out)))
	return out, len(out) != len(body) || dirty
}

// appendRecord adds a delivered event to the chunk's journal record. The
// record's buffer is allocated once per chunk, sized for all of it: the
// events come from the chunk and, when a block was carried over, from the
// parser's carry buffer as well.
func (x *exchange) appendRecord(rec *session.Record, seg sse.Segment, seq uint64, carried bool, chunk int) {
	if rec.Count == 0 {
		size := chunk
		if carried {
			size += len(seg.Raw)
		}
		*rec = session.Record{
			Session: x.sessionID, Stream: x.stream.ID(), FirstSeq: seq, Principal: x.principal,
			Data: make([]byte, 0, max(size, len(seg.Raw))+1),
		}
		x.recorded = true
		if x.lfOwed {
			rec.Data = append(rec.Data, '\n')
			x.lfOwed = false
		}
	}
	rec.Data = append(rec.Data, seg.Raw...)
	rec.Count++
	rec.LastSeq = seq
	if seg.HasID && len(seg.ID) > 0 {
		if rec.FirstID == "" {
			rec.FirstID = string(seg.ID)
		}
		x.recLastID = append(x.recLastID[:0], seg.ID...)
	}
}

// endBody closes the response's stream state once.
func (x *exchange) endBody() {
	if x.ended || !x.sseBody {
		return
	}
	x.ended = true
	x.srv.metrics.streamsActive.Dec()
	if x.stream != nil && x.recorded && x.srv.cfg.Journal != nil {
		if !x.srv.cfg.Journal.Append(session.Record{Session: x.sessionID, Stream: x.stream.ID(), End: true}) {
			x.srv.metrics.journalDrops.Inc()
		}
	}
}

// abandonTail counts a partial event that can no longer be forwarded: the
// body ended without an end_of_stream chunk (HTTP/2 trailers, with Envoy's
// response_trailer_mode SKIP ssetrack is not even told) or the stream was
// cut. Only an incomplete event is ever held, which a browser discards too.
func (x *exchange) abandonTail() {
	if x.sseBody && !x.ended && x.parser.Pending() > 0 {
		x.srv.metrics.errors.WithLabelValues("partial_event_unsent").Inc()
	}
}

// close releases what the exchange holds; the gRPC stream is over (the
// response ended, or the client or Envoy went away).
func (x *exchange) close() {
	x.abandonTail()
	x.endBody()
	if x.sess != nil {
		x.srv.cfg.Sessions.Release(x.sess)
		x.sess = nil
	}
}

// principalHash returns the keyed hash that stands for a principal: the raw
// value (a bearer token, say) is never kept.
func principalHash(key []byte, value string) string {
	if value == "" {
		return ""
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(value))
	return hex.EncodeToString(m.Sum(nil)[:16])
}

// headerValue returns a header's value: Envoy sends raw_value, older
// versions value.
func headerValue(h *corev3.HeaderValue) string {
	if len(h.GetRawValue()) > 0 {
		return string(h.GetRawValue())
	}
	return h.GetValue()
}

// isEventStream reports whether a content-type is text/event-stream,
// ignoring case and parameters.
func isEventStream(ct string) bool {
	const want = "text/event-stream"
	ct = strings.TrimSpace(ct)
	if len(ct) < len(want) || !strings.EqualFold(ct[:len(want)], want) {
		return false
	}
	rest := strings.TrimSpace(ct[len(want):])
	return rest == "" || rest[0] == ';'
}
