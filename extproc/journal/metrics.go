package journal

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics holds the journal's Prometheus collectors.
type metrics struct {
	depth     prometheus.Gauge
	dropped   *prometheus.CounterVec
	batches   prometheus.Counter
	events    prometheus.Counter
	errors    prometheus.Counter
	retries   prometheus.Counter
	latency   prometheus.Histogram
	kvWrites  prometheus.Counter
	kvErrors  prometheus.Counter
	loadTimer prometheus.Histogram
	// staleSessions counts cached sessions found written by another writer.
	staleSessions prometheus.Counter
	// takeovers counts takeover notices (takeover.go) by result.
	takeovers *prometheus.CounterVec
}

// Reasons a record is dropped, the label of records_dropped_total.
const (
	dropQueueFull = "queue_full"
	dropClosed    = "closed"
	dropGaveUp    = "publish_failed"
	dropTooLarge  = "too_large" // an event over the server's max_payload: one count per event
	dropShutdown  = "shutdown"
)

// newMetrics makes the collectors and registers them with reg (none when
// reg is nil).
func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		depth: f.NewGauge(prometheus.GaugeOpts{
			Name: "ssetrack_journal_queue_depth",
			Help: "Records held by the journal publisher: queued, batching or awaiting an ack.",
		}),
		dropped: f.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_journal_records_dropped_total",
			Help: "Records (each a run of one chunk's events) lost by the journal, by reason (queue_full, closed, publish_failed, too_large, shutdown).",
		}, []string{"reason"}),
		batches: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_journal_batches_published_total",
			Help: "Batches acknowledged by JetStream.",
		}),
		events: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_journal_events_published_total",
			Help: "Events in batches acknowledged by JetStream.",
		}),
		errors: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_journal_publish_errors_total",
			Help: "Failed batch publish attempts (each is retried until the duplicate window runs out).",
		}),
		retries: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_journal_publish_retries_total",
			Help: "Batch publish attempts after a failed one, with the same message id.",
		}),
		latency: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "ssetrack_journal_publish_latency_seconds",
			Help:    "Time from a record's Append to its batch's JetStream ack.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		kvWrites: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_journal_kv_writes_total",
			Help: "Session state writes to the KV bucket (coalesced: at most one per session per cycle).",
		}),
		kvErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_journal_kv_errors_total",
			Help: "Failed session state writes (retried next cycle).",
		}),
		loadTimer: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "ssetrack_journal_load_seconds",
			Help:    "Time to load a session's history from JetStream.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		staleSessions: f.NewCounter(prometheus.CounterOpts{
			Name: "ssetrack_journal_stale_sessions_total",
			Help: "Cached sessions found last written by another ssetrack process, and so reloaded from JetStream.",
		}),
		takeovers: f.NewCounterVec(prometheus.CounterOpts{
			Name: "ssetrack_journal_takeover_notices_total",
			Help: "Takeover notices (a client resumed a stream on another replica) by result: sent; received and superseded the stream's latest response here (if still open), which delivered the client's Last-Event-ID; received and ignored (no such response here); malformed.",
		}, []string{"result"}),
	}
	// Every label value at 0 from the start, so alerts and rates have a
	// series before the first occurrence.
	for _, r := range []string{dropQueueFull, dropClosed, dropGaveUp, dropTooLarge, dropShutdown} {
		m.dropped.WithLabelValues(r)
	}
	for _, r := range []string{"sent", "superseded", "ignored", "malformed"} {
		m.takeovers.WithLabelValues(r)
	}
	return m
}

func (m *metrics) drop(reason string, n int) {
	m.dropped.WithLabelValues(reason).Add(float64(n))
}
