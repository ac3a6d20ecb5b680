package journal

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/session"
)

// This file is the batcher goroutine: everything in it runs on that one
// goroutine (Publisher.run), except the small per-publish goroutines that
// wait for an ack and report back on Publisher.results.

// pending is a batch being filled or waiting to be (re)published.
type pending struct {
	Batch
	// owned: Data is a buffer of the batcher's (from buffers), returned
	// to it once the batch is acknowledged or given up; otherwise Data is
	// the batch's one record's own bytes.
	owned   bool
	at      []time.Time // enqueue time of each record, for latency
	gen     uint64      // identifies the open batch for its deadline timer
	msg     *nats.Msg   // built when first published
	tries   int
	firstTx time.Time
	// base is set while FirstSeq and LastSeq are provisional
	// (session.Record.Base): the batch is not published before it is
	// resolved and added. provisional counts the batch's records with that
	// base (provisionalRun.held).
	base        *session.SeqBase
	provisional int
}

// lane is one session's publishing state. A lane exists while the session
// has anything pending, and is deleted when idle.
type lane struct {
	session  string
	subject  string
	open     *pending   // accepting records
	ready    []*pending // sealed, in sequence order
	inflight *pending
	waiting  bool   // queued for a global in-flight slot
	retryGen uint64 // non-zero while a retry timer is armed
	// resolving is set while a goroutine reads the session's last stored
	// number for the provisional numbers of its next batch (resolve).
	resolving bool
	// principal is the session's principal hash, the first non-empty one
	// of its records (Record.Principal), for the session's KV state.
	principal string
}

func (l *lane) idle() bool {
	return l.open == nil && len(l.ready) == 0 && l.inflight == nil && l.retryGen == 0 && !l.resolving
}

// result is the outcome of one publish attempt (on Publisher.results), or,
// with base set, of one resolve (on Publisher.resolved).
type result struct {
	lane *lane
	ack  *jetstream.PubAck
	err  error
	base *session.SeqBase
}

// timer kinds in the batcher's heap.
const (
	timerDeadline = iota // an open batch reached Batch.MaxDelay
	timerRetry           // a failed batch may be retried
)

type timerEntry struct {
	at   time.Time
	kind int
	lane *lane
	gen  uint64
}

type timerHeap []timerEntry

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)        { *h = append(*h, x.(timerEntry)) }
func (h *timerHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// batcher is the state owned by the batcher goroutine.
type batcher struct {
	p        *Publisher
	lanes    map[string]*lane
	timers   timerHeap
	waitq    []*lane
	inflight int
	gen      uint64
	closing  bool
	// failing is set from a failed publish until the next acknowledged
	// one, and failLog spaces out the warnings in between: an outage is
	// logged when it starts, every 30 s or when its error changes, and
	// when publishing works again.
	failing bool
	failLog repeatLog
	// buffers are batch buffers that no batch holds: a batch of more than
	// one record is assembled in one, and it comes back when the batch is
	// acknowledged, grown to what the batch needed, so steady publishing
	// allocates none (a spare smaller than its new batch grows again).
	buffers [][]byte
}

// maxSpareBuffers bounds the batch buffers kept for reuse (at most twice
// Batch.MaxBytes each: 30 MiB at the default).
const maxSpareBuffers = 256

// maxBytes is the most payload bytes of a batch of several records
// (Publisher.batchBytes).
func (b *batcher) maxBytes() int { return b.p.batchBytes() }

// buffer returns an empty buffer for a batch that holds n bytes so far: a
// spare one, or a new one of twice that; appends grow either. New buffers
// are sized by need, so that small batches held through an outage, beyond
// the spares, hold little.
func (b *batcher) buffer(n int) []byte {
	if k := len(b.buffers); k > 0 {
		buf := b.buffers[k-1]
		b.buffers[k-1] = nil
		b.buffers = b.buffers[:k-1]
		return buf[:0]
	}
	return make([]byte, 0, min(max(2*n, 4<<10), b.maxBytes()))
}

// recycle takes back pb's buffer, if it is the batcher's: steady
// publishing needs it again, at the size it grew to. Small batches are the
// common case when events come one per chunk (a paced stream), and a
// buffer of theirs not kept would be allocated and grown again by the
// next.
func (b *batcher) recycle(pb *pending) {
	if c := cap(pb.Data); pb.owned && c <= 2*b.maxBytes() && len(b.buffers) < maxSpareBuffers {
		b.buffers = append(b.buffers, pb.Data[:0])
	}
	pb.Data, pb.owned, pb.msg = nil, false, nil
}

// run is the batcher goroutine. It sleeps until its next timer, a publish
// result or a wake from Append; whenever it wakes it takes the whole inbox.
func (p *Publisher) run() {
	defer close(p.done)
	b := &batcher{p: p, lanes: make(map[string]*lane), failLog: repeatLog{every: 30 * time.Second}}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var spare []queued
	for {
		p.wakeAt.Store(batcherAwake)
		if !b.closing {
			recs, closed := p.take(spare)
			if len(recs) > 0 && p.takeHook != nil { // after an Append: ordered by p.mu
				p.takeHook()
			}
			for _, q := range recs {
				b.add(q)
			}
			spare = recs
			if closed {
				b.closing = true
				b.sealAll()
			}
		}
		b.fire(time.Now())
		if b.closing && len(b.lanes) == 0 {
			return
		}
		b.resetTimer(timer)
		if !b.closing && p.pendingInbox() {
			// Records came after the take above (wakeAt is stored now, so
			// later ones wake us): take them without sleeping, after any
			// result that is in.
			select {
			case r := <-p.results:
				b.done(r)
			case r := <-p.resolved:
				b.resolved(r)
			default:
			}
			continue
		}
		select {
		case <-p.wake:
		case r := <-p.results:
			b.done(r)
		case r := <-p.resolved:
			b.resolved(r)
		case <-timer.C:
		case <-p.abort:
			b.dropAll()
			return
		}
	}
}

// pendingInbox reports whether records wait in the inbox.
func (p *Publisher) pendingInbox() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.inbox) > 0
}

// resetTimer arms t for the earliest batcher timer and publishes that time
// in wakeAt for Append.
func (b *batcher) resetTimer(t *time.Timer) {
	if len(b.timers) == 0 {
		t.Stop()
		b.p.wakeAt.Store(batcherIdle)
		return
	}
	at := b.timers[0].at
	t.Reset(max(time.Until(at), 0))
	b.p.wakeAt.Store(b.p.since(at))
}

// add takes one record into its session's open batch. A record too large
// for one message is split first (splitRecord).
func (b *batcher) add(q queued) {
	if q.flush {
		if l := b.lanes[q.rec.Session]; l != nil {
			b.seal(l)
		}
		return
	}
	if lim := b.p.maxRecord; len(q.rec.Data) > lim {
		parts, tooLarge := splitRecord(q.rec, lim)
		if base := q.rec.Base; base != nil {
			// Each part is counted in the run (none: the record left it).
			b.p.releaseProvisional(q.rec.Session, base, 0, 1-len(parts))
		}
		if tooLarge > 0 {
			b.p.m.drop(dropTooLarge, tooLarge)
			b.p.lost(q.rec.Session, q.rec.Stream)
			if last := q.rec.LastSeq; q.rec.Base == nil && (len(parts) == 0 || parts[len(parts)-1].LastSeq < last) {
				// No batch will carry the record's last number: it is
				// given up here, or a Flush would wait for it in vain.
				b.p.storedThrough(q.rec.Session, last)
			}
			b.p.log.Error("journal: event larger than the NATS server's max_payload not stored",
				"session", session.ShortID(q.rec.Session), "events", tooLarge, "limit_bytes", lim)
		}
		if len(parts) == 0 {
			b.p.release(1, len(q.rec.Data))
			return
		}
		// One record became len(parts): each is released on its own, and
		// the events too large to store are released now.
		size := 0
		for _, r := range parts {
			size += len(r.Data)
		}
		b.p.heldBytes.Add(int64(size - len(q.rec.Data)))
		b.p.held.Add(int64(len(parts) - 1))
		b.p.m.depth.Add(float64(len(parts) - 1))
		for _, r := range parts {
			b.addRecord(queued{rec: r, at: q.at})
		}
		return
	}
	b.addRecord(q)
}

// addRecord is add for a record that fits in one message.
func (b *batcher) addRecord(q queued) {
	cfg := &b.p.cfg
	rec := q.rec
	if base := rec.Base; base != nil {
		if v, ok := base.Value(); ok { // resolved since Append
			rebaseRecord(&rec, v)
			b.p.releaseProvisional(rec.Session, base, rec.LastSeq, 1)
		}
	}
	l := b.lanes[rec.Session]
	if rec.Count == 0 && len(rec.Data) == 0 {
		// Nothing to persist; End still flushes the stream's batch.
		if rec.End && l != nil && l.open != nil && l.open.Stream == rec.Stream {
			b.seal(l)
		}
		b.dropRecord(rec)
		return
	}
	if rec.Count == 0 && !rec.End && (l == nil || l.open == nil || l.open.Stream != rec.Stream) {
		// Bytes without an event (the LF of the last event's CRLF, come in
		// a later chunk) whose batch is already sealed: a batch of no
		// events is never published, and the event's bytes end in a CR,
		// a complete line ending. Not counted as a loss.
		b.dropRecord(rec)
		return
	}
	if l == nil {
		l = &lane{session: rec.Session, subject: Subject(cfg.SubjectPrefix, rec.Session)}
		b.lanes[rec.Session] = l
	}
	if l.principal == "" {
		l.principal = rec.Principal
	}
	if o := l.open; o != nil {
		contiguous := rec.FirstSeq == 0 || o.LastSeq == 0 || rec.FirstSeq == o.LastSeq+1
		if rec.Count > 0 && rec.Base != o.base {
			contiguous = false // counted from different bases
		}
		if o.Stream != rec.Stream || !contiguous ||
			o.Count+rec.Count > cfg.Batch.MaxEvents || len(o.Data)+len(rec.Data) > b.maxBytes() {
			b.seal(l)
		}
	}
	if l.open == nil {
		b.gen++
		l.open = &pending{
			Batch: Batch{
				Session: rec.Session, Stream: rec.Stream, Writer: b.p.writer,
				FirstID: rec.FirstID, LastID: rec.LastID, Count: rec.Count,
				FirstSeq: rec.FirstSeq, LastSeq: rec.LastSeq,
				Data: rec.Data,
			},
			at:   []time.Time{q.at},
			gen:  b.gen,
			base: rec.Base,
		}
		if rec.Base != nil {
			l.open.provisional = 1
		}
		// The delay runs from the record's enqueue time: the batcher takes
		// the inbox whole and seals due batches only after adding all of
		// it, so a batcher that lags behind a burst still fills batches.
		heap.Push(&b.timers, timerEntry{at: q.at.Add(cfg.Batch.MaxDelay), kind: timerDeadline, lane: l, gen: b.gen})
	} else {
		o := l.open
		if o.FirstID == "" {
			o.FirstID = rec.FirstID
		}
		if rec.LastID != "" {
			o.LastID = rec.LastID
		}
		if o.FirstSeq == 0 {
			o.FirstSeq = rec.FirstSeq
		}
		if rec.LastSeq != 0 {
			o.LastSeq = rec.LastSeq
		}
		o.Count += rec.Count
		if !o.owned {
			// A second record: assemble the batch in a buffer of ours
			// (the first record's bytes are the processor's chunk).
			buf := b.buffer(len(o.Data) + len(rec.Data))
			o.Data, o.owned = append(buf, o.Data...), true
		}
		o.Data = append(o.Data, rec.Data...)
		o.at = append(o.at, q.at)
		if rec.Base != nil {
			o.provisional++
		}
	}
	if o := l.open; rec.End || o.Count >= cfg.Batch.MaxEvents || len(o.Data) >= b.maxBytes() {
		b.seal(l)
	}
}

// dropRecord lets go of a record with nothing to publish.
func (b *batcher) dropRecord(rec session.Record) {
	if rec.Base != nil {
		b.p.releaseProvisional(rec.Session, rec.Base, 0, 1)
	}
	b.p.release(1, len(rec.Data))
}

// seal moves the lane's open batch to its ready queue.
func (b *batcher) seal(l *lane) {
	if l.open == nil {
		return
	}
	l.ready = append(l.ready, l.open)
	l.open = nil
	b.trySend(l)
}

func (b *batcher) sealAll() {
	for _, l := range b.lanes {
		b.seal(l)
	}
}

// trySend publishes the lane's next ready batch if the session has none in
// flight and a global slot is free.
func (b *batcher) trySend(l *lane) {
	if l.inflight != nil || len(l.ready) == 0 || l.retryGen != 0 || l.resolving {
		return
	}
	if head := l.ready[0]; head.base != nil {
		v, ok := head.base.Value()
		if !ok {
			l.resolving = true
			go b.p.resolve(l, head.base)
			return
		}
		b.rebase(head, v)
	}
	if b.inflight >= b.p.cfg.MaxInFlight {
		if !l.waiting {
			l.waiting = true
			b.waitq = append(b.waitq, l)
		}
		return
	}
	pb := l.ready[0]
	l.ready[0] = nil
	l.ready = l.ready[1:]
	if pb.tries > 0 && time.Since(pb.firstTx) >= b.p.retryBudget() {
		// A retry that waited for a slot (a long outage, many sessions)
		// past the budget could be stored twice: given up, as in done.
		b.giveUp(pb, errRetryTooLate)
		b.trySend(l)
		return
	}
	l.inflight = pb
	b.inflight++
	if pb.msg == nil {
		pb.msg = &nats.Msg{
			Subject: l.subject,
			Data:    pb.Data,
			Header:  header(&pb.Batch, MsgID(pb.Session, pb.Stream, b.p.writer, pb.FirstSeq, pb.gen)),
		}
		pb.firstTx = time.Now()
	}
	pb.tries++
	if pb.tries > 1 {
		b.p.m.retries.Inc()
	}
	go b.p.publish(l, pb.msg)
}

// publish runs on its own goroutine: one publish attempt and its ack.
func (p *Publisher) publish(l *lane, msg *nats.Msg) {
	paf, err := p.js.PublishMsgAsync(msg)
	var ack *jetstream.PubAck
	if err == nil {
		// The JetStream context times acks out after PublishTimeout; the
		// timer here is a backstop.
		t := time.NewTimer(2 * p.cfg.PublishTimeout)
		select {
		case ack = <-paf.Ok():
		case err = <-paf.Err():
		case <-t.C:
			err = jetstream.ErrAsyncPublishTimeout
		}
		t.Stop()
	}
	p.results <- result{lane: l, ack: ack, err: err}
}

// done handles a publish outcome.
func (b *batcher) done(r result) {
	p := b.p
	l := r.lane
	pb := l.inflight
	l.inflight = nil
	b.inflight--
	if r.err == nil {
		if b.failing {
			b.failing = false
			p.log.Info("journal publishing again")
		}
		now := time.Now()
		p.m.batches.Inc()
		p.m.events.Add(float64(pb.Count))
		for _, t := range pb.at {
			p.m.latency.Observe(now.Sub(t).Seconds())
			if p.ackHook != nil {
				p.ackHook(now.Sub(t))
			}
		}
		p.release(len(pb.at), len(pb.Data))
		p.stored(pb)
		p.state.update(pb.Session, pb.Stream, pb.LastID, pb.LastSeq, l.principal)
		b.recycle(pb)
	} else {
		p.m.errors.Inc()
		b.failing = true
		if b.failLog.note(r.err) {
			p.log.Warn("journal publish failed; retrying, events are forwarded meanwhile", "err", r.err)
		}
		if isPermanent(r.err) || time.Since(pb.firstTx) >= p.retryBudget() {
			b.giveUp(pb, r.err)
		} else {
			p.log.Debug("journal publish failed, retrying", "session", session.ShortID(pb.Session),
				"first_seq", pb.FirstSeq, "tries", pb.tries, "err", r.err)
			l.ready = append([]*pending{pb}, l.ready...)
			b.gen++
			l.retryGen = b.gen
			wait := min(50*time.Millisecond<<min(pb.tries-1, 6), 2*time.Second)
			heap.Push(&b.timers, timerEntry{at: time.Now().Add(wait), kind: timerRetry, lane: l, gen: b.gen})
		}
	}
	b.trySend(l)
	for len(b.waitq) > 0 && b.inflight < p.cfg.MaxInFlight {
		w := b.waitq[0]
		b.waitq[0] = nil
		b.waitq = b.waitq[1:]
		w.waiting = false
		b.trySend(w)
		b.forget(w) // idle if its batch was given up
	}
	b.forget(l)
}

// rebase makes pb's provisional numbers final: v is their base, resolved.
// From here on they count as unstored (Flush waits for them).
func (b *batcher) rebase(pb *pending, v uint64) {
	if pb.FirstSeq != 0 {
		pb.FirstSeq += v
	}
	if pb.LastSeq != 0 {
		pb.LastSeq += v
	}
	base := pb.base
	pb.base = nil
	b.p.releaseProvisional(pb.Session, base, pb.LastSeq, pb.provisional)
	pb.provisional = 0
}

// resolved handles the outcome of resolve. When the session's last number
// could not be read within the retry budget, the session's batches
// numbered from that base are given up: stored under made-up numbers they
// could share numbers with stored events.
func (b *batcher) resolved(r result) {
	l := r.lane
	l.resolving = false
	if _, ok := r.base.Value(); r.err != nil && !ok { // (resolved meanwhile by a Load: not lost)
		if l.open != nil && l.open.base == r.base {
			l.ready = append(l.ready, l.open)
			l.open = nil
		}
		kept := l.ready[:0]
		for _, pb := range l.ready {
			if pb.base == r.base {
				b.giveUp(pb, fmt.Errorf("read the session's last sequence number: %w", r.err))
			} else {
				kept = append(kept, pb)
			}
		}
		clear(l.ready[len(kept):])
		l.ready = kept
	}
	b.trySend(l)
	b.forget(l)
}

// resolve runs on its own goroutine: it reads the last sequence number
// stored for l's session (lastStoredSeq, which resolves base with it) and
// reports on Publisher.resolved; it tries again, backing off, until the
// publish retry budget is spent. A Load of the session may resolve base
// first: that value stands.
func (p *Publisher) resolve(l *lane, base *session.SeqBase) {
	start := time.Now()
	var err error
	for tries := 0; ; tries++ {
		if _, ok := base.Value(); ok {
			err = nil
			break
		}
		select { // a slot: an outage's end does not set off every session's reads at once
		case p.resolveSlots <- struct{}{}:
		case <-p.abort:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.PublishTimeout)
		var n uint64
		n, err = p.lastStoredSeq(ctx, l.session)
		cancel()
		<-p.resolveSlots
		if err == nil {
			base.Resolve(n) // lastStoredSeq did, unless its run was given up meanwhile
			break
		}
		if time.Since(start) >= p.retryBudget() {
			break
		}
		p.log.Debug("journal: reading a session's last number failed, retrying",
			"session", session.ShortID(l.session), "tries", tries+1, "err", err)
		t := time.NewTimer(min(50*time.Millisecond<<min(tries, 6), 2*time.Second))
		select {
		case <-t.C:
		case <-p.abort:
			t.Stop()
			return // the batcher is gone; it counted the lane's batches lost
		}
	}
	select {
	case p.resolved <- result{lane: l, base: base, err: err}:
	case <-p.done:
	}
}

// errRetryTooLate is why a batch whose retry came too late was given up.
var errRetryTooLate = errors.New("retry would come after the duplicate window")

// retryBudget is how long after its first publish a batch may still be
// retried: a retry must land inside the duplicate window of the first try,
// or it could store the batch twice.
func (p *Publisher) retryBudget() time.Duration {
	return p.cfg.DuplicateWindow - p.cfg.PublishTimeout
}

// giveUp counts a batch as lost.
func (b *batcher) giveUp(pb *pending, err error) {
	p := b.p
	if pb.base != nil {
		p.releaseProvisional(pb.Session, pb.base, 0, pb.provisional)
	}
	p.log.Error("journal batch lost", "session", session.ShortID(pb.Session),
		"first_seq", pb.FirstSeq, "events", pb.Count, "tries", pb.tries, "err", err)
	p.m.drop(dropGaveUp, len(pb.at))
	p.lost(pb.Session, pb.Stream)
	p.release(len(pb.at), len(pb.Data))
	p.stored(pb)
	b.recycle(pb)
}

// fire handles due timers.
func (b *batcher) fire(now time.Time) {
	for len(b.timers) > 0 && !b.timers[0].at.After(now) {
		e := heap.Pop(&b.timers).(timerEntry)
		l := e.lane
		switch e.kind {
		case timerDeadline:
			if l.open != nil && l.open.gen == e.gen {
				b.seal(l)
			}
		case timerRetry:
			if l.retryGen == e.gen {
				l.retryGen = 0
				b.trySend(l)
			}
		}
		b.forget(l)
	}
}

// forget deletes an idle lane.
func (b *batcher) forget(l *lane) {
	if l.idle() && !l.waiting && b.lanes[l.session] == l {
		delete(b.lanes, l.session)
	}
}

// dropAll counts everything still held as lost (Shutdown timed out).
func (b *batcher) dropAll() {
	n, size := 0, 0
	count := func(pb *pending) {
		if pb != nil {
			n += len(pb.at)
			size += len(pb.Data)
		}
	}
	for _, l := range b.lanes {
		for _, pb := range l.ready {
			count(pb)
		}
		count(l.open)
		count(l.inflight)
	}
	// Records still in the inbox.
	recs, _ := b.p.take(nil)
	for _, q := range recs {
		if !q.flush {
			n++
			size += len(q.rec.Data)
		}
	}
	if n > 0 {
		b.p.m.drop(dropShutdown, n)
		b.p.release(n, size)
		b.p.log.Error("journal shutdown timed out, records lost", "records", n)
	}
}
