// Package journal persists sessions' SSE events to NATS JetStream and reads
// back what the ext_proc side needs (a session's state, a stream's missed
// events). It and its subpackage history, which consumers import instead
// of it, are the only packages of ssetrack that import NATS. It owns the
// NATS lifecycle: Open connects (or starts an embedded nats-server),
// Journal.Ready reports readiness with its reason, and Journal.Shutdown
// flushes, drains and stops. It imports session (whose types it stores and
// whose Loader it implements) and never extproc.
//
// # Layout in JetStream
//
// Events are stored in one stream (Config.Stream, default "SSETRACK") with
// one subject per session: Config.SubjectPrefix + "." + SubjectToken(id),
// e.g. "ssetrack.events.c2Vzcy0x". A message is a batch: consecutive events
// of one (session, stream) pair; package history documents its payload and
// headers and decodes it. The publisher adds
//
//	Nats-Msg-Id         MsgID(session, stream, writer, first seq, batch number)
//
// so that a retried batch is a server-side duplicate.
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
