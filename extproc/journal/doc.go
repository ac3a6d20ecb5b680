// Package journal persists sessions' SSE events to NATS JetStream and reads
// them back. It is the only package of ssetrack that imports NATS, and it
// owns the NATS lifecycle: Open connects (or starts an embedded
// nats-server), Journal.Ready reports readiness with its reason, and
// Journal.Shutdown flushes, drains and stops. It imports session (the
// interfaces it implements) and never extproc.
//
// # Layout in JetStream
//
// Events are stored in one stream (Config.Stream, default "SSETRACK") with
// one subject per session: Config.SubjectPrefix + "." + SubjectToken(id),
// e.g. "ssetrack.events.c2Vzcy0x". A message is a batch: consecutive events
// of one (session, stream) pair. Its payload is the events' SSE bytes as
// received, itself a valid SSE stream, and its headers are:
//
//	Ssetrack-Session    session id (see EncodeHeaderValue)
//	Ssetrack-Stream     stream id within the session
//	Ssetrack-First-Id   first non-empty event id in the batch (may be absent)
//	Ssetrack-Last-Id    last non-empty event id in the batch (may be absent)
//	Ssetrack-Count      number of events in the payload
//	Ssetrack-First-Seq  per-session sequence number of the first event
//	Ssetrack-Last-Seq   per-session sequence number of the last event
//	Ssetrack-Writer     the publishing process (Publisher) that wrote the batch
//	Nats-Msg-Id         MsgID(session, stream, writer, first seq)
//
// Per-session sequence numbers grow by one per event across all streams of a
// session, so a consumer detects a gap when a batch's First-Seq is not the
// previous batch's Last-Seq + 1.
//
// Session state lives in the KV bucket Config.Bucket (default
// "ssetrack-sessions") under the key SubjectToken(id), as JSON (see State).
//
// # Goroutines
//
// A Journal owns a setup goroutine while NATS is not ready: it creates the
// stream and the bucket when the connection comes up (reconnects are
// nats.go's), starts the Publisher and hands it the queued records. A
// Publisher owns two goroutines: the batcher, which owns every pending
// batch and the per-session publish lanes, and the state writer, which owns
// the KV writes. Append may be called from any goroutine and never blocks.
package journal
