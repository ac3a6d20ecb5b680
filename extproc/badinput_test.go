package extproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// step is one message from the ext_proc peer and the answer it must get,
// as describe writes it; "" means no answer at all.
type step struct {
	msg  *procv3.ProcessingRequest
	want string
}

// Messages as Envoy (or a peer misusing the protocol) sends them.

func reqH(kv ...string) *procv3.ProcessingRequest {
	return &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{
		Headers: headerMap(append([]string{":method", "GET", ":path", "/mcp"}, kv...)...), EndOfStream: true}}}
}

func respH(kv ...string) *procv3.ProcessingRequest {
	return &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &procv3.HttpHeaders{Headers: headerMap(kv...)}}}
}

func body(s string, eos bool) *procv3.ProcessingRequest {
	return &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{ResponseBody: &procv3.HttpBody{Body: []byte(s), EndOfStream: eos}}}
}

func respTrailers() *procv3.ProcessingRequest {
	return &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &procv3.HttpTrailers{}}}
}

func observed(r *procv3.ProcessingRequest) *procv3.ProcessingRequest {
	r.ObservabilityMode = true
	return r
}

// Answers, as describe writes them.
const (
	reqOK  = "request_headers"
	sseOn  = "response_headers remove=content-length mode=STREAMED"
	sseOff = "response_headers mode=NONE" // the body is not ssetrack's
	keep   = "response_body"              // the chunk goes on as Envoy sent it
	noOp   = "response_headers"           // answered, nothing changed
	// sseDenied: streamed, the missed events not replayed to this caller.
	sseDenied = `response_headers set ssetrack-replay="denied" remove=content-length mode=STREAMED`
)

// replaced is the answer replacing a chunk with s.
func replaced(s string) string { return "response_body body=" + short([]byte(s)) }

func injected(id string) string { return "request_headers set last-event-id=" + short([]byte(id)) }

// short quotes b, or gives only its length when it is long.
func short(b []byte) string {
	if len(b) > 64 {
		return fmt.Sprintf("<%d bytes>", len(b))
	}
	return strconv.Quote(string(b))
}

// describe writes an answer as the table states it: its oneof, then any
// header or body mutation and mode override.
func describe(r *procv3.ProcessingResponse) string {
	var parts []string
	var common *procv3.CommonResponse
	switch v := r.GetResponse().(type) {
	case *procv3.ProcessingResponse_RequestHeaders:
		parts, common = append(parts, "request_headers"), v.RequestHeaders.GetResponse()
	case *procv3.ProcessingResponse_ResponseHeaders:
		parts, common = append(parts, "response_headers"), v.ResponseHeaders.GetResponse()
	case *procv3.ProcessingResponse_RequestBody:
		parts, common = append(parts, "request_body"), v.RequestBody.GetResponse()
	case *procv3.ProcessingResponse_ResponseBody:
		parts, common = append(parts, "response_body"), v.ResponseBody.GetResponse()
	case *procv3.ProcessingResponse_RequestTrailers:
		parts = append(parts, "request_trailers")
	case *procv3.ProcessingResponse_ResponseTrailers:
		parts = append(parts, "response_trailers")
	default:
		parts = append(parts, fmt.Sprintf("%T", v))
	}
	if s := common.GetStatus(); s != procv3.CommonResponse_CONTINUE {
		parts = append(parts, "status="+s.String())
	}
	for _, o := range common.GetHeaderMutation().GetSetHeaders() {
		parts = append(parts, "set "+o.GetHeader().GetKey()+"="+short(o.GetHeader().GetRawValue()))
	}
	for _, k := range common.GetHeaderMutation().GetRemoveHeaders() {
		parts = append(parts, "remove="+k)
	}
	switch m := common.GetBodyMutation().GetMutation().(type) {
	case *procv3.BodyMutation_Body:
		parts = append(parts, "body="+short(m.Body))
	case *procv3.BodyMutation_ClearBody:
		parts = append(parts, "clear_body")
	}
	if mo := r.GetModeOverride(); mo != nil {
		parts = append(parts, "mode="+mo.GetResponseBodyMode().String())
	}
	return strings.Join(parts, " ")
}

// play sends the steps of one ext_proc stream, checks each answer, and
// returns the response body chunks sent and what the client gets for them
// (Envoy applies each body answer to the chunk it answers; a chunk that gets
// no answer, in observability mode, goes on as sent). It returns the code
// the stream ended with.
func play(t *testing.T, h *harness, steps []step) (in, out []byte, code codes.Code) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := h.client.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range steps {
		if err := stream.Send(s.msg); err != nil {
			if errors.Is(err, io.EOF) {
				break // the server ended the stream: its status follows
			}
			t.Fatalf("step %d: send: %v", i, err)
		}
		chunk := s.msg.GetResponseBody().GetBody()
		isBody := s.msg.GetResponseBody() != nil
		in = append(in, chunk...)
		if s.want == "" {
			out = append(out, chunk...)
			continue
		}
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("step %d: want %s, got %v", i, s.want, err)
		}
		if got := describe(r); got != s.want {
			t.Errorf("step %d: answer\n  %s\nwant\n  %s", i, got, s.want)
		}
		if m := r.GetResponseBody().GetResponse().GetBodyMutation(); m != nil && isBody {
			out = append(out, m.GetBody()...)
		} else {
			out = append(out, chunk...)
		}
	}
	stream.CloseSend()
	// Anything but the end of the stream here is an answer too many (or an
	// answer to a message that must get none).
	r, err := stream.Recv()
	if err == nil {
		t.Fatalf("an answer too many: %s", describe(r))
	}
	if errors.Is(err, io.EOF) {
		return in, out, codes.OK
	}
	return in, out, status.Code(err)
}

// TestBadInput is the bad-input catalogue at the ext_proc level: each case
// plays one or more ext_proc streams through real gRPC and states the exact
// answer Envoy gets to every message. For every case it also checks that
// nothing is lost (the client's bytes are the body chunks sent, minus the
// duplicates ssetrack drops and the documented unsent tail), that no
// metric of an open stream is left behind, and that the server still serves
// a well-formed request on a fresh stream afterwards. A panic anywhere in
// the server fails the whole test binary.
//
// The choices for a peer that breaks the protocol follow Envoy's ext_proc
// contract (envoy/service/ext_proc/v3, envoy/extensions/filters/http/
// ext_proc/v3):
//   - Outside FULL_DUPLEX_STREAMED, every ProcessingRequest gets exactly one
//     ProcessingResponse unless it carries observability_mode: so every
//     message of a known kind is answered, even one that makes no sense now
//     (a body before headers, anything after end_of_stream), with an answer
//     that changes nothing.
//   - A message with no request oneof is, by the proto, a flow-control-only
//     message (client_window_update), which asks for no answer: none is sent.
//   - One gRPC stream carries one HTTP request, whose request and response
//     headers come once each. A second request-headers message (or one after
//     the response headers) is not a new request: it is answered with a
//     headers response that changes nothing, and the first one's identity
//     (session, Last-Event-ID) stays. A second response-headers message is
//     answered the same way and does not reopen the stream.
//   - observability_mode is filter configuration, the same on every message
//     of a stream: the first message decides. Answering a message whose
//     flag flipped on is harmless (Envoy ignores answers in that mode),
//     while not answering would stall a filter that waits for one.
//
// No case ends the gRPC stream with an error status, which the contract
// allows: Envoy would then fail the HTTP request unless failure_mode_allow
// is set, where passing the bytes on untouched loses nothing.
func TestBadInput(t *testing.T) {
	const (
		ev1 = "id: 1\ndata: a\n\n"
		ev2 = "id: 2\ndata: b\n\n"
		mib = 1 << 20
	)
	bigEvents := ev1 + strings.Repeat("data: "+strings.Repeat("x", 1000)+"\n\n", 6*mib/1008) // ~6 MiB, one duplicate first
	bigEvent := "id: 9\ndata: " + strings.Repeat("y", 6*mib) + "\n\n"                        // one event over the 1 MiB limit
	sse := sseHeaders()
	sess := func(id string, kv ...string) *procv3.ProcessingRequest {
		return reqH(append([]string{"mcp-session-id", id}, kv...)...)
	}
	// first is a normal stream of session S delivering ev1.
	first := []step{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}}
	// badLastEventID: a Last-Event-ID no event can carry is not recorded as
	// the stream's last id, so it is never injected into a later request.
	badLastEventID := func(id string) [][]step {
		return [][]step{
			{{sess("S", "last-event-id", id), reqOK}, {respH(sse...), sseOn}, {body("data: no id\n\n", true), keep}},
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
		}
	}

	tests := []struct {
		name    string
		cfg     func(*Config)
		streams [][]step // ext_proc streams, played in order
		dropped []string // removed from what the client gets (last occurrence)
		errKind string   // ssetrack_errors_total kind counted, if any
	}{
		// The ext_proc peer breaking the protocol.
		{name: "body before any headers", streams: [][]step{
			{{body(ev1, false), keep}, {sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev2, true), keep}},
		}},
		{name: "body chunks after end_of_stream", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep},
				{body(ev1, false), keep}, {body("id: 2\nda", true), keep}, {respTrailers(), "response_trailers"}},
		}},
		{name: "unknown message type (no request oneof)", streams: [][]step{
			{{&procv3.ProcessingRequest{}, ""}, {sess("S"), reqOK}, {&procv3.ProcessingRequest{}, ""},
				{respH(sse...), sseOn}, {&procv3.ProcessingRequest{MetadataContext: &corev3.Metadata{}}, ""}, {body(ev1, true), keep}},
		}},
		{name: "second request-headers message", streams: [][]step{
			{{sess("S"), reqOK}, {sess("T", "last-event-id", "1"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
			// The stream belonged to S, the first message's session.
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1+ev2, true), replaced(ev2)}},
		}, dropped: []string{ev1}, errKind: "protocol"},
		{name: "request headers after response headers", streams: [][]step{
			{{respH(sse...), sseOn}, {sess("S"), reqOK}, {body(ev1, true), keep}},
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
		}, errKind: "protocol"},
		{name: "second response-headers message mid-body", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1+"da", false), replaced(ev1)},
				{respH(":status", "200", "content-type", "application/json"), noOp}, {body("ta: b\nid: 2\n\n", true), replaced("data: b\nid: 2\n\n")}},
		}, errKind: "protocol"},
		{name: "response headers again after end_of_stream", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}, {respH(sse...), noOp}, {body(ev1, true), keep}},
		}, errKind: "protocol"},
		{name: "response headers without request headers", streams: [][]step{
			{{respH(sse...), sseOn}, {body(ev1, false), keep}, {body(ev1, true), keep}},
		}},
		{name: "trailers without a body", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {respTrailers(), "response_trailers"}},
		}},
		{name: "trailers with a partial event held", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1+"data: b\nid", false), replaced(ev1)}, {respTrailers(), "response_trailers"}},
		}, dropped: []string{"data: b\nid"}, errKind: "partial_event_unsent"},
		{name: "request body and request trailers", streams: [][]step{
			{{sess("S"), reqOK},
				{&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestBody{RequestBody: &procv3.HttpBody{Body: []byte("{}")}}}, "request_body"},
				{&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestTrailers{RequestTrailers: &procv3.HttpTrailers{}}}, "request_trailers"},
				{respH(sse...), sseOn}, {body(ev1, true), keep}},
		}},
		{name: "response body message without its HttpBody", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn},
				{&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{}}, keep}, {body(ev1, true), keep}},
		}},
		{name: "body chunk for a non-SSE response", streams: [][]step{
			first,
			{{sess("S"), reqOK}, {respH(":status", "200", "content-type", "application/json"), sseOff}, {body(ev1, true), keep}},
		}},
		{name: "observability_mode set midway", streams: [][]step{
			first,
			{{sess("S"), reqOK}, {respH(sse...), sseOn},
				{observed(body(ev1+ev2+"da", false)), replaced(ev2)}, {observed(body("ta: c\nid: 3\n\n", true)), replaced("data: c\nid: 3\n\n")}},
		}, dropped: []string{ev1}},
		{name: "observability_mode cleared midway", streams: [][]step{
			first,
			{{observed(sess("S")), ""}, {observed(respH(sse...)), ""}, {body(ev1, false), ""}, {body(ev2, true), ""}},
		}},
		{name: "empty body chunk with end_of_stream flushes the held tail", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1+"data: tail", false), replaced(ev1)}, {body("", true), replaced("data: tail")}},
		}},
		{name: "empty body chunks, nothing held", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body("", false), keep}, {body(ev1, false), keep}, {body("", true), keep}},
		}},
		{name: "huge single chunk of small events, one duplicate", streams: [][]step{
			first,
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(bigEvents, true), replaced(bigEvents[len(ev1):])}},
		}, dropped: []string{ev1}},
		{name: "huge single event over the size limit, twice", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(bigEvent, true), keep}},
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(bigEvent, true), keep}},
		}},
		{name: "a chunk of only a partial BOM", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body("\xef\xbb", false), replaced("")}, {body("\xbf"+ev1, true), replaced("\xef\xbb\xbf" + ev1)}},
		}},
		{name: "a partial BOM at end of stream", streams: [][]step{
			{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body("\xef", false), replaced("")}, {body("\xbb", true), replaced("\xef\xbb")}},
		}},

		// Odd responses.
		{name: "gzip'd SSE", streams: [][]step{
			first,
			{{sess("S"), reqOK}, {respH(sseHeaders("content-encoding", "gzip")...), sseOff}, {body("\x1f\x8b\x08\x00"+ev1, true), keep}},
		}},
		{name: "non-2xx SSE", streams: [][]step{
			first,
			{{sess("S"), reqOK}, {respH(":status", "503", "content-type", "text/event-stream"), sseOff}, {body(ev1, true), keep}},
		}},
		{name: "SSE response headers with end_of_stream", streams: [][]step{
			{{sess("S"), reqOK}, {&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &procv3.HttpHeaders{
				Headers: headerMap(sse...), EndOfStream: true}}}, sseOff}},
		}},
		{name: "content-type with odd case and parameters", streams: [][]step{
			first,
			{{sess("S"), reqOK}, {respH(":status", "200", "content-type", "TEXT/Event-Stream ; Charset=\"UTF-8\"; ;x"), sseOn}, {body(ev1, true), replaced("")}},
		}, dropped: []string{ev1}},
		{name: "content-type listing two types", streams: [][]step{
			first,
			{{sess("S"), reqOK}, {respH(":status", "200", "content-type", "text/event-stream, text/plain"), sseOff}, {body(ev1, true), keep}},
		}},
		{name: "status that is not a number", streams: [][]step{
			{{sess("S"), reqOK}, {respH(":status", "abc", "content-type", "text/event-stream"), sseOff}, {body(ev1, true), keep}},
		}},

		// Odd request headers.
		{name: "mcp-protocol-version garbage sorting before 2026-07-28: sessions apply", streams: [][]step{
			first,
			{{sess("S", "mcp-protocol-version", "\x00\xff1.0"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), replaced("")}},
		}, dropped: []string{ev1}},
		{name: "mcp-protocol-version garbage sorting after 2026-07-28: observed only", streams: [][]step{
			first,
			{{sess("S", "mcp-protocol-version", "latest"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
		}},
		{name: "1 MiB session id", streams: [][]step{
			{{sess(strings.Repeat("s", mib)), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
			{{sess(strings.Repeat("s", mib)), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
		}, errKind: "session_id_too_long"},
		{name: "1 MiB values in other headers", streams: [][]step{
			first,
			{{sess("S", "x-junk", strings.Repeat("j", mib), "cookie", strings.Repeat("c=d; ", mib/5)), reqOK},
				{respH(sseHeaders("x-junk", strings.Repeat("j", mib))...), sseOn}, {body(ev1+ev2, true), replaced(ev2)}},
		}, dropped: []string{ev1}},
		{name: "1 MiB session id assigned by the response", streams: [][]step{
			{{reqH(), reqOK}, {respH(sseHeaders("mcp-session-id", strings.Repeat("a", mib))...), sseOn}, {body(ev1, true), keep}},
		}, errKind: "session_id_too_long"},
		{name: "repeated session header, same value", streams: [][]step{
			first,
			{{sess("S", "mcp-session-id", "S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), replaced("")}},
		}, dropped: []string{ev1}},
		{name: "repeated session header, different values: no session", streams: [][]step{
			first,
			{{sess("S", "mcp-session-id", "T"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
			{{sess("T", "mcp-session-id", "S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
			// Nor is the session the response names taken instead.
			{{sess("T", "mcp-session-id", "S"), reqOK}, {respH(sseHeaders("mcp-session-id", "S")...), sseOn}, {body(ev1, true), keep}},
		}, errKind: "session_id_conflict"},
		{name: "repeated session query parameter, same value", cfg: func(c *Config) { c.SessionQuery = "sid" },
			streams: [][]step{
				{{reqH(":path", "/sse?sid=S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
				{{reqH(":path", "/sse?sid=S&sid=S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), replaced("")}},
			}, dropped: []string{ev1}},
		{name: "repeated session query parameter, different values: no session", cfg: func(c *Config) { c.SessionQuery = "sid" },
			streams: [][]step{
				{{reqH(":path", "/sse?sid=S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
				{{reqH(":path", "/sse?sid=S&sid=T"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
				{{reqH(":path", "/sse?sid=T&sid=S"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
			}, errKind: "session_id_conflict"},
		{name: "repeated Last-Event-ID, same value", cfg: func(c *Config) { rp := &replayer{}; c.Recorder, c.Replayer = rp, rp },
			streams: [][]step{
				first,
				{{sess("S", "last-event-id", "1", "last-event-id", "1"), reqOK}, {respH(sse...), sseOn}, {body(ev1+ev2, true), replaced(ev2)}},
			}, dropped: []string{ev1}},
		// The upstream may resume from either: from 0 it sends 1 again, which
		// a client at 0 lacks. Nothing is dropped, nothing replayed.
		{name: "repeated Last-Event-ID, different values: no session", cfg: func(c *Config) { rp := &replayer{}; c.Recorder, c.Replayer = rp, rp },
			streams: [][]step{
				{{sess("S"), reqOK}, {respH(sse...), sseOn}, {body(ev1+ev2, true), keep}},
				{{sess("S", "last-event-id", "0", "last-event-id", "2"), reqOK}, {respH(sse...), sseOn}, {body(ev1+ev2, true), keep}},
				{{sess("S", "last-event-id", "2", "last-event-id", "1"), reqOK}, {respH(sse...), sseOn}, {body(ev2, true), keep}},
				// Nor is the session the response names taken instead.
				{{reqH("last-event-id", "0", "last-event-id", "1"), reqOK}, {respH(sseHeaders("mcp-session-id", "S")...), sseOn}, {body(ev1+ev2, true), keep}},
			}, errKind: "last_event_id_conflict"},
		{name: "Last-Event-ID with CR", cfg: func(c *Config) { c.InjectLastEventID = true },
			streams: badLastEventID("1\r2"), errKind: "last_event_id_invalid"},
		{name: "Last-Event-ID with LF", cfg: func(c *Config) { c.InjectLastEventID = true },
			streams: badLastEventID("1\n2"), errKind: "last_event_id_invalid"},
		{name: "Last-Event-ID with NUL", cfg: func(c *Config) { c.InjectLastEventID = true },
			streams: badLastEventID("1\x002"), errKind: "last_event_id_invalid"},
		{name: "Last-Event-ID of 10 KB: a possible id, recorded", cfg: func(c *Config) { c.InjectLastEventID = true },
			streams: [][]step{
				{{sess("S", "last-event-id", strings.Repeat("i", 10<<10)), reqOK}, {respH(sse...), sseOn}, {body("data: no id\n\n", true), keep}},
				{{sess("S"), injected(strings.Repeat("i", 10<<10))}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
			}},
		// Nothing is known of where the client is: the upstream's first id
		// places it, and what the session delivered from there goes again.
		{name: "Last-Event-ID of 10 KB unknown to the session: no replay, nothing dropped", cfg: func(c *Config) { rp := &replayer{}; c.Recorder, c.Replayer = rp, rp },
			streams: [][]step{
				first,
				{{sess("S", "last-event-id", strings.Repeat("i", 10<<10)), reqOK}, {respH(sse...), sseOn}, {body(ev1+ev2, true), keep}},
			}},
		{name: "session id of invalid UTF-8", streams: [][]step{
			{{sess("\xff\xfe\xc3\x28"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}},
			{{sess("\xff\xfe"), reqOK}, {respH(sse...), sseOn}, {body(ev1, true), keep}}, // another session
			{{sess("\xff\xfe\xc3\x28"), reqOK}, {respH(sse...), sseOn}, {body(ev1+ev2, true), replaced(ev2)}},
		}, dropped: []string{ev1}},
		{name: "principal header with a 1 MiB value: hashed and bound", cfg: func(c *Config) {
			rp := &replayer{}
			c.Recorder, c.Replayer = rp, rp
			c.PrincipalHeader, c.PrincipalKey = "authorization", []byte("0123456789abcdef")
		}, streams: [][]step{
			{{sess("S", "authorization", strings.Repeat("p", mib)), reqOK}, {respH(sse...), sseOn}, {body(ev1, false), keep}, {body(ev2, true), keep}},
			// Bound to the first caller's hash: another caller's resume is denied.
			{{sess("S", "authorization", strings.Repeat("q", mib), "last-event-id", "1"), reqOK},
				{respH(sse...), sseDenied}, {body("id: 3\ndata: c\n\n", true), keep}},
		}},
		{name: "header value in value, not raw_value", streams: [][]step{
			first,
			{{&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{
				Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "mcp-session-id", Value: "S"}}}}}}, reqOK},
				{respH(sse...), sseOn}, {body(ev1, true), replaced("")}},
		}, dropped: []string{ev1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.cfg)
			var in, out []byte
			for n, steps := range tt.streams {
				i, o, code := play(t, h, steps)
				in, out = append(in, i...), append(out, o...)
				if code != codes.OK {
					t.Errorf("stream %d ended with %v, want OK", n, code)
				}
			}
			want := in
			for _, d := range tt.dropped {
				k := bytes.LastIndex(want, []byte(d))
				if k < 0 {
					t.Fatalf("dropped %q is not in the input", d)
				}
				want = append(want[:k:k], want[k+len(d):]...)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("the client got %s, want the input minus dropped duplicates, %s", short(out), short(want))
			}
			if tt.errKind != "" {
				if n := testutil.ToFloat64(h.srv.metrics.errors.WithLabelValues(tt.errKind)); n == 0 {
					t.Errorf("ssetrack_errors_total{kind=%q} not counted", tt.errKind)
				}
			}
			if n := testutil.ToFloat64(h.srv.metrics.streamsActive); n != 0 {
				t.Errorf("ssetrack_streams_active = %v after every stream ended", n)
			}
			// The server survived: a well-formed request on a fresh stream works.
			res := h.run(t, request{reqHeaders: []string{"mcp-session-id", "after"}, respHeaders: sseHeaders(), chunks: split(ev1+ev2, 7)})
			if string(res.body) != ev1+ev2 || res.answers != 2 {
				t.Errorf("a well-formed request afterwards got %q in %d answers", res.body, res.answers)
			}
		})
	}
}
