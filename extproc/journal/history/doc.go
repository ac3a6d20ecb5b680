// Package history reads the SSE events that ssetrack stored in NATS
// JetStream: it decodes a batch message into its events and iterates over
// one session's events from an event id or a time. It is the package for
// consumers of the journal; it imports nats.go and the SSE parser, never
// the ext_proc side, the publisher or the embedded nats-server.
//
// # Layout in JetStream
//
// Events are stored in one stream (DefaultStream, "SSETRACK") with one
// subject per session, Subject(prefix, sessionID), e.g.
// "ssetrack.events.c2Vzcy0x". A message is a batch: consecutive events of
// one stream (one SSE response and its resumes) of one session. Its payload
// is the events' SSE bytes exactly as received, itself a valid SSE stream;
// its headers are:
//
//	Ssetrack-Session    session id (see EncodeHeaderValue)
//	Ssetrack-Stream     stream id within the session
//	Ssetrack-First-Id   first non-empty event id in the batch (may be absent)
//	Ssetrack-Last-Id    last non-empty event id in the batch (may be absent)
//	Ssetrack-Ids        "payload" when the two id headers are left out
//	                    because an id is over 1 KiB
//	Ssetrack-Count      number of events in the payload
//	Ssetrack-First-Seq  per-session sequence number of the first event
//	Ssetrack-Last-Seq   per-session sequence number of the last event
//	Ssetrack-Writer     the ssetrack process that wrote the batch
//
// Per-session sequence numbers start at 1 and grow by one per event across
// all streams of a session, so a gap between batches means lost events.
// An event is a block with a data or an id field; comment-only and
// retry-only blocks are never stored.
//
// # Reading
//
//	s, err := js.Stream(ctx, history.DefaultStream)
//	...
//	r := history.NewReader(s, "")
//	for ev, err := range r.Events(ctx, sessionID, history.ReadOptions{FromID: "41"}) {
//		if err != nil {
//			return err // history.ErrEventNotFound: 41 was never stored or was purged
//		}
//		os.Stdout.Write(ev.Data)
//	}
//
// History is never delivered in part: a read from an id that is no longer
// stored fails with ErrEventNotFound, and a read from a time before the
// session's oldest stored event, when older events were purged, fails with
// ErrPurged, before any event is delivered.
package history
