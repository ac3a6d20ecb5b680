package journal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// Publisher is the JetStream journal: it implements session.Loader and extproc's Recorder and Replayer.
//
// Append hands records to a bounded queue and returns at once. One batcher
// goroutine owns all batching state: it coalesces consecutive records of a
// (session, stream) pair into batches and publishes them asynchronously.
// Append does not wake the batcher for every record: the batcher takes the
// queue whole whenever it wakes, and Append wakes it only when it would not
// wake by itself before the new record's batch is due (Config.Batch.MaxDelay
// after the record), when a stream ends, or when inboxWake records or a
// batch's worth of bytes (Config.Batch.MaxBytes) wait. A stream of a few events
// per batch delay costs a few wakeups per batch, not one per record.
// Each session has at most one batch in flight, and a failed batch is
// retried (same Nats-Msg-Id, so a retry that follows a lost ack is a
// server-side duplicate) before the session's next batch is sent: batches
// of one session land in sequence order, while sessions proceed in
// parallel up to Config.MaxInFlight. Records stay counted against
// Config.QueueSize and their bytes against Config.QueueBytes until their
// batch is acknowledged, so memory is bounded during a NATS outage too.
//
// Methods are safe for concurrent use.
type Publisher struct {
	cfg    Config
	js     jetstream.JetStream
	stream jetstream.Stream
	kv     jetstream.KeyValue
	log    *slog.Logger
	m      *metrics
	state  *stateWriter

	mu         sync.Mutex // guards closed, inbox, inboxBytes, unstored, provisional and flushes
	closed     bool
	inbox      []queued // records from Append the batcher has not taken yet
	inboxBytes int      // their payload bytes
	// unstored is each session's highest sequence number among the records
	// appended and not yet acknowledged or given up. Load reports it, so a
	// session reloaded (evicted from memory, say) while its last events are
	// on their way never numbers new events with their numbers.
	unstored map[string]uint64
	// provisional lists, by session, the runs of records appended with
	// provisional numbers (session.Record.Base) that the batcher still
	// holds, in the order they came: whoever learns the session's last
	// stored number resolves their bases, one after the other
	// (resolveHeld).
	provisional map[string][]provisionalRun
	// flushes are the Flush calls waiting, by session.
	flushes map[string][]flushWait
	// wake (capacity 1) tells the batcher to take the inbox now.
	wake chan struct{}
	// wakeAt is when the batcher wakes by itself next, in nanoseconds since
	// epoch (monotonic: a wall clock jump changes nothing): batcherAwake
	// while it runs (it looks at the inbox before it sleeps), batcherIdle
	// when only a wake or a result will wake it.
	wakeAt atomic.Int64
	epoch  time.Time
	wakes  atomic.Int64 // wakes Append sent, for tests

	// held counts records from Append until ack or loss, and heldBytes
	// their Data's bytes; they bound memory.
	held        atomic.Int64
	heldBytes   atomic.Int64
	lastDropLog atomic.Int64
	// dropsToLog counts queue-full drops since the last log line.
	dropsToLog atomic.Int64

	results  chan result
	resolved chan result // resolve's outcomes (unbuffered)
	// resolveSlots bounds the resolve goroutines reading at once
	// (Config.MaxInFlight).
	resolveSlots chan struct{}
	abort        chan struct{} // closed when Shutdown's context expires
	done         chan struct{} // closed when the batcher returns

	// ackHook, set by tests before any Append, sees each record's
	// enqueue-to-ack latency on the batcher goroutine.
	ackHook func(time.Duration)
	// takeHook, set by tests before any Append, runs on the batcher
	// goroutine right after it takes the inbox.
	takeHook func()

	// writer names this Publisher in batch headers, message ids and
	// takeover notices.
	writer string
	// takeoverSubj is the subject of takeover notices (takeover.go);
	// takeoverSub receives other writers' notices, nil without
	// Config.TakenOver.
	takeoverSubj string
	takeoverSub  *nats.Subscription
	// maxRecord is the most payload bytes one batch message may carry: the
	// server's max_payload less headerRoom. Larger records are split.
	maxRecord int
}

var _ session.Loader = (*Publisher)(nil)

// queued is a record with its enqueue time, the start of its latency, or
// a request to publish the open batch of rec.Session now (flush).
type queued struct {
	rec   session.Record
	at    time.Time
	flush bool
}

// flushWait is a Flush call waiting for its session's records through
// sequence number through to be stored.
type flushWait struct {
	through uint64
	done    chan struct{}
}

// New creates or updates the stream and the KV bucket described by cfg on
// the connection nc and starts a Publisher. log may be nil (no logs); reg
// may be nil (metrics not registered). The caller keeps ownership of nc and
// drains it after Shutdown. Open wraps New with the connection's lifecycle.
func New(ctx context.Context, nc *nats.Conn, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Publisher, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return startPublisher(ctx, nc, cfg, log, newMetrics(reg))
}

// startPublisher is New with a validated, defaulted cfg and metrics already
// made (a Journal makes them before NATS is there).
func startPublisher(ctx context.Context, nc *nats.Conn, cfg Config, log *slog.Logger, m *metrics) (*Publisher, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight+16),
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout))
	if err != nil {
		return nil, fmt.Errorf("jetstream context: %w", err)
	}
	stream, kv, err := setup(ctx, js, cfg, log)
	if err != nil {
		return nil, err
	}
	// KV writes get their own async publish context so a large cycle never
	// stalls batch publishes.
	kvjs, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout))
	if err != nil {
		return nil, fmt.Errorf("jetstream context: %w", err)
	}
	p := &Publisher{
		cfg:          cfg,
		js:           js,
		stream:       stream,
		kv:           kv,
		log:          log,
		m:            m,
		state:        newStateWriter(kvjs, kv, cfg, log, m),
		wake:         make(chan struct{}, 1),
		unstored:     make(map[string]uint64),
		provisional:  make(map[string][]provisionalRun),
		flushes:      make(map[string][]flushWait),
		epoch:        time.Now(),
		results:      make(chan result, cfg.MaxInFlight),
		resolved:     make(chan result),
		resolveSlots: make(chan struct{}, cfg.MaxInFlight),
		abort:        make(chan struct{}),
		done:         make(chan struct{}),
		writer:       newWriterID(),
		takeoverSubj: takeoverPrefix + cfg.Stream,
		// The server's limit as of this connection (its INFO); a cluster
		// whose servers differ should be configured alike.
		maxRecord: max(int(nc.MaxPayload())-headerRoom, 1<<10),
	}
	if err := p.subscribeTakeovers(); err != nil {
		return nil, fmt.Errorf("takeover notices: %w", err)
	}
	go p.state.run()
	go p.run()
	return p, nil
}

// setup creates or updates the stream and the bucket. The flags decide the
// stream's settings: an existing stream's that differ (an operator's edit,
// a replica started with other flags) are set back, each logged at warn.
// An existing stream whose subjects are not ssetrack's is another
// application's, or an earlier --subject-prefix's: it is left as it is,
// and setup fails saying so.
func setup(ctx context.Context, js jetstream.JetStream, cfg Config, log *slog.Logger) (jetstream.Stream, jetstream.KeyValue, error) {
	want := cfg.streamConfig()
	switch existing, err := js.Stream(ctx, cfg.Stream); {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return nil, nil, fmt.Errorf("look up stream %s: %w", cfg.Stream, err)
	default:
		have := existing.CachedInfo().Config
		if !slices.Equal(have.Subjects, want.Subjects) {
			return nil, nil, fmt.Errorf("stream %s exists with subjects %q, not ssetrack's %q: left as it is; "+
				"name another stream (--stream), or remove this one", cfg.Stream, have.Subjects, want.Subjects)
		}
		if changes := streamChanges(have, want); len(changes) > 0 {
			log.Warn("journal: the stream's settings differ from the flags: setting them", "stream", cfg.Stream, "changes", changes)
		}
	}
	stream, err := js.CreateOrUpdateStream(ctx, want)
	if err != nil {
		return nil, nil, fmt.Errorf("create stream %s: %w", cfg.Stream, err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg.kvConfig())
	if err != nil {
		return nil, nil, fmt.Errorf("create kv bucket %s: %w", cfg.Bucket, err)
	}
	return stream, kv, nil
}

// Append queues rec for publishing. It never blocks: it returns false, and
// counts the loss, when the publisher holds Config.QueueSize records, or
// rec's bytes would take what it holds over Config.QueueBytes, or it is
// shutting down. The publisher owns rec's slices afterwards.
func (p *Publisher) Append(rec session.Record) bool {
	return p.enqueue(queued{rec: rec, at: time.Now()})
}

// enqueue is Append with the record's enqueue time given (a Journal hands
// over what it queued before the Publisher existed).
func (p *Publisher) enqueue(q queued) bool {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.m.drop(dropClosed, 1)
		return false
	}
	size := int64(len(q.rec.Data))
	if held, bytes := p.held.Add(1), p.heldBytes.Add(size); held > int64(p.cfg.QueueSize) || size > 0 && bytes > p.cfg.QueueBytes {
		p.held.Add(-1)
		p.heldBytes.Add(-size)
		p.mu.Unlock()
		p.m.drop(dropQueueFull, 1)
		logDrop(p.log, &p.lastDropLog, &p.dropsToLog, q.rec.Session, p.cfg)
		return false
	}
	n, full := p.push(q)
	p.mu.Unlock()
	p.m.depth.Inc()
	// The batcher stores wakeAt before it looks at the inbox a last time and
	// sleeps; this load follows the append under the same lock, so a record
	// the batcher missed sees the wakeAt it sleeps with.
	switch {
	case q.rec.End, n == inboxWake, full:
		// The end of a stream publishes its batch at once.
		p.signal()
	case n == 1:
		if p.wakeAt.Load() > p.since(q.at.Add(p.cfg.Batch.MaxDelay)) {
			p.signal()
		}
	}
	return true
}

// batchBytes is the most payload bytes of a batch of several records:
// Config.Batch.MaxBytes, or less if the server takes less (maxRecord).
func (p *Publisher) batchBytes() int { return min(p.cfg.Batch.MaxBytes, p.maxRecord) }

// push adds q to the inbox and returns the inbox's length, and full when
// q brought the inbox's bytes to a batch's worth (batchBytes). p.mu must be
// held.
func (p *Publisher) push(q queued) (n int, full bool) {
	if q.rec.Base != nil {
		if v, ok := q.rec.Base.Value(); ok {
			rebaseRecord(&q.rec, v)
		}
	}
	p.inbox = append(p.inbox, q)
	if q.rec.Base != nil {
		// Counted as unstored once the batcher makes them final
		// (releaseProvisional).
		p.holdProvisional(q.rec)
	} else if s := q.rec.LastSeq; s > p.unstored[q.rec.Session] {
		p.unstored[q.rec.Session] = s
	}
	before := p.inboxBytes
	p.inboxBytes += len(q.rec.Data)
	lim := p.batchBytes()
	return len(p.inbox), before < lim && p.inboxBytes >= lim
}

// handOver is enqueue for the records a Journal queued before the
// Publisher existed, at most QueueSize of them to a Publisher that holds
// none: they go into the inbox at once, so the batcher batches them as it
// would a burst, instead of taking the first alone.
func (p *Publisher) handOver(qs []queued) {
	if len(qs) == 0 {
		return
	}
	p.mu.Lock()
	var size int64
	for _, q := range qs {
		p.push(q)
		size += int64(len(q.rec.Data))
	}
	p.held.Add(int64(len(qs)))
	p.heldBytes.Add(size)
	p.mu.Unlock()
	p.m.depth.Add(float64(len(qs)))
	p.signal()
}

// Values of Publisher.wakeAt besides a time: idle is later than any
// deadline (Append wakes the batcher), awake earlier (it does not).
const (
	batcherIdle  = math.MaxInt64
	batcherAwake = math.MinInt64
)

// since is t in wakeAt's unit.
func (p *Publisher) since(t time.Time) int64 { return int64(t.Sub(p.epoch)) }

// inboxWake is the inbox length at which Append wakes the batcher whatever
// its timers: under load batches fill long before their delay is up, and
// are published when full.
const inboxWake = 64

// signal wakes the batcher; a wake already pending is enough.
func (p *Publisher) signal() {
	select {
	case p.wake <- struct{}{}:
		p.wakes.Add(1)
	default:
	}
}

// take returns the inbox, emptied, and whether Shutdown closed it; buf is
// the slice the batcher is done with, reused as the next inbox.
func (p *Publisher) take(buf []queued) ([]queued, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	recs := p.inbox
	clear(buf)
	p.inbox, p.inboxBytes = buf[:0], 0
	return recs, p.closed
}

// logDrop counts a queue-full loss and logs the losses at most once per
// second; last and count are the caller's.
func logDrop(log *slog.Logger, last, count *atomic.Int64, sessionID string, cfg Config) {
	count.Add(1)
	now := time.Now().UnixNano()
	prev := last.Load()
	if now-prev < int64(time.Second) || !last.CompareAndSwap(prev, now) {
		return
	}
	log.Warn("journal queue full, dropping records",
		"session", session.ShortID(sessionID), "queue_size", cfg.QueueSize, "queue_bytes", cfg.QueueBytes, "dropped", count.Swap(0))
}

// stored forgets pb's sequence numbers as unstored (acknowledged or given
// up) unless later records of the session are still on their way, and
// ends the Flush calls it satisfies. A batch given up with provisional
// numbers was never counted as unstored.
func (p *Publisher) stored(pb *pending) {
	if pb.base == nil {
		p.storedThrough(pb.Session, pb.LastSeq)
	}
}

// storedThrough is stored for the records of session sessionID through
// sequence number seq.
func (p *Publisher) storedThrough(sessionID string, seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.unstored[sessionID]; ok && s <= seq {
		delete(p.unstored, sessionID)
	}
	if ws := p.flushes[sessionID]; len(ws) > 0 {
		ws = slices.DeleteFunc(ws, func(w flushWait) bool {
			if w.through <= seq {
				close(w.done)
				return true
			}
			return false
		})
		if len(ws) == 0 {
			delete(p.flushes, sessionID)
		} else {
			p.flushes[sessionID] = ws
		}
	}
}

// Flush publishes the session's open batch now, instead of after
// Batch.MaxDelay, and waits until every record of the session appended
// before the call is acknowledged, or given up: a replay reads what a
// resuming client missed from JetStream, and a client that resumes at once
// missed events still on their way to it. Records whose numbers are still
// provisional (session.Record.Base) are not waited for: a replay then finds
// the history incomplete. It returns ctx's error when ctx ends first, nil
// at once when nothing of the session is on its way.
func (p *Publisher) Flush(ctx context.Context, sessionID string) error {
	p.mu.Lock()
	through := p.unstored[sessionID]
	if through == 0 || p.closed {
		p.mu.Unlock()
		return nil
	}
	w := flushWait{through: through, done: make(chan struct{})}
	p.flushes[sessionID] = append(p.flushes[sessionID], w)
	p.inbox = append(p.inbox, queued{rec: session.Record{Session: sessionID}, flush: true})
	p.mu.Unlock()
	p.signal()
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		p.mu.Lock()
		if ws := slices.DeleteFunc(p.flushes[sessionID], func(o flushWait) bool { return o.done == w.done }); len(ws) == 0 {
			delete(p.flushes, sessionID)
		} else {
			p.flushes[sessionID] = ws
		}
		p.mu.Unlock()
		return ctx.Err()
	}
}

// rebaseRecord makes rec's provisional numbers final: v is their base.
func rebaseRecord(rec *session.Record, v uint64) {
	if rec.FirstSeq != 0 {
		rec.FirstSeq += v
	}
	if rec.LastSeq != 0 {
		rec.LastSeq += v
	}
	rec.Base = nil
}

// provisionalRun is one base of a session's provisional numbers: the
// highest number appended counted from it, and how many records counted
// from it the batcher holds with numbers not yet final (a record with a
// Base in the batcher is counted here). The run is forgotten when it holds
// none.
type provisionalRun struct {
	base *session.SeqBase
	last uint64
	held int
}

// holdProvisional counts rec, appended with provisional numbers. p.mu must
// be held.
func (p *Publisher) holdProvisional(rec session.Record) {
	runs := p.provisional[rec.Session]
	for i := range runs {
		if runs[i].base == rec.Base {
			runs[i].last = max(runs[i].last, rec.LastSeq)
			runs[i].held++
			return
		}
	}
	p.provisional[rec.Session] = append(runs, provisionalRun{base: rec.Base, last: rec.LastSeq, held: 1})
}

// releaseProvisional notes that n records of base's run left the batcher's
// hold, their numbers made final through last, which counts as unstored
// from then on (in the same critical section: a Load never misses them),
// or given up (last 0); n < 0 counts records more (a record split in
// parts).
func (p *Publisher) releaseProvisional(sessionID string, base *session.SeqBase, last uint64, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if last > p.unstored[sessionID] {
		p.unstored[sessionID] = last
	}
	runs := p.provisional[sessionID]
	i := slices.IndexFunc(runs, func(r provisionalRun) bool { return r.base == base })
	if i < 0 {
		return
	}
	if runs[i].held -= n; runs[i].held > 0 {
		return
	}
	if runs = slices.Delete(runs, i, i+1); len(runs) == 0 {
		delete(p.provisional, sessionID)
	} else {
		p.provisional[sessionID] = runs
	}
}

// resolveHeld resolves the bases of the session's provisional runs not
// resolved yet, given n, the last number the journal holds for the session
// (stored or on its way): the first run counts from n, the next from the
// first's last, and so on, as their records wait in the batcher, one after
// the other. A base resolved already keeps its value. It returns the
// session's last number with every run counted. p.mu must be held.
func (p *Publisher) resolveHeld(sessionID string, n uint64) uint64 {
	for _, r := range p.provisional[sessionID] {
		n = max(n, r.base.Resolve(n)+r.last)
	}
	return n
}

// beyondStore is what this process knows of a session's numbers that the
// store may not show yet, taken before a read of the store: the numbers on
// their way, and the runs of provisional numbers held.
type beyondStore struct {
	unstored uint64
	runs     []provisionalRun
}

func (p *Publisher) beyondStore(sessionID string) beyondStore {
	p.mu.Lock()
	defer p.mu.Unlock()
	return beyondStore{unstored: p.unstored[sessionID], runs: slices.Clone(p.provisional[sessionID])}
}

// settle returns the session's last number given stored, the last number a
// read of the store found, and b, taken before that read: records on their
// way may have been stored and forgotten as unstored while the read went
// on, too late for it to see them, and runs held then may have been
// resolved meanwhile. It resolves the runs still held (resolveHeld).
func (p *Publisher) settle(sessionID string, stored uint64, b beyondStore) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := max(stored, b.unstored, p.unstored[sessionID])
	for _, r := range b.runs {
		if v, ok := r.base.Value(); ok {
			n = max(n, v+r.last)
		}
	}
	return p.resolveHeld(sessionID, n)
}

// lost tells Config.Lost of lost events of stream of session sessionID.
func (p *Publisher) lost(sessionID, stream string) {
	if p.cfg.Lost != nil {
		p.cfg.Lost(sessionID, stream)
	}
}

// release forgets n records (acknowledged or lost) of size bytes in all.
func (p *Publisher) release(n, size int) {
	p.held.Add(int64(-n))
	p.heldBytes.Add(int64(-size))
	p.m.depth.Sub(float64(n))
}

// Shutdown stops accepting records, publishes every pending batch, waits for
// their acks and writes the final session state. It is bounded by ctx, or
// by Config.DrainTimeout when ctx has no deadline; records still unpublished
// then are counted as lost and ctx's error is returned. A second call
// returns ErrClosed.
func (p *Publisher) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	p.closed = true
	p.mu.Unlock()
	p.signal()
	if p.takeoverSub != nil {
		_ = p.takeoverSub.Unsubscribe()
	}

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.DrainTimeout)
		defer cancel()
	}
	var err error
	select {
	case <-p.done:
	case <-ctx.Done():
		err = ctx.Err()
		close(p.abort)
		<-p.done
	}
	if serr := p.state.stop(ctx); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("journal shutdown: %w", err)
	}
	return nil
}

// streamChanges lists the settings setup changes in an existing stream,
// as "name: have -> want".
func streamChanges(have, want jetstream.StreamConfig) []string {
	var out []string
	diff := func(name string, h, w any) {
		if h != w {
			out = append(out, fmt.Sprintf("%s: %v -> %v", name, h, w))
		}
	}
	diff("replicas", have.Replicas, want.Replicas)
	diff("max_age", have.MaxAge, want.MaxAge)
	diff("max_bytes", have.MaxBytes, want.MaxBytes)
	diff("max_msgs", have.MaxMsgs, want.MaxMsgs)
	diff("max_msgs_per_subject", have.MaxMsgsPerSubject, want.MaxMsgsPerSubject)
	diff("duplicate_window", have.Duplicates, want.Duplicates)
	diff("allow_direct", have.AllowDirect, want.AllowDirect)
	diff("discard", have.Discard, want.Discard)
	diff("retention", have.Retention, want.Retention)
	diff("storage", have.Storage, want.Storage)
	return out
}

// isPermanent reports publish errors a retry cannot fix.
func isPermanent(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) ||
		errors.Is(err, nats.ErrConnectionClosed) {
		return true
	}
	// JetStream refused the message itself (too large headers, say): the
	// same message would be refused again, and retrying it would hold up
	// every later batch of the session.
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 400
}
