// Package journal persists sessions' SSE events to NATS JetStream and reads
// back what the ext_proc side needs (a session's state, a stream's missed
// events). It and its subpackage history, which consumers import instead
// of it, are the only packages of ssetrack that import NATS.
//
// # Layout in JetStream
//
// Events are stored in one stream (Config.Stream, default "SSETRACK") with
// one subject per session: Config.SubjectPrefix + "." + SubjectToken(id),
// e.g. "ssetrack.events.c2Vzcy0x". A message is a batch: consecutive events
// of one (session, stream) pair; package history documents its payload and
// headers and decodes it. The publisher adds
//
//	Nats-Msg-Id         MsgID(session, stream, writer, first seq)
//
// so that a retried batch is a server-side duplicate.
//
// Session state lives in the KV bucket Config.Bucket (default
// "ssetrack-sessions") under the key SubjectToken(id), as JSON (see State).
//
// # Goroutines
//
// A Publisher owns two goroutines: the batcher, which owns every pending
// batch and the per-session publish lanes, and the state writer, which owns
// the KV writes. Append may be called from any goroutine and never blocks.
package journal
