package extproc

import (
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// filterModes is the ext_proc filter's static configuration as Envoy
// states it in ProcessingRequest.protocol_config, on the first message of
// each stream. An Envoy that sends none leaves the zero value: both body
// modes NONE, mode_override honored — the recommended config, in which
// ssetrack turns response body streaming on per response.
//
// What each configuration means for an SSE response (Envoy 1.36 and 1.40,
// checked against the real binaries in test/modes_test.go):
//
//	response_body_mode   ssetrack
//	NONE, BUFFERED       sends mode_override STREAMED (BUFFERED without the
//	                     override: one chunk with end_of_stream, still whole)
//	STREAMED             as configured
//	FULL_DUPLEX_STREAMED answers every chunk with a streamed_response; Envoy
//	                     forwards only what the answers carry
//	BUFFERED_PARTIAL     forwards the body untouched: had Envoy refused the
//	                     override, only the first part would reach ssetrack
//	                     and bytes it held back would be lost
//
// Envoy ignores a mode_override when send_body_without_waiting_for_header_response
// is set or either body mode is FULL_DUPLEX_STREAMED (ext_proc.cc,
// Filter::onReceiveMessage); with response_body_mode NONE the SSE body then
// never reaches ssetrack and it forwards the response untouched.
type filterModes struct {
	request, response  filterv3.ProcessingMode_BodySendMode
	bodyWithoutWaiting bool
}

func modesOf(pc *procv3.ProtocolConfiguration) filterModes {
	return filterModes{
		request:            pc.GetRequestBodyMode(),
		response:           pc.GetResponseBodyMode(),
		bodyWithoutWaiting: pc.GetSendBodyWithoutWaitingForHeaderResponse(),
	}
}

// fullDuplex reports whether response bodies come in FULL_DUPLEX_STREAMED:
// every chunk is answered with a streamed_response carrying the bytes to
// forward (a plain body mutation would be refused as spurious).
func (m filterModes) fullDuplex() bool {
	return m.response == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
}

// overridable reports whether Envoy can apply a mode_override at all.
// allow_mode_override and allowed_override_modes are not in
// protocol_config; envoy/README.md says how to set them.
func (m filterModes) overridable() bool {
	return !m.bodyWithoutWaiting &&
		m.request != filterv3.ProcessingMode_FULL_DUPLEX_STREAMED &&
		m.response != filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
}

// sseBody reports whether ssetrack can work an SSE response's body in these
// modes, and if not, the response kind it is counted as.
func (m filterModes) sseBody() (ok bool, kind string) {
	switch {
	case m.response == filterv3.ProcessingMode_BUFFERED_PARTIAL:
		return false, kindBuffered
	case m.response == filterv3.ProcessingMode_NONE && !m.overridable():
		return false, kindNotSent
	}
	return true, kindSSE
}

// streamedBody is the answer to a body chunk in FULL_DUPLEX_STREAMED: the
// bytes Envoy forwards in the chunk's place. end_of_stream is set on the
// answer to the chunk that carried it.
func streamedBody(body []byte, eos bool) *procv3.CommonResponse {
	return &procv3.CommonResponse{BodyMutation: &procv3.BodyMutation{
		Mutation: &procv3.BodyMutation_StreamedResponse{StreamedResponse: &procv3.StreamedBodyResponse{Body: body, EndOfStream: eos}},
	}}
}
