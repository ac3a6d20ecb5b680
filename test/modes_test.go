package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// The processing_mode block and override switch of the shipped envoy.yaml, which
// withModes replaces.
const shippedModes = `              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: NONE
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
              # Lets ssetrack turn response body streaming on for SSE responses only.
              allow_mode_override: true
`

// withModes is src (envoy.yaml) with the filter's processing_mode set to the given body
// and trailer modes, followed by the given filter fields (allow_mode_override and the
// like, one per line at the filter's indent).
func withModes(t *testing.T, src, reqBody, respBody, reqTrailer, respTrailer string, fields ...string) string {
	t.Helper()
	if !strings.Contains(src, shippedModes) {
		t.Fatalf("envoy.yaml: processing_mode block not found as\n%s", shippedModes)
	}
	block := fmt.Sprintf(`              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: %s
                response_body_mode: %s
                request_trailer_mode: %s
                response_trailer_mode: %s
`, reqBody, respBody, reqTrailer, respTrailer)
	for _, f := range fields {
		block += "              " + f + "\n"
	}
	return strings.Replace(src, shippedModes, block, 1)
}

// TestFilterModes runs SSE through Envoy configured with the body modes an operator may
// choose other than the recommended one, and checks what extproc/modes.go promises for
// each: every byte reaches the client on time, Envoy never carries on without ssetrack
// (no spurious message, no fail-open), and the response is counted as what ssetrack could
// make of it.
//
//   - FULL_DUPLEX_STREAMED responses: every chunk is answered with a streamed_response;
//     events split across chunks and CRLF line ends arrive whole and in lockstep, a resume
//     is deduplicated, and a body that ends with HTTP/2 trailers still delivers its partial
//     last event (full duplex can send it ahead of the trailers' answer).
//   - FULL_DUPLEX_STREAMED request bodies: echoed, so a POST's body reaches the upstream
//     intact; Envoy then ignores mode_override, so with response_body_mode NONE the SSE
//     body never reaches ssetrack (counted not_sent) and passes untouched.
//   - BUFFERED_PARTIAL with overrides refused: the body passes untouched (counted
//     buffered); holding back a partial event there would lose its bytes.
//   - allowed_override_modes with the two entries envoy/README.md prints: the override is
//     applied and the resume deduplicated.
func TestFilterModes(t *testing.T) {
	harness.EnvoyBin(t)
	up := harness.StartUpstream(t)
	sset := harness.StartSsetrack(t, harness.SsetrackOptions{})
	shipped := harness.ShippedEnvoyConfig(t, "envoy.yaml")
	start := func(t *testing.T, name, src string) *fixture { return sourceFixture(t, up, sset, name+".yaml", src) }
	// In lockstep (each piece written once the client has the ones before it): pieces
	// that end where nothing may be held back, one inside a CRLF.
	pieces := []string{"id: 1\r\ndata: a\r\n\r", "\nid: 2\r\ndata: b\r\n\r\n", ": keepalive\n", "id: 3\r\ndata: c\r\n\r\n"}
	whole := strings.Join(pieces, "")
	// Byte by byte: every event split across chunks.
	split := harness.Reply{Body: []byte(whole), Cuts: harness.EveryCut(len(whole), 1)}
	lockstep := func(t *testing.T, fx *fixture, session string, pieces []string, trailer http.Header) {
		t.Helper()
		ls := newLockstep(pieces...)
		if got, want := ls.run(t, fx, up.Static(ls.reply(trailer)), session, ""), strings.Join(pieces, ""); got != want {
			t.Errorf("client got %q, want %q", got, want)
		}
	}
	get := func(t *testing.T, fx *fixture, session, lastEventID string) string {
		t.Helper()
		h := sessionHeader(session)
		if lastEventID != "" {
			h.Set("Last-Event-Id", lastEventID)
		}
		_, got := fx.get(t, up.Static(split), h)
		return string(got)
	}
	kindGrew := func(t *testing.T, m0 harness.Metrics, kind string, want float64) {
		t.Helper()
		if d := sset.Metrics(t).Sub(m0, fmt.Sprintf(`ssetrack_responses_total{kind=%q}`, kind)); d != want {
			t.Errorf("responses_total{kind=%q} grew by %v, want %v", kind, d, want)
		}
	}
	// resumeDeduplicated streams the split body, then resumes from event 2: event 3, which
	// the gateway delivered after 2, is replayed from the journal first, and the
	// upstream's repeats of 1, 2 and 3 are dropped around its keepalive.
	resumeDeduplicated := func(t *testing.T, fx *fixture, session string) {
		t.Helper()
		if got := get(t, fx, session, ""); got != whole {
			t.Errorf("byte-split stream: client got %q, want %q", got, whole)
		}
		if got, want := get(t, fx, session, "2"), "id: 3\r\ndata: c\r\n\r\n: keepalive\n"; got != want {
			t.Errorf("resume from 2 got %q, want %q", got, want)
		}
	}

	t.Run("full duplex response", func(t *testing.T) {
		fx := start(t, "envoy-fdx", withModes(t, withH2Upstream(t, shipped), "NONE", "FULL_DUPLEX_STREAMED", "SKIP", "SEND",
			"allow_mode_override: true"))
		before := fx.envoy.ExtProcStats(t)
		m0 := sset.Metrics(t)
		lockstep(t, fx, "fdx-lockstep", pieces, nil)
		resumeDeduplicated(t, fx, "fdx-resume")
		kindGrew(t, m0, "sse", 3)
		// With trailers, no chunk carries end_of_stream: the partial last event goes out
		// in a body answer before the trailers' answer.
		m1 := sset.Metrics(t)
		lockstep(t, fx, "fdx-trailers", []string{"id: 1\ndata: a\n\n", "id: 2\ndata: cut"}, http.Header{"X-End": {"1"}})
		if d := sset.Metrics(t).Sub(m1, `ssetrack_errors_total{kind="partial_event_unsent"}`); d != 0 {
			t.Errorf("partial_event_unsent grew by %v in full duplex, want 0", d)
		}
		// A resume whose upstream answers with trailers and no body: the replay has no
		// body chunk to ride on, and a body answer before any chunk would be spurious
		// (Envoy would cut the stream); CheckNoFailOpen below catches one.
		empty := up.Static(harness.Reply{Trailer: http.Header{"X-End": {"1"}}})
		h := sessionHeader("fdx-resume")
		h.Set("Last-Event-Id", "1")
		if _, got := fx.get(t, empty, h); len(got) != 0 {
			t.Errorf("resume answered with trailers only: client got %q, want nothing", got)
		}
		// A response that is not SSE is echoed whole.
		path := up.Static(harness.Reply{Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("plain body"), Cuts: []int{5}})
		if _, got := fx.get(t, path, nil); string(got) != "plain body" {
			t.Errorf("plain response through full duplex: %q", got)
		}
		fx.envoy.CheckNoFailOpen(t, before)
	})

	t.Run("full duplex request body", func(t *testing.T) {
		fx := start(t, "envoy-fdx-request", withModes(t, shipped, "FULL_DUPLEX_STREAMED", "NONE", "SEND", "SKIP",
			"allow_mode_override: true"))
		before := fx.envoy.ExtProcStats(t)
		m0 := sset.Metrics(t)
		body := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call"}`)
		path := up.Static(split)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		resp, err := fx.open(ctx, http.MethodPost, path, sessionHeader("fdx-post"), body)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || string(got) != whole {
			t.Errorf("POST through full-duplex request bodies: status %d, body %q, err %v; want 200 and %q", resp.StatusCode, got, err, whole)
		}
		if rec := up.Received(path); len(rec) != 1 || string(rec[0]) != string(body) {
			t.Errorf("upstream received %q, want the request body %q", rec, body)
		}
		kindGrew(t, m0, "not_sent", 1)
		fx.envoy.CheckNoFailOpen(t, before)
	})

	t.Run("buffered partial without overrides", func(t *testing.T) {
		src := withModes(t, shipped, "NONE", "BUFFERED_PARTIAL", "SKIP", "SKIP", "allow_mode_override: false")
		// A buffer limit below one event, so Envoy sends a first part and lets the rest by.
		const listener = "  listeners:\n  - name: ingress\n"
		if !strings.Contains(src, listener) {
			t.Fatalf("envoy.yaml: listener not found by %q", listener)
		}
		src = strings.Replace(src, listener, listener+"    per_connection_buffer_limit_bytes: 30\n", 1)
		fx := start(t, "envoy-buffered-partial", src)
		before := fx.envoy.ExtProcStats(t)
		m0 := sset.Metrics(t)
		// 8-byte writes, paced so that Envoy's first part (past 30 bytes) ends inside
		// event 2 and the rest follows without ssetrack. Envoy buffers up to its limit
		// before anything leaves: no lockstep here.
		path := up.Static(harness.Reply{Body: []byte(whole), Cuts: harness.EveryCut(len(whole), 8), Pause: 20 * time.Millisecond})
		if _, got := fx.get(t, path, sessionHeader("bp")); string(got) != whole {
			t.Errorf("client got %q, want %q", got, whole)
		}
		kindGrew(t, m0, "buffered", 1)
		fx.envoy.CheckNoFailOpen(t, before)
	})

	t.Run("allowed override modes", func(t *testing.T) {
		// Trailer modes SEND in the filter: Envoy would fill an override's unset trailer
		// modes from them, and the entries (SKIP) would then not match.
		fx := start(t, "envoy-allowed-modes", withModes(t, shipped, "NONE", "NONE", "SEND", "SEND",
			"allow_mode_override: true",
			"allowed_override_modes:",
			"- { request_header_mode: SEND, response_header_mode: SEND, request_body_mode: NONE, response_body_mode: STREAMED, request_trailer_mode: SKIP, response_trailer_mode: SKIP }",
			"- { request_header_mode: SEND, response_header_mode: SEND, request_body_mode: NONE, response_body_mode: NONE, request_trailer_mode: SKIP, response_trailer_mode: SKIP }"))
		before := fx.envoy.ExtProcStats(t)
		resumeDeduplicated(t, fx, "aom")
		fx.envoy.CheckNoFailOpen(t, before)
	})
}
