package main

import "testing"

// TestParseRounds checks that the rounds of a sub-benchmark run again in turn (name#01,
// name#02, as go test names them) are read as one benchmark, in round order, and that a
// ratio between two setups pairs their rounds.
func TestParseRounds(t *testing.T) {
	out := []byte(`goos: linux
BenchmarkPerf/mcp/envoy-noop-2         	 1000	 1181 ns/op	 0.50 envoy-cpu-us/ev	 0.30 xp-cpu-us/ev
BenchmarkPerf/mcp/envoy-ssetrack-2     	 1000	 1305 ns/op	 0.50 envoy-cpu-us/ev	 0.60 xp-cpu-us/ev
BenchmarkPerf/mcp/envoy-noop#01-2      	 1000	 1181 ns/op	 1.00 envoy-cpu-us/ev	 0.60 xp-cpu-us/ev
BenchmarkPerf/mcp/envoy-ssetrack#01-2  	 1000	 1305 ns/op	 1.00 envoy-cpu-us/ev	 0.80 xp-cpu-us/ev
BenchmarkPerf/mcp/envoy-noop#02-2      	 1000	 1181 ns/op	 0.40 envoy-cpu-us/ev	 0.40 xp-cpu-us/ev
BenchmarkPerf/mcp/envoy-ssetrack#02-2  	 1000	 1305 ns/op	 0.40 envoy-cpu-us/ev	 1.20 xp-cpu-us/ev
BenchmarkProcessor/noop#10-2           	 1000	 700 ns/op	 0.40 server-cpu-us/ev
`)
	rs := parse(out)
	if len(rs) != 3 {
		t.Fatalf("parsed %d benchmarks, want 3: %v", len(rs), rs)
	}
	noop, sse := rs["BenchmarkPerf/mcp/envoy-noop"]["xp-cpu-us/ev"], rs["BenchmarkPerf/mcp/envoy-ssetrack"]["xp-cpu-us/ev"]
	if len(noop) != 3 || noop[1] != 0.6 || len(sse) != 3 || sse[2] != 1.2 {
		t.Fatalf("rounds: noop %v, ssetrack %v", noop, sse)
	}
	if _, ok := rs["BenchmarkProcessor/noop"]; !ok {
		t.Errorf("BenchmarkProcessor/noop#10 not read as BenchmarkProcessor/noop: %v", rs)
	}
	// Round ratios 2, 1.33 and 3: the median is 2.
	if r, ok := pairedRatio(sse, noop); !ok || r != 2 {
		t.Errorf("pairedRatio = %v, %v; want 2", r, ok)
	}
	// Round ratios 1, 5 and 0.5: the median is 1, where the ratio of the
	// medians (3 / 2) would be 1.5.
	a, b := []float64{1, 10, 3}, []float64{1, 2, 6}
	if r, ok := pairedRatio(a, b); !ok || r != 1 {
		t.Errorf("pairedRatio(%v, %v) = %v, %v; want 1", a, b, r, ok)
	}
	if _, ok := pairedRatio(nil, b); ok {
		t.Error("pairedRatio with no rounds reported a ratio")
	}
}
