package journal

import (
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
)

// Header names of a batch message, as package history defines them.
const (
	HeaderSession  = history.HeaderSession
	HeaderStream   = history.HeaderStream
	HeaderFirstID  = history.HeaderFirstID
	HeaderLastID   = history.HeaderLastID
	HeaderCount    = history.HeaderCount
	HeaderFirstSeq = history.HeaderFirstSeq
	HeaderLastSeq  = history.HeaderLastSeq
	HeaderWriter   = history.HeaderWriter
	HeaderIDs      = history.HeaderIDs
)

// maxIDHeader is the longest event id written into a header. JetStream
// refuses messages whose headers exceed 64 KiB, and an event id may be as
// long as an event.
const maxIDHeader = 1024

// Batch is one JetStream message as the publisher writes it: consecutive
// events of one stream of one session. Package history decodes it back.
type Batch struct {
	// Session and Stream identify where the events were delivered.
	Session, Stream string
	// FirstID and LastID are the first and last non-empty event ids in
	// Data; empty if none had one.
	FirstID, LastID string
	// Count is the number of events in Data.
	Count int
	// FirstSeq and LastSeq are the per-session sequence numbers of the
	// first and last event.
	FirstSeq, LastSeq uint64
	// Data is the events' SSE bytes as received.
	Data []byte
	// Writer identifies the Publisher (one ssetrack process) that wrote the
	// batch: random per process start, so replicas and restarts differ.
	Writer string
}

// header builds the message headers of b.
func (b *Batch) header(msgID string) nats.Header {
	h := make(nats.Header, 9)
	h.Set(HeaderSession, history.EncodeHeaderValue(b.Session))
	h.Set(HeaderStream, history.EncodeHeaderValue(b.Stream))
	if len(b.FirstID) > maxIDHeader || len(b.LastID) > maxIDHeader {
		h.Set(HeaderIDs, "payload")
	} else {
		if b.FirstID != "" {
			h.Set(HeaderFirstID, history.EncodeHeaderValue(b.FirstID))
		}
		if b.LastID != "" {
			h.Set(HeaderLastID, history.EncodeHeaderValue(b.LastID))
		}
	}
	h.Set(HeaderCount, strconv.Itoa(b.Count))
	h.Set(HeaderFirstSeq, strconv.FormatUint(b.FirstSeq, 10))
	h.Set(HeaderLastSeq, strconv.FormatUint(b.LastSeq, 10))
	if b.Writer != "" {
		h.Set(HeaderWriter, b.Writer)
	}
	h.Set(nats.MsgIdHdr, msgID)
	return h
}
