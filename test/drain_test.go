package e2e

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/test/harness"
)

// TestDrainMovesStreams stops one of two ssetrack replicas (SIGTERM, --drain-delay) while a
// stream runs on it, in the deployment envoy/README.md describes: the ssetrack cluster has
// an active gRPC health check, replica A in priority 0 and B in priority 1. During the drain
// A reports NOT_SERVING and Envoy moves new streams to B; then A ends the open stream at its
// next chunk (recorded, not forwarded), Envoy resets the client's stream, and the client's
// resume on B gets the chunk's event replayed from JetStream. The upstream continues live
// (it ignores Last-Event-ID), so the client ends with every event exactly once only if the
// cut chunk was recorded and replayed; without the ending, A's stream would go on through
// Envoy without ssetrack once A stops.
func TestDrainMovesStreams(t *testing.T) {
	requireFaultPrereqs(t)
	ns := harness.StartNATSServer(t)
	a := harness.StartSsetrack(t, harness.SsetrackOptions{Name: "ssetrack-a", NATSURL: ns.URL(), LogLevel: "info", Args: []string{"--drain-delay", "2s"}})
	b := harness.StartSsetrack(t, harness.SsetrackOptions{Name: "ssetrack-b", NATSURL: ns.URL(), LogLevel: "info"})
	src := harness.ShippedEnvoyConfig(t, "envoy.yaml")
	const endpoints = `      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 9001 }
`
	if !strings.Contains(src, endpoints) {
		t.Fatalf("envoy.yaml: the ssetrack cluster's endpoints not found as\n%s", endpoints)
	}
	src = strings.Replace(src, endpoints, endpoints+`      - priority: 1
        lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: `+strconv.Itoa(b.GRPCPort)+` }
    health_checks:
    - timeout: 1s
      interval: 0.1s
      no_traffic_interval: 0.1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      grpc_health_check: {}
`, 1)
	up := harness.StartUpstream(t)
	fx := sourceFixture(t, up, a, "envoy-drain.yaml", src)

	const total, first = 200, 100
	evs := numberedEvents(total)
	m := newMeter(first)
	t.Cleanup(func() { m.allow(total) })
	path := up.Handle(func(n int, r *http.Request) harness.Reply {
		if n == 0 {
			return meteredReply(evs, 5*time.Millisecond, m)
		}
		// Live: from the first event the upstream has not written yet.
		rest := evs[first+1:]
		return harness.Reply{Body: harness.EncodeAll(rest), Cuts: harness.EventCuts(rest)}
	})
	sid := newSession(t)
	ls := openLive(t, fx, path, sessionHeader(sid))
	ls.waitEvents(t, first)
	waitPublished(t, fx, first, "the first events")

	if err := a.Proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// A ends streams once the drain delay is over and it shuts down.
	harness.WaitUntil(t, 30*time.Second, func() error {
		if !strings.Contains(a.Proc.Output(), "shutting down") {
			return errors.New("ssetrack-a has not begun to shut down")
		}
		return nil
	})
	m.allow(first + 1) // one more chunk: A records it and ends the stream
	select {
	case <-ls.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the client's stream was not ended (%d events)", ls.events.Load())
	}
	got1 := ls.bytes()
	<-a.Proc.Done() // A's journal is flushed

	last := allIDs(got1)[len(allIDs(got1))-1]
	resp, got2 := fx.get(t, path, http.Header{sessionH: {sid}, "Last-Event-Id": {last}})
	if h := resp.Header.Get("Ssetrack-Replay"); h != "replayed" {
		t.Errorf("resume on B: Ssetrack-Replay %q, want replayed", h)
	}
	ids := append(allIDs(got1), allIDs(got2)...)
	if r := idsReport(ids, total); r != "" {
		t.Errorf("client, across the cut: %s", r)
	}
	if n := b.Metrics(t).Sum(`ssetrack_replays_total{result="replayed"}`); n != 1 {
		t.Errorf("B replayed %v times, want 1", n)
	}
}
