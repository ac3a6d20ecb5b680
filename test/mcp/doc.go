// Package mcpe2e runs the Model Context Protocol's Go SDK
// (github.com/modelcontextprotocol/go-sdk) on both ends of a stream that passes through Envoy
// and ssetrack: the SDK's streamable HTTP server as Envoy's upstream, the SDK's client in
// front, and between the client and Envoy a TCP relay that loses events the way a broken
// last mile does.
//
// It is a Go module of its own, so that the SDK stays out of ssetrack's module; it uses
// ssetrack's test harness (github.com/ssetrack/ssetrack/test/harness) through a replace
// directive. `make test-mcp` runs it (part of `make test`).
package mcpe2e
