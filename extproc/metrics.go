package extproc

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Response kinds counted by ssetrack_responses_total.
const (
	kindSSE         = "sse"         // SSE response, body streamed through ssetrack
	kindPassthrough = "passthrough" // not SSE: body never sent to ssetrack
	kindEncoded     = "encoded"     // SSE with a content-encoding: left untouched
	kindError       = "error"       // SSE with a non-2xx status: left untouched
	kindBuffered    = "buffered"    // SSE under response_body_mode BUFFERED_PARTIAL: left untouched
	kindNotSent     = "not_sent"    // SSE whose body Envoy's config keeps from ssetrack: left untouched
)

// metrics are the processor's Prometheus collectors. Counters are updated
// once per chunk with the chunk's totals, not once per event.
type metrics struct {
	eventsSeen      prometheus.Counter
	eventsForwarded prometheus.Counter
	eventsDeduped   prometheus.Counter
	eventsAgain     prometheus.Counter
	eventsOversize  prometheus.Counter
	bytesSeen       prometheus.Counter
	bytesForwarded  prometheus.Counter
	chunks          prometheus.Counter
	chunksRewritten prometheus.Counter
	responses       *prometheus.CounterVec
	resumes         *prometheus.CounterVec
	replays         *prometheus.CounterVec
	eventsReplayed  prometheus.Counter
	streamsActive   prometheus.Gauge
	streamsEnded    prometheus.Counter
	journalDrops    prometheus.Counter
	errors          *prometheus.CounterVec
	sessions        prometheus.GaugeFunc
	// answer is ssetrack_message_seconds by message kind, curried once.
	answer [numPhases]prometheus.Observer
	// abandoned is ssetrack_responses_abandoned_seconds.
	abandoned prometheus.Observer
}

// Message kinds of ssetrack_message_seconds, Envoy's ProcessingRequest
// oneof names.
const (
	phaseRequestHeaders = iota
	phaseResponseHeaders
	phaseResponseBody
	phaseResponseTrailers
	phaseOther
	numPhases
)

var phaseNames = [numPhases]string{"request_headers", "response_headers", "response_body", "response_trailers", "other"}

// newMetrics makes the collectors and registers them with reg (none if nil).
func newMetrics(reg prometheus.Registerer, sessions func() float64) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		eventsSeen: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_seen_total",
			Help: "SSE events (blocks with data or an id) parsed from upstream responses.",
		}),
		eventsForwarded: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_forwarded_total",
			Help: "SSE events forwarded to clients.",
		}),
		eventsDeduped: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_deduplicated_total",
			Help: "SSE events dropped because the client already had them.",
		}),
		eventsAgain: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_redelivered_total",
			Help: "SSE events a resuming client said it lost, forwarded again from the upstream and not stored again (they were when first delivered).",
		}),
		eventsOversize: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_oversize_total",
			Help: "SSE blocks over the size limit, forwarded untouched and not tracked.",
		}),
		bytesSeen: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_response_bytes_seen_total",
			Help: "Response body bytes received from Envoy.",
		}),
		bytesForwarded: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_response_bytes_forwarded_total",
			Help: "Response body bytes sent back to Envoy for the client.",
		}),
		chunks: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_response_chunks_total",
			Help: "Response body chunks processed.",
		}),
		chunksRewritten: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_response_chunks_rewritten_total",
			Help: "Response body chunks answered with replacement bytes (a held partial event, a dropped duplicate or a replay) instead of passing unchanged.",
		}),
		responses: f.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_responses_total",
			Help: "Responses by how ssetrack handled them (sse, passthrough, encoded, error, buffered, not_sent; see envoy/README.md for the last two).",
		}, []string{"kind"}),
		resumes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_resumes_total",
			Help: "SSE requests carrying Last-Event-ID, by whether the id was known to the session (matched: in its dedup window; located: found in JetStream; unknown), and resumes without the header (without_header).",
		}, []string{"result"}),
		replays: f.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_replays_total",
			Help: "Resumes that missed events the gateway had delivered, by replay result (replayed, missing, incomplete, error, denied, too_large).",
		}, []string{"result"}),
		eventsReplayed: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_replayed_total",
			Help: "Events with an id sent to resuming clients from the journal (replays_total{result=\"replayed\"} counts the replays).",
		}),
		streamsEnded: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_streams_ended_total",
			Help: "SSE responses ssetrack ended as it stopped (serve --drain-delay), so that their clients resume on another replica.",
		}),
		streamsActive: f.NewGauge(prometheus.GaugeOpts{
			Name: "ssetrack_streams_active",
			Help: "SSE responses currently streaming through ssetrack.",
		}),
		journalDrops: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_journal_rejected_total",
			Help: "Records the journal refused (queue full): events forwarded but not persisted.",
		}),
		errors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_errors_total",
			Help: "Errors by kind: send (an answer Envoy's stream no longer took), protocol (a header message repeated on one stream), " +
				"session_acquire, locate (a journal search for an old Last-Event-ID cut short), " +
				"session_id_too_long, session_id_conflict and last_event_id_conflict (a header repeated with different values: no session), " +
				"last_event_id_invalid, partial_event_cut and partial_event_unsent (see README's bad-input table).",
		}, []string{"kind"}),
	}
	m.sessions = f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ssetrack_sessions_active",
		Help: "Sessions held in memory.",
	}, sessions)
	answer := f.NewHistogramVec(prometheus.HistogramOpts{
		Name: "ssetrack_message_seconds",
		Help: "Time from receiving an ext_proc message from Envoy to handing its answer to gRPC, by message kind. " +
			"Keep it well under the filter's message_timeout; it does not include time queued in gRPC before ssetrack reads the message.",
		// 25µs to about 1.6s: a body chunk takes microseconds, a header
		// message with a history load or a replay up to --journal-timeout.
		Buckets: prometheus.ExponentialBuckets(25e-6, 2, 17),
	}, []string{"message"})
	for i, n := range phaseNames {
		m.answer[i] = answer.WithLabelValues(n)
	}
	m.abandoned = f.NewHistogram(prometheus.HistogramOpts{
		Name: "ssetrack_responses_abandoned_seconds",
		Help: "Responses whose ext_proc stream Envoy ended while ssetrack waited for the response's headers or for more of its SSE body: " +
			"the client went away, or Envoy gave up on a message (message_timeout, then failure_mode_allow), by the time from ssetrack's last answer on the stream to that end. " +
			"With clients that stay, and no stream_idle_timeout, route timeout or upstream reset ending streams, a count near Envoy's message_timeouts with times above the filter's message_timeout means Envoy gave up on streams ssetrack had answered in full: what it waited for (a message not yet sent, or an answer not yet read) was on its side.",
		// 1 ms to 60 s, with Envoy's default message_timeout (200 ms) a bound.
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .2, .5, 1, 2.5, 5, 10, 30, 60},
	})
	for _, k := range []string{kindSSE, kindPassthrough, kindEncoded, kindError, kindBuffered, kindNotSent} {
		m.responses.WithLabelValues(k)
	}
	for _, r := range []string{"matched", "located", "unknown", "without_header"} {
		m.resumes.WithLabelValues(r)
	}
	for _, r := range []string{replayDone, replayMissing, replayIncomplete, replayFailed, replayDenied, replayTooLarge} {
		m.replays.WithLabelValues(r)
	}
	for _, k := range errorKinds {
		m.errors.WithLabelValues(k)
	}
	return m
}

// errorKinds are the kind labels of ssetrack_errors_total.
var errorKinds = []string{
	"send", "protocol", "session_acquire", "locate", "session_id_too_long", "session_id_conflict",
	"last_event_id_conflict", "last_event_id_invalid", "partial_event_cut", "partial_event_unsent",
}

// chunkCounts are one body chunk's totals, added to the metrics once per
// chunk rather than once per event.
type chunkCounts struct {
	seen, forwarded, deduped, again, oversize int // events
	bytesIn, bytesOut                         int
	rewritten                                 bool // answered with replacement bytes
}

// addChunk adds a chunk's totals.
func (m *metrics) addChunk(c *chunkCounts) {
	m.chunks.Inc()
	m.bytesSeen.Add(float64(c.bytesIn))
	m.bytesForwarded.Add(float64(c.bytesOut))
	if c.rewritten {
		m.chunksRewritten.Inc()
	}
	if c.seen > 0 {
		m.eventsSeen.Add(float64(c.seen))
		m.eventsForwarded.Add(float64(c.forwarded))
	}
	if c.deduped > 0 {
		m.eventsDeduped.Add(float64(c.deduped))
	}
	if c.again > 0 {
		m.eventsAgain.Add(float64(c.again))
	}
	if c.oversize > 0 {
		m.eventsOversize.Add(float64(c.oversize))
	}
}
