package history

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Batched direct gets. A direct get request with "batch": n is answered
// with up to n messages, each with the stored message's headers plus
// Nats-Stream, Nats-Subject, Nats-Sequence, Nats-Time-Stamp and
// Nats-Num-Pending, then a status message "204 EOB" (end of batch); no
// message at or after the start is "404 Message Not Found". nats-server
// 2.11 and later (server/jetstream_api.go JSApiMsgGetRequest,
// server/stream.go getDirectRequest); an older server ignores the field and
// answers with one message without Nats-Num-Pending. Like any direct get,
// any replica of a stream with AllowDirect answers, and no consumer is
// created: no request to the meta leader, nothing to delete afterwards.

// Bounds of one batched direct get: messages, and bytes (the server stops
// after the message that reaches the bound).
const (
	rangeBatch      = 256
	rangeBatchBytes = 4 << 20
)

// rangeIdle is how long an answer may go quiet, for a read without a
// deadline, before its request is sent again (nats.go's default timeout
// for JetStream requests).
const rangeIdle = 5 * time.Second

// numPendingHeader is the header with which a server that answers batched
// direct gets marks each message of a batch.
const numPendingHeader = "Nats-Num-Pending"

// errNoBatches reports a server that answered a batched direct get with one
// plain message: it predates them.
var errNoBatches = errors.New("history: the server answers no batched direct gets")

// rangeRequest is the body of a batched direct get.
type rangeRequest struct {
	Seq      uint64 `json:"seq"`
	NextFor  string `json:"next_by_subj"`
	Batch    int    `json:"batch"`
	MaxBytes int    `json:"max_bytes"`
}

// readRange calls take with each message on subject subj of stream from
// stream sequence from through end, in order, read with batched direct
// gets through nc to the API subject apiSubj ($JS.API.DIRECT.GET.<stream>),
// until take reports done or fails. An answer may go quiet for a share of
// ctx's budget, as DirectGet's tries get (rangeIdle without a deadline),
// before a request is sent again from where the answer got to; so is a
// request that found no responder, or that reached a replica without the
// messages up to end (404, or an end of batch short of end: a replica that
// lags, or messages deleted since end was read; asked again until ctx
// ends). It returns errNoBatches, having called take with nothing, when the
// server does not answer batched direct gets; take's error; or ctx's.
func readRange(ctx context.Context, nc *nats.Conn, apiSubj, subj string, from, end uint64, take func(*jetstream.RawStreamMsg) (bool, error)) error {
	first := true // nothing answered yet: an answer without batches means an old server
	wait := scanRetry
	for from <= end {
		// No more messages than stream sequences to end: the answer
		// carries none past what the read wants but the first one after.
		batch := int(min(uint64(rangeBatch), end-from+1))
		next, again, err := askRange(ctx, nc, apiSubj, subj, from, batch, &first, take)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case err != nil:
			return err
		case next == 0:
			return nil // take is done
		}
		from = next
		if again && from <= end {
			// No replica answered, or the one that did lags: ask again
			// shortly.
			if err := pause(ctx, wait); err != nil {
				return err
			}
			wait = min(2*wait, scanRetryMax)
			continue
		}
		wait = scanRetry
	}
	return nil
}

// askRange sends one batched direct get of at most batch (<= rangeBatch)
// messages from stream sequence from and reads its answer (readAnswer).
// Each request has an inbox of its own, given up with it: a late answer to
// an earlier request goes nowhere, and the inbox's channel holds a whole
// answer (rangeBatch messages and the end of batch), so nats.go never
// drops a message of it.
func askRange(ctx context.Context, nc *nats.Conn, apiSubj, subj string, from uint64, batch int, first *bool, take func(*jetstream.RawStreamMsg) (bool, error)) (uint64, bool, error) {
	reply := nc.NewInbox()
	msgs := make(chan *nats.Msg, rangeBatch+1)
	sub, err := nc.ChanSubscribe(reply, msgs)
	if err != nil {
		return 0, false, fmt.Errorf("batched direct get: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, _ := json.Marshal(rangeRequest{Seq: from, NextFor: subj, Batch: batch, MaxBytes: rangeBatchBytes})
	if err := nc.PublishRequest(apiSubj, reply, req); err != nil {
		return 0, false, fmt.Errorf("batched direct get: %w", err)
	}
	idle := rangeIdle
	if deadline, ok := ctx.Deadline(); ok {
		idle = tryShare(deadline)
	}
	quiet := time.NewTimer(idle)
	defer quiet.Stop()
	next := func() (*nats.Msg, error) {
		quiet.Reset(idle)
		select {
		case m := <-msgs:
			return m, nil
		case <-quiet.C:
			return nil, context.DeadlineExceeded
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return readAnswer(next, reply, from, first, take)
}

// readAnswer reads the answer to one batched direct get from stream
// sequence from, sent to reply, with next, handing its messages to take. It
// returns the stream sequence to ask from next (0 once take is done), and
// again when the answer ended short of the end of the read for want of an
// answer: no responder, the answer went quiet (next's deadline), no message
// (404). Messages of earlier requests' replies are passed over. A plain
// message (no Nats-Num-Pending) is a whole answer from a server before
// 2.11: errNoBatches if it is the first answer of the read, else (a
// cluster being upgraded) taken as an answer of one.
func readAnswer(next func() (*nats.Msg, error), reply string, from uint64, first *bool, take func(*jetstream.RawStreamMsg) (bool, error)) (uint64, bool, error) {
	for {
		m, err := next()
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return from, true, nil
		case err != nil:
			return 0, false, fmt.Errorf("batched direct get: %w", err)
		}
		if m.Subject != reply {
			continue // a late answer to an earlier try
		}
		if status := m.Header.Get("Status"); status != "" {
			switch status {
			case "204": // end of batch
				return from, false, nil
			case "404", "503": // nothing at or after the start, or no responder
				return from, true, nil
			default:
				return 0, false, fmt.Errorf("batched direct get: status %s %s", status, m.Header.Get("Description"))
			}
		}
		plain := m.Header.Get(numPendingHeader) == ""
		if *first && plain {
			return 0, false, errNoBatches
		}
		*first = false
		rm, err := rawMsg(m)
		if err != nil {
			return 0, false, err
		}
		done, err := take(rm)
		if err != nil || done {
			return 0, false, err
		}
		from = rm.Sequence + 1
		if plain {
			return from, false, nil
		}
	}
}

// rawMsg is the stored message a direct get answered with.
func rawMsg(m *nats.Msg) (*jetstream.RawStreamMsg, error) {
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("batched direct get: bad %s header: %w", jetstream.SequenceHeader, err)
	}
	ts, err := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
	if err != nil {
		return nil, fmt.Errorf("batched direct get: bad %s header: %w", jetstream.TimeStampHeaer, err)
	}
	return &jetstream.RawStreamMsg{
		Subject:  m.Header.Get(jetstream.SubjectHeader),
		Sequence: seq,
		Header:   m.Header,
		Data:     m.Data,
		Time:     ts,
	}, nil
}

// directAPISubject is the subject of direct gets of stream through js: its
// API prefix, its domain's, or the default (as jetstream.New,
// NewWithDomain and NewWithAPIPrefix set them).
func directAPISubject(js jetstream.JetStream, stream string) string {
	opts := js.Options()
	prefix := jetstream.DefaultAPIPrefix
	switch {
	case opts.APIPrefix != "":
		prefix = opts.APIPrefix
	case opts.Domain != "":
		prefix = "$JS." + opts.Domain + ".API."
	}
	if !strings.HasSuffix(prefix, ".") {
		prefix += "."
	}
	return prefix + "DIRECT.GET." + stream
}

// ReadRange calls fn with each batch on subject subj of stream stored from
// stream sequence from through end, in stored order, until fn returns an
// error or the batch at end has been read. With js it reads them with
// batched direct gets through js's connection (readRange): any replica
// answers and no consumer is created. Without js, or from a server that
// answers no batched direct gets (before nats-server 2.11), it reads them
// with Scan's ordered consumer. Messages without batch headers are
// skipped. It returns fn's error, ctx's error, or a wrapped JetStream
// error.
func ReadRange(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, subj string, from, end uint64, fn func(Batch) error) error {
	from = max(from, 1)
	if js != nil {
		if err := readBatches(ctx, js, stream, subj, from, end, fn); !errors.Is(err, errNoBatches) {
			return err
		}
	}
	occ := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
	}
	return Scan(ctx, stream, occ, end, fn)
}

// readBatches is ReadRange's read with batched direct gets; errNoBatches
// when the server answers none.
func readBatches(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, subj string, from, end uint64, fn func(Batch) error) error {
	take := func(m *jetstream.RawStreamMsg) (bool, error) {
		b, err := decodeRaw(m)
		return hand(b, err, fn, end)
	}
	return readRange(ctx, js.Conn(), directAPISubject(js, stream.CachedInfo().Config.Name), subj, from, end, take)
}
