package journal

import (
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for the zero values of Config.
const (
	DefaultStream          = "SSETRACK"
	DefaultSubjectPrefix   = "ssetrack.events"
	DefaultBucket          = "ssetrack-sessions"
	DefaultDuplicateWindow = 2 * time.Minute
	DefaultQueueSize       = 65536
	DefaultQueueBytes      = 256 << 20
	DefaultBatchEvents     = 256
	DefaultBatchBytes      = 60 << 10
	DefaultBatchDelay      = 20 * time.Millisecond
	DefaultStateInterval   = 100 * time.Millisecond
	DefaultPublishTimeout  = 5 * time.Second
	DefaultMaxInFlight     = 256
	DefaultDrainTimeout    = 10 * time.Second
	DefaultHistoryEvents   = 1024
	DefaultMaxReplayBytes  = 16 << 20
	DefaultReplicas        = 1
)

// DefaultMaxAge is the retention `ssetrack serve` gives the stream and the
// bucket unless told otherwise. Config's zero MaxAge keeps batches forever.
const DefaultMaxAge = 24 * time.Hour

// Config configures the JetStream layout and the Publisher. The zero value
// is usable: every zero field takes the default written next to it.
type Config struct {
	// Stream is the JetStream stream name. Default "SSETRACK".
	Stream string
	// SubjectPrefix is prepended to each session's subject token; the
	// stream captures SubjectPrefix + ".>". Default "ssetrack.events".
	SubjectPrefix string
	// Bucket is the KV bucket holding session state. Default
	// "ssetrack-sessions".
	Bucket string

	// Storage selects file (the zero value) or memory storage for the
	// stream and the bucket.
	Storage jetstream.StorageType
	// Replicas is the replica count of the stream and the bucket, 1..3.
	// Default 1.
	Replicas int
	// MaxAge bounds how long batches are kept. Zero keeps them forever.
	MaxAge time.Duration
	// MaxBytes bounds the stream's size; the oldest batches are discarded
	// first. Zero means unlimited.
	MaxBytes int64
	// MaxMsgsPerSubject bounds the batches kept per session. Zero means
	// unlimited.
	MaxMsgsPerSubject int64
	// DuplicateWindow is the stream's Nats-Msg-Id dedup window. A batch is
	// retried only while it is younger than this window, so that a retry is
	// always a server-side duplicate. Default 2m.
	DuplicateWindow time.Duration

	// QueueSize bounds the records the Publisher holds, from Append until
	// their batch is acknowledged (or given up). Append drops records
	// beyond it. Default 65536.
	QueueSize int
	// QueueBytes bounds the SSE bytes (Record.Data) of the records held,
	// likewise: a record is one body chunk's events, so QueueSize alone
	// would let an outage hold QueueSize chunks. Default 256 MiB.
	QueueBytes int64
	// Batch bounds one JetStream message.
	Batch BatchConfig
	// StateInterval is the KV flush cycle: each session's state is written
	// at most once per interval, however many events it had. Default 100ms.
	StateInterval time.Duration
	// PublishTimeout bounds the wait for one publish acknowledgement before
	// the batch is retried with the same message id. Default 5s.
	PublishTimeout time.Duration
	// MaxInFlight bounds unacknowledged batch publishes over all sessions
	// (each session has at most one). Default 256.
	MaxInFlight int
	// DrainTimeout bounds Shutdown when its context has no deadline.
	// Default 10s.
	DrainTimeout time.Duration

	// HistoryEvents is how many of a session's most recent event ids Load
	// returns. Default 1024.
	HistoryEvents int
	// MaxReplayBytes bounds the SSE bytes of one replay, which leaves in a
	// single ext_proc answer; a longer one is refused whole
	// (session.ErrHistoryTooLarge). Default 16 MiB.
	MaxReplayBytes int

	// Lost, if set, is told of each record whose events the Publisher
	// gives up on after Append took it: events larger than the server's
	// max_payload, or a batch whose publish was given up
	// (session.Table.Lost marks the stream, so that a replay that would
	// lack them is refused). It runs on the Publisher's goroutine and must
	// not block; records Append refuses are the caller's to handle.
	Lost func(sessionID, stream string)

	// TakenOver, if set, is told of each takeover notice from another
	// writer (Publisher.Takeover): a client resumed stream of session
	// sessionID there, from lastEventID. It reports whether the stream's
	// latest response here was superseded (session.Table.TakenOver), for
	// ssetrack_journal_takeover_notices_total. It runs on the notices'
	// subscription goroutine, one notice at a time, and must not block.
	TakenOver func(sessionID, stream, lastEventID string) bool
}

// BatchConfig bounds a batch: it is published as soon as one bound is hit,
// and at the end of its stream.
type BatchConfig struct {
	// MaxEvents is the most events in one batch. Default 256.
	MaxEvents int
	// MaxBytes is the most payload bytes in one batch. A single record
	// larger than this is published alone. Default 60 KiB: a batch and its
	// headers then fit the NATS server's 64 KiB read buffer, which it parses
	// in place; a message over it arrives in several reads, and the server
	// first copies it into a buffer of its own (nats-server's parser, "split
	// buffer"), which doubles what storing a batch allocates.
	MaxBytes int
	// MaxDelay is how long the first record of a batch waits for more.
	// Default 20ms.
	MaxDelay time.Duration
}

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defI := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Stream, DefaultStream)
	def(&c.SubjectPrefix, DefaultSubjectPrefix)
	def(&c.Bucket, DefaultBucket)
	defI(&c.Replicas, DefaultReplicas)
	defD(&c.DuplicateWindow, DefaultDuplicateWindow)
	defI(&c.QueueSize, DefaultQueueSize)
	if c.QueueBytes == 0 {
		c.QueueBytes = DefaultQueueBytes
	}
	defI(&c.Batch.MaxEvents, DefaultBatchEvents)
	defI(&c.Batch.MaxBytes, DefaultBatchBytes)
	defD(&c.Batch.MaxDelay, DefaultBatchDelay)
	defD(&c.StateInterval, DefaultStateInterval)
	defD(&c.PublishTimeout, DefaultPublishTimeout)
	defI(&c.MaxInFlight, DefaultMaxInFlight)
	defD(&c.DrainTimeout, DefaultDrainTimeout)
	defI(&c.HistoryEvents, DefaultHistoryEvents)
	defI(&c.MaxReplayBytes, DefaultMaxReplayBytes)
	return c
}

// validate reports every problem of a defaulted config at once, each a
// *FieldError with its path under Options ("Config.Replicas").
func (c Config) validate() error {
	var errs []error
	bad := func(field string, v any, rule string) {
		errs = append(errs, &FieldError{Field: "Config." + field, Value: v, Rule: rule})
	}
	if c.Replicas < 1 || c.Replicas > 3 {
		bad("Replicas", c.Replicas, "want 1..3")
	}
	if c.Storage != jetstream.FileStorage && c.Storage != jetstream.MemoryStorage {
		bad("Storage", c.Storage, "want file or memory")
	}
	if !validSubjectPrefix(c.SubjectPrefix) {
		bad("SubjectPrefix", c.SubjectPrefix, "want dot-separated tokens without wildcards or spaces")
	}
	if !validName(c.Stream) {
		bad("Stream", c.Stream, "want 1..128 of A-Z a-z 0-9 - _")
	}
	if !validName(c.Bucket) {
		bad("Bucket", c.Bucket, "want 1..128 of A-Z a-z 0-9 - _")
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"DuplicateWindow", c.DuplicateWindow}, {"Batch.MaxDelay", c.Batch.MaxDelay},
		{"StateInterval", c.StateInterval}, {"PublishTimeout", c.PublishTimeout},
		{"DrainTimeout", c.DrainTimeout}, {"MaxAge", c.MaxAge},
	} {
		if d.v < 0 {
			bad(d.field, d.v, "want >= 0")
		}
	}
	for _, n := range []struct {
		field string
		v     int64
	}{
		{"MaxBytes", c.MaxBytes}, {"MaxMsgsPerSubject", c.MaxMsgsPerSubject},
		{"QueueSize", int64(c.QueueSize)}, {"QueueBytes", c.QueueBytes}, {"Batch.MaxEvents", int64(c.Batch.MaxEvents)},
		{"Batch.MaxBytes", int64(c.Batch.MaxBytes)}, {"MaxInFlight", int64(c.MaxInFlight)},
		{"HistoryEvents", int64(c.HistoryEvents)}, {"MaxReplayBytes", int64(c.MaxReplayBytes)},
	} {
		if n.v < 0 {
			bad(n.field, n.v, "want >= 0")
		}
	}
	if c.PublishTimeout >= c.DuplicateWindow && c.DuplicateWindow > 0 {
		errs = append(errs, &FieldError{Field: "Config.PublishTimeout", Value: c.PublishTimeout,
			Rule: "want shorter than", Other: "Config.DuplicateWindow"})
	}
	return errors.Join(errs...)
}

// validName accepts JetStream stream and bucket names.
func validName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validSubjectPrefix accepts literal subjects: dot-separated non-empty
// tokens without wildcards or whitespace.
func validSubjectPrefix(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '*' || c == '>' || c <= ' ' || c == 0x7f:
			return false
		case c == '.' && s[i-1] == '.':
			return false
		}
	}
	return true
}

// streamConfig is the JetStream stream holding the batches.
func (c Config) streamConfig() jetstream.StreamConfig {
	sc := jetstream.StreamConfig{
		Name:              c.Stream,
		Description:       "ssetrack SSE event batches, one subject per session",
		Subjects:          []string{c.SubjectPrefix + ".>"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		Storage:           c.Storage,
		Replicas:          c.Replicas,
		MaxAge:            c.MaxAge,
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxMsgsPerSubject: -1,
		Duplicates:        c.DuplicateWindow,
		AllowDirect:       true,
	}
	if c.MaxBytes > 0 {
		sc.MaxBytes = c.MaxBytes
	}
	if c.MaxMsgsPerSubject > 0 {
		sc.MaxMsgsPerSubject = c.MaxMsgsPerSubject
	}
	return sc
}

// kvConfig is the bucket holding session state, latest value only.
func (c Config) kvConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      c.Bucket,
		Description: "ssetrack session state, one key per session",
		History:     1,
		TTL:         c.MaxAge,
		Storage:     c.Storage,
		Replicas:    c.Replicas,
	}
}
