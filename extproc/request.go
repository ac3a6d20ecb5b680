package extproc

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// requestHeaders is the request phase: it reads who the request is (session
// id, Last-Event-ID, method, MCP version, principal) and, with
// InjectLastEventID, sets last-event-id on the upstream request of a GET that
// has none.
func (x *exchange) requestHeaders(h *procv3.HttpHeaders) *procv3.ProcessingResponse {
	hr := &procv3.HeadersResponse{}
	resp := &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestHeaders{RequestHeaders: hr}}
	if x.gotRequest || x.gotResponse {
		// One gRPC stream carries one HTTP request, whose headers come once
		// and before the response's: a repeat is not a new request. It is
		// answered (Envoy wants one answer per message) with no effect, and
		// the first message's session and Last-Event-ID stay.
		x.m.errors.WithLabelValues("protocol").Inc()
		return resp
	}
	x.gotRequest = true
	var path string
	var cookies []string
	best := len(x.cfg.SessionHeaders) // index of the session header used
	conflict := false                 // the header used came twice, with different values
	idConflict := false               // Last-Event-ID came twice, with different values
	for _, hv := range h.GetHeaders().GetHeaders() {
		key := hv.GetKey()
		switch {
		case key == headerLastEventID:
			id := x.validLastEventID(headerValue(hv))
			idConflict = idConflict || x.hasLastEventID && id != x.lastEventID
			x.lastEventID, x.hasLastEventID = id, true
		case key == headerProtocolVersion:
			if v := headerValue(hv); v >= x.cfg.StatelessMCPVersion {
				x.stateless = true
			}
		case key == ":method":
			x.method = headerValue(hv)
		case key == ":path":
			path = headerValue(hv)
		case key == "cookie":
			cookies = append(cookies, headerValue(hv))
		case key == x.cfg.PrincipalHeader && key != "":
			x.principal = principalHash(x.cfg.PrincipalKey, headerValue(hv))
		default:
			if i, ok := x.srv.headers[key]; ok {
				switch v := headerValue(hv); {
				case i < best:
					best, x.sessionID, conflict = i, v, false
				case i == best && v != x.sessionID:
					conflict = true
				}
			}
		}
	}
	switch {
	case conflict:
		// Which of two sessions the upstream serves is unknown; deduplicating
		// against the wrong one would drop events the client never had. The
		// request is forwarded untouched, with no session.
		x.m.errors.WithLabelValues("session_id_conflict").Inc()
		x.sessionID, x.conflict = "", true
	case idConflict:
		// Last-Event-ID is a single value (WHATWG HTML §9.2 sends one);
		// which of two the upstream resumes from is unknown, and deciding
		// on the other would drop events the upstream sends from the first,
		// or replay ones the client has. Forwarded untouched, as above.
		x.m.errors.WithLabelValues("last_event_id_conflict").Inc()
		x.sessionID, x.conflict = "", true
	case x.sessionID == "":
		var queryConflict bool
		if x.sessionID, queryConflict = x.fallbackSessionID(path, cookies); queryConflict {
			// As for a header (above): which one the upstream reads is
			// not known.
			x.m.errors.WithLabelValues("session_id_conflict").Inc()
			x.sessionID, x.conflict = "", true
		}
	}
	x.sessionID = x.validSessionID(x.sessionID)
	if x.cfg.InjectLastEventID && !x.hasLastEventID && x.sessionID != "" && !x.stateless && x.method == http.MethodGet {
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
	ctx, cancel := context.WithTimeout(x.ctx, x.cfg.JournalTimeout)
	defer cancel()
	if !x.acquire(ctx, false) {
		return ""
	}
	return x.sess.LatestLastID()
}

// acquire takes the session for this exchange, once. A session the response
// assigned is new; one the request named is loaded from the journal if this
// replica does not hold it (within ctx). It reports false when no session
// could be had: the response is then forwarded untracked.
func (x *exchange) acquire(ctx context.Context, assigned bool) bool {
	if x.sess != nil {
		return true
	}
	var err error
	if assigned {
		x.sess, err = x.cfg.Sessions.AcquireNew(x.sessionID)
	} else {
		x.sess, err = x.cfg.Sessions.Acquire(ctx, x.sessionID)
	}
	if err != nil {
		x.m.errors.WithLabelValues("session_acquire").Inc()
		return false
	}
	return true
}

// fallbackSessionID finds a session id for requests without a session
// header, as browsers' EventSource sends them: in the query parameter
// Config.SessionQuery, then in the cookie Config.SessionCookie (the first
// cookie of that name, as servers commonly read it). conflict reports the
// query parameter repeated with different values: servers differ in which
// they read (the first, the last, all), so the request names no session.
func (x *exchange) fallbackSessionID(path string, cookies []string) (id string, conflict bool) {
	if x.cfg.SessionQuery != "" {
		if _, query, ok := strings.Cut(path, "?"); ok {
			if v, err := url.ParseQuery(query); err == nil && len(v[x.cfg.SessionQuery]) > 0 {
				vs := v[x.cfg.SessionQuery]
				if slices.ContainsFunc(vs[1:], func(o string) bool { return o != vs[0] }) {
					return "", true
				}
				if vs[0] != "" {
					return vs[0], false
				}
			}
		}
	}
	if x.cfg.SessionCookie != "" {
		for _, line := range cookies {
			cs, err := http.ParseCookie(line)
			if err != nil {
				continue // a malformed cookie header names no session
			}
			for _, c := range cs {
				if c.Name == x.cfg.SessionCookie && c.Value != "" {
					return c.Value, false
				}
			}
		}
	}
	return "", false
}

// validSessionID returns id if it can name a session, or "" (no session:
// observed and forwarded, never deduplicated) for an id that is too long.
func (x *exchange) validSessionID(id string) string {
	if len(id) > x.cfg.MaxSessionID {
		x.m.errors.WithLabelValues("session_id_too_long").Inc()
		return ""
	}
	return id
}

// validLastEventID returns the client's Last-Event-ID, or "" (a resume of
// no known event) for one no event can carry: an SSE id ends at CR or LF and
// an id with NUL is ignored (WHATWG HTML §9.2). Such a value is neither
// matched nor recorded as the stream's last id, so it never reaches an
// upstream request through InjectLastEventID, where it would be an invalid
// header value (RFC 9110 §5.5). The request itself passes untouched.
func (x *exchange) validLastEventID(id string) string {
	if strings.ContainsAny(id, "\x00\r\n") {
		x.m.errors.WithLabelValues("last_event_id_invalid").Inc()
		return ""
	}
	return id
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
