package extproc

import (
	"context"
	"errors"
	"mime"
	"net/http"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// responseHeaders is the response phase: it decides whether ssetrack takes
// the body (a 2xx text/event-stream without content-encoding), binds the
// response to its session's stream and reads what a resuming client missed
// (replay.go). The body's mode follows: STREAMED for SSE, NONE otherwise.
func (x *exchange) responseHeaders(h *procv3.HttpHeaders) *procv3.ProcessingResponse {
	if x.gotResponse {
		// A response's headers come once: a repeat (mid-body or after the
		// end) is answered with no effect, no mode change, and neither
		// reopens the stream nor restarts the parser.
		x.m.errors.WithLabelValues("protocol").Inc()
		return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &procv3.HeadersResponse{}}}
	}
	x.gotResponse = true
	var contentType, encoding, status, assigned string
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch key := hv.GetKey(); {
		case key == "content-type":
			contentType = headerValue(hv)
		case key == "content-encoding":
			encoding = headerValue(hv)
		case key == ":status":
			status = headerValue(hv)
		case key == "set-cookie" && assigned == "" && x.cfg.SessionCookie != "":
			if c, err := http.ParseSetCookie(headerValue(hv)); err == nil && c.Name == x.cfg.SessionCookie {
				assigned = c.Value
			}
		case assigned == "":
			if _, ok := x.srv.headers[key]; ok {
				assigned = headerValue(hv)
			}
		}
	}
	hr := &procv3.HeadersResponse{}
	resp := &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: hr}}

	if x.method == http.MethodDelete && x.sessionID != "" && len(status) == 3 && status[0] == '2' {
		// MCP session termination (Streamable HTTP): the server ended
		// the session, so its memory is freed now rather than at its TTL.
		x.cfg.Sessions.Forget(x.sessionID)
	}
	kind := responseKind(contentType, encoding, status)
	if kind == kindSSE && h.GetEndOfStream() {
		kind = kindPassthrough // no body (HEAD, 204): nothing to track
	}
	if kind == kindSSE {
		if ok, why := x.modes.sseBody(); !ok {
			kind = why
			x.explain(why)
		}
	}
	x.m.responses.WithLabelValues(kind).Inc()
	if kind != kindSSE {
		// Body not needed: with a static STREAMED config, turn it off.
		if x.modes.overridable() {
			resp.ModeOverride = responseBodyMode(filterv3.ProcessingMode_NONE)
		}
		return resp
	}

	x.sseBody = true
	x.m.streamsActive.Inc()
	byResponse := false
	if x.sessionID == "" && assigned != "" && !x.conflict {
		// An MCP server assigns the session on its initialize response.
		x.sessionID, byResponse = x.validSessionID(assigned), true
	}
	mut := &procv3.HeaderMutation{
		// Envoy streams the body in chunks we may resize: a length would lie.
		RemoveHeaders: []string{"content-length"},
	}
	if x.sessionID != "" && !x.stateless {
		// A history load and a replay read may both happen here, on one
		// Envoy message: together they get one budget, under Envoy's
		// message_timeout, so Envoy never gives up on the stream.
		ctx, cancel := context.WithTimeout(x.ctx, x.cfg.JournalTimeout)
		x.openStream(ctx, byResponse)
		result := x.readReplay(ctx)
		cancel()
		if result != "" {
			mut.SetHeaders = append(mut.SetHeaders, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: headerReplay, RawValue: []byte(result)},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			})
		}
	}
	hr.Response = &procv3.CommonResponse{HeaderMutation: mut}
	if x.modes.overridable() {
		resp.ModeOverride = responseBodyMode(filterv3.ProcessingMode_STREAMED)
	}
	return resp
}

// explain logs, once per process and kind, why an SSE response is
// forwarded untouched (filterModes.sseBody), naming the setting to change.
func (x *exchange) explain(kind string) {
	if _, done := x.srv.warned.LoadOrStore(kind, true); done {
		return
	}
	switch kind {
	case kindBuffered:
		x.srv.log.Warn("response_body_mode BUFFERED_PARTIAL: SSE responses are forwarded untouched, without dedup, replay or journal; "+
			"set response_body_mode NONE with allow_mode_override: true, or STREAMED (envoy/README.md)", "kind", kind)
	case kindNotSent:
		x.srv.log.Warn("Envoy ignores mode_override with this filter config (send_body_without_waiting_for_header_response, or a "+
			"FULL_DUPLEX_STREAMED request body) and response_body_mode is NONE, so SSE bodies never reach ssetrack and are "+
			"forwarded untouched; set response_body_mode STREAMED (envoy/README.md)", "kind", kind)
	}
}

// responseKind classifies a response for ssetrack_responses_total: only
// kindSSE bodies are streamed through ssetrack.
func responseKind(contentType, encoding, status string) string {
	switch {
	case !isEventStream(contentType):
		return kindPassthrough
	case encoding != "" && !strings.EqualFold(encoding, "identity"):
		return kindEncoded // compressed SSE: forwarded untouched, counted
	case len(status) != 3 || status[0] != '2':
		return kindError
	}
	return kindSSE
}

// isEventStream reports whether a Content-Type header names
// text/event-stream (RFC 9110 §8.3: case-insensitive, parameters allowed,
// and a malformed parameter does not change the type, as for browsers). A
// header whose type does not parse is not SSE: the body passes untouched.
func isEventStream(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return (err == nil || errors.Is(err, mime.ErrInvalidMediaParameter)) && mt == "text/event-stream"
}

// responseBodyMode is the mode_override that sets the response body mode.
// Envoy applies an override whole, and checks it against
// allowed_override_modes by exact equality, so every field is written out
// (trailers SKIP as in the recommended config): the two entries an
// allow-list needs are printed in envoy/README.md.
func responseBodyMode(m filterv3.ProcessingMode_BodySendMode) *filterv3.ProcessingMode {
	return &filterv3.ProcessingMode{
		RequestHeaderMode:   filterv3.ProcessingMode_SEND,
		ResponseHeaderMode:  filterv3.ProcessingMode_SEND,
		RequestBodyMode:     filterv3.ProcessingMode_NONE,
		ResponseBodyMode:    m,
		RequestTrailerMode:  filterv3.ProcessingMode_SKIP,
		ResponseTrailerMode: filterv3.ProcessingMode_SKIP,
	}
}

// openStream binds the response to its session's stream: a resume continues
// the stream that carried the client's Last-Event-ID. assigned reports that
// the response, not the request, named the session.
func (x *exchange) openStream(ctx context.Context, assigned bool) {
	cached := x.cfg.Sessions.Cached(x.sessionID)
	if !x.acquire(ctx, assigned) {
		return // forwarded untracked
	}
	if !cached && !assigned {
		x.awaitPeer(ctx)
	}
	x.owner = x.sess.Bind(x.principal)
	resume := session.Resume{LastEventID: x.lastEventID, HasLastEventID: x.hasLastEventID}
	if x.hasLastEventID {
		resume.Stream = x.locateStream(ctx)
	}
	x.stream = x.sess.OpenStream(resume)
	if sc, ok := x.cfg.Recorder.(Successor); ok && x.owner && x.hasLastEventID && x.stream.Resumed() {
		// Only the session's owner (see Session.Bind) takes its streams
		// over elsewhere: another caller who knows a session and an event
		// id would otherwise stop the owner's response being stored.
		sc.Takeover(x.sessionID, x.stream.ID(), x.lastEventID)
	}
	switch {
	case !x.hasLastEventID:
		if x.stream.Resumed() {
			x.m.resumes.WithLabelValues("without_header").Inc()
		}
	case x.stream.Located():
		x.m.resumes.WithLabelValues("located").Inc()
	case x.stream.Resumed():
		x.m.resumes.WithLabelValues("matched").Inc()
	default:
		x.m.resumes.WithLabelValues("unknown").Inc()
	}
}
