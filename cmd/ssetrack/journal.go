package main

import (
	"errors"
	"flag"
	"log/slog"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssetrack/ssetrack/extproc/journal"
)

// defaultDataDir is where `ssetrack serve` keeps its state by default.
const defaultDataDir = "ssetrack-data"

// journalFlags are the NATS and JetStream flags shared by serve and tail.
// They fill journal.Options directly; the journal package validates them.
type journalFlags struct {
	enabled bool
	urls    stringList
	dataDir string
	opts    journal.Options
	// flags maps a journal.Options field path to its flag, to report the
	// journal's validation errors in the flags' words.
	flags map[string]string
}

// name records that field is set by the flag called flag, and returns flag.
func (j *journalFlags) name(field, flag string) string {
	if j.flags == nil {
		j.flags = make(map[string]string)
	}
	j.flags[field] = flag
	return flag
}

func (j *journalFlags) register(fs *flag.FlagSet) {
	c := &j.opts.Config
	fs.BoolVar(&j.enabled, "journal", true, "persist events to NATS JetStream (false: dedup only, nothing persisted)")
	j.registerConn(fs, "empty: run an embedded server")
	fs.StringVar(&j.opts.Server.Listen, j.name("Server.Listen", "nats-listen"), journal.DefaultServerListen, "client `address` of the embedded NATS server (used when --nats-url is empty)")
	fs.StringVar(&j.dataDir, j.name("Server.DataDir", "data-dir"), defaultDataDir, "`directory` for the embedded JetStream store")
	fs.IntVar(&c.Replicas, j.name("Config.Replicas", "replicas"), journal.DefaultReplicas, "JetStream stream and KV replicas (1..3)")
	fs.DurationVar(&c.MaxAge, j.name("Config.MaxAge", "max-age"), journal.DefaultMaxAge, "keep events in JetStream this long (0: forever)")
	fs.Int64Var(&c.MaxBytes, j.name("Config.MaxBytes", "max-bytes"), 0, "JetStream stream size limit in `bytes` (0: none)")
	fs.Int64Var(&c.MaxMsgsPerSubject, j.name("Config.MaxMsgsPerSubject", "max-msgs-per-session"), 0, "batches kept per session subject (0: no limit)")
	fs.DurationVar(&c.DuplicateWindow, j.name("Config.DuplicateWindow", "duplicate-window"), journal.DefaultDuplicateWindow, "JetStream duplicate window: retried batches inside it are stored once")
	fs.IntVar(&c.QueueSize, j.name("Config.QueueSize", "queue-size"), journal.DefaultQueueSize, "records the journal queue holds (also while NATS is not ready); past it events are forwarded but not persisted (counted)")
	fs.Int64Var(&c.QueueBytes, j.name("Config.QueueBytes", "queue-bytes"), journal.DefaultQueueBytes, "SSE `bytes` the journal queue holds, with --queue-size")
	fs.IntVar(&c.Batch.MaxEvents, j.name("Config.Batch.MaxEvents", "batch-events"), journal.DefaultBatchEvents, "flush a batch at this many events")
	fs.IntVar(&c.Batch.MaxBytes, j.name("Config.Batch.MaxBytes", "batch-bytes"), journal.DefaultBatchBytes, "flush a batch at this many `bytes`")
	fs.DurationVar(&c.Batch.MaxDelay, j.name("Config.Batch.MaxDelay", "batch-delay"), journal.DefaultBatchDelay, "flush a batch this long after its first event")
	fs.DurationVar(&c.PublishTimeout, j.name("Config.PublishTimeout", "publish-timeout"), journal.DefaultPublishTimeout, "wait this long for a publish ack before retrying")
	fs.IntVar(&c.MaxReplayBytes, j.name("Config.MaxReplayBytes", "max-replay-size"), journal.DefaultMaxReplayBytes, "most SSE `bytes` one replay sends; a longer one is refused whole (Ssetrack-Replay: too_large)")
}

// registerConn adds the flags that say where NATS is and how to reach it;
// empty says what an empty --nats-url does.
func (j *journalFlags) registerConn(fs *flag.FlagSet, empty string) {
	n, c := &j.opts.Conn, &j.opts.Config
	fs.Var(&j.urls, j.name("Conn.URLs", "nats-url"), "NATS `url`; repeatable or comma-separated ("+empty+")")
	fs.StringVar(&n.CredsFile, j.name("Conn.CredsFile", "nats-creds"), "", "NATS credentials `file`")
	fs.StringVar(&n.NKeySeedFile, j.name("Conn.NKeySeedFile", "nats-nkey"), "", "NATS nkey seed `file`")
	fs.StringVar(&n.TLSCAFile, j.name("Conn.TLSCAFile", "nats-tls-ca"), "", "PEM CA `file` to verify the NATS servers")
	fs.StringVar(&n.TLSCertFile, j.name("Conn.TLSCertFile", "nats-tls-cert"), "", "PEM client certificate `file` for NATS")
	fs.StringVar(&n.TLSKeyFile, j.name("Conn.TLSKeyFile", "nats-tls-key"), "", "PEM client key `file` for NATS")
	fs.DurationVar(&n.PingInterval, j.name("Conn.PingInterval", "nats-ping-interval"), journal.DefaultPingInterval, "ping the NATS server this often; after two unanswered pings move to another server")
	fs.StringVar(&c.Stream, j.name("Config.Stream", "stream"), journal.DefaultStream, "JetStream stream `name`")
	fs.StringVar(&c.SubjectPrefix, j.name("Config.SubjectPrefix", "subject-prefix"), journal.DefaultSubjectPrefix, "subject `prefix`: a session's events go to <prefix>.<encoded session id>")
	fs.StringVar(&c.Bucket, j.name("Config.Bucket", "kv-bucket"), journal.DefaultBucket, "JetStream KV `bucket` for session state")
}

// options returns the journal's options; window is the dedup window, the
// history a session load returns.
func (j *journalFlags) options(window int, log *slog.Logger, reg prometheus.Registerer) journal.Options {
	o := j.opts
	o.Conn.URLs = j.urls.values
	o.Server.DataDir = filepath.Join(j.dataDir, "jetstream")
	o.Config.HistoryEvents = window
	o.Logger, o.Registerer = log, reg
	return o
}

// validate returns the journal's validation errors, fields named as flags.
func (j *journalFlags) validate(window int) []error {
	err := j.options(window, nil, nil).Validate()
	var out []error
	var walk func(error)
	walk = func(err error) {
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range joined.Unwrap() {
				walk(e)
			}
			return
		}
		var fe *journal.FieldError
		if errors.As(err, &fe) {
			err = errors.New(fe.Describe(func(field string) string {
				if f, ok := j.flags[field]; ok {
					return "--" + f
				}
				return field
			}))
		}
		out = append(out, err)
	}
	if err != nil {
		walk(err)
	}
	return out
}
