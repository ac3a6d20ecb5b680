module github.com/ssetrack/ssetrack/test/bench

go 1.26.0

require (
	github.com/ssetrack/ssetrack v0.0.0
	github.com/tmaxmax/go-sse v0.12.0
)

replace github.com/ssetrack/ssetrack => ../..
