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

// Batch is one JetStream message as the publisher writes it and package
// history decodes it: one type for both sides, so the two cannot drift.
type Batch = history.Batch

// header builds the message headers of b.
func header(b *Batch, msgID string) nats.Header {
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
