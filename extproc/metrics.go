package extproc

import "github.com/prometheus/client_golang/prometheus"

// Response kinds counted by ssetrack_responses_total.
const (
	kindSSE         = "sse"         // SSE response, body streamed through ssetrack
	kindPassthrough = "passthrough" // not SSE: body never sent to ssetrack
	kindEncoded     = "encoded"     // SSE with a content-encoding: left untouched
	kindError       = "error"       // SSE with a non-2xx status: left untouched
)

// metrics are the processor's Prometheus collectors. Counters are updated
// once per chunk with the chunk's totals, not once per event.
type metrics struct {
	eventsSeen      prometheus.Counter
	eventsForwarded prometheus.Counter
	eventsDeduped   prometheus.Counter
	eventsOversize  prometheus.Counter
	bytesSeen       prometheus.Counter
	bytesForwarded  prometheus.Counter
	chunks          prometheus.Counter
	chunksRewritten prometheus.Counter
	responses       *prometheus.CounterVec
	resumes         *prometheus.CounterVec
	replays         *prometheus.CounterVec
	streamsActive   prometheus.Gauge
	journalDrops    prometheus.Counter
	errors          *prometheus.CounterVec
	sessions        prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, sessions func() float64) *metrics {
	m := &metrics{
		eventsSeen: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_seen_total",
			Help: "SSE events (blocks with data or an id) parsed from upstream responses.",
		}),
		eventsForwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_forwarded_total",
			Help: "SSE events forwarded to clients.",
		}),
		eventsDeduped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_deduplicated_total",
			Help: "SSE events dropped because the client already had them.",
		}),
		eventsOversize: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_events_oversize_total",
			Help: "SSE blocks over the size limit, forwarded untouched and not tracked.",
		}),
		bytesSeen: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_response_bytes_seen_total",
			Help: "Response body bytes received from Envoy.",
		}),
		bytesForwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_response_bytes_forwarded_total",
			Help: "Response body bytes sent back to Envoy for the client.",
		}),
		chunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_response_chunks_total",
			Help: "Response body chunks processed.",
		}),
		chunksRewritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_response_chunks_rewritten_total",
			Help: "Response body chunks answered with replacement bytes (a held partial event, a dropped duplicate or a replay) instead of passing unchanged.",
		}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_responses_total",
			Help: "Responses by how ssetrack handled them (sse, passthrough, encoded, error).",
		}, []string{"kind"}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_resumes_total",
			Help: "SSE requests carrying Last-Event-ID, by whether the id was known to the session.",
		}, []string{"result"}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_replays_total",
			Help: "Resumes that missed events the gateway had delivered, by replay result (replayed, missing, incomplete, error, denied).",
		}, []string{"result"}),
		streamsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ssetrack_streams_active",
			Help: "SSE responses currently streaming through ssetrack.",
		}),
		journalDrops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_journal_rejected_total",
			Help: "Records the journal refused (queue full): events forwarded but not persisted.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_errors_total",
			Help: "Errors by kind.",
		}, []string{"kind"}),
	}
	m.sessions = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ssetrack_sessions_active",
		Help: "Sessions held in memory.",
	}, sessions)
	for _, k := range []string{kindSSE, kindPassthrough, kindEncoded, kindError} {
		m.responses.WithLabelValues(k)
	}
	for _, r := range []string{"matched", "unknown", "without_header"} {
		m.resumes.WithLabelValues(r)
	}
	for _, r := range []string{"replayed", "missing", "incomplete", "error", "denied"} {
		m.replays.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.eventsSeen, m.eventsForwarded, m.eventsDeduped, m.eventsOversize,
			m.bytesSeen, m.bytesForwarded, m.chunks, m.chunksRewritten, m.responses, m.resumes, m.replays, m.streamsActive,
			m.journalDrops, m.errors, m.sessions)
	}
	return m
}
