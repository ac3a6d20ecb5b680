package journal

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// Header names of a batch message.
const (
	HeaderSession  = "Ssetrack-Session"
	HeaderStream   = "Ssetrack-Stream"
	HeaderFirstID  = "Ssetrack-First-Id"
	HeaderLastID   = "Ssetrack-Last-Id"
	HeaderCount    = "Ssetrack-Count"
	HeaderFirstSeq = "Ssetrack-First-Seq"
	HeaderLastSeq  = "Ssetrack-Last-Seq"
	HeaderWriter   = "Ssetrack-Writer"
	// HeaderIDs is "payload" when First-Id and Last-Id are left out because
	// an id is too long for a header: read them from the payload.
	HeaderIDs = "Ssetrack-Ids"
)

// maxIDHeader is the longest event id written into a header. JetStream
// refuses messages whose headers exceed 64 KiB, and an event id may be as
// long as an event.
const maxIDHeader = 1024

// encodedPrefix marks a header value that EncodeHeaderValue encoded.
const encodedPrefix = "b64:"

// maxRawHeaderValue is the longest value kept verbatim.
const maxRawHeaderValue = 512

// EncodeHeaderValue returns s as a header value. s is kept verbatim when it
// is non-empty valid UTF-8 of at most 512 bytes, has no control characters, no
// leading or trailing space (header parsing would trim it) and does not
// start with "b64:". Otherwise the value is "b64:" followed by the unpadded
// base64url encoding of s. DecodeHeaderValue reverses it.
func EncodeHeaderValue(s string) string {
	if headerSafe(s) {
		return s
	}
	return encodedPrefix + base64.RawURLEncoding.EncodeToString([]byte(s))
}

// DecodeHeaderValue reverses EncodeHeaderValue.
func DecodeHeaderValue(v string) (string, error) {
	rest, ok := strings.CutPrefix(v, encodedPrefix)
	if !ok {
		return v, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return "", fmt.Errorf("%w: header value: %v", ErrBadBatch, err)
	}
	return string(b), nil
}

func headerSafe(s string) bool {
	if s == "" || len(s) > maxRawHeaderValue || strings.HasPrefix(s, encodedPrefix) || !utf8.ValidString(s) {
		return false
	}
	if s != "" && (s[0] == ' ' || s[0] == '\t' || s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// Batch is one stored JetStream message: consecutive events of one stream of
// one session.
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
	// Sequence is the message's JetStream stream sequence.
	Sequence uint64
	// Time is when JetStream stored the message.
	Time time.Time
	// Writer identifies the Publisher (one ssetrack process) that wrote the
	// batch: random per process start, so replicas and restarts differ.
	Writer string
}

// header builds the message headers of b.
func (b *Batch) header(msgID string) nats.Header {
	h := make(nats.Header, 9)
	h.Set(HeaderSession, EncodeHeaderValue(b.Session))
	h.Set(HeaderStream, EncodeHeaderValue(b.Stream))
	if len(b.FirstID) > maxIDHeader || len(b.LastID) > maxIDHeader {
		h.Set(HeaderIDs, "payload")
	} else {
		if b.FirstID != "" {
			h.Set(HeaderFirstID, EncodeHeaderValue(b.FirstID))
		}
		if b.LastID != "" {
			h.Set(HeaderLastID, EncodeHeaderValue(b.LastID))
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

// decodeBatch reads a stored message's headers into a Batch sharing data.
func decodeBatch(h nats.Header, data []byte, seq uint64, t time.Time) (Batch, error) {
	b := Batch{Data: data, Sequence: seq, Time: t}
	var err error
	str := func(name string, dst *string, required bool) {
		v := h.Get(name)
		if v == "" {
			if required && err == nil {
				err = fmt.Errorf("%w: no %s header", ErrBadBatch, name)
			}
			return
		}
		s, e := DecodeHeaderValue(v)
		if e != nil && err == nil {
			err = e
		}
		*dst = s
	}
	num := func(name string) uint64 {
		n, e := strconv.ParseUint(h.Get(name), 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("%w: %s header: %v", ErrBadBatch, name, e)
		}
		return n
	}
	str(HeaderSession, &b.Session, true)
	str(HeaderStream, &b.Stream, false)
	str(HeaderFirstID, &b.FirstID, false)
	str(HeaderLastID, &b.LastID, false)
	if h.Get(HeaderIDs) == "payload" {
		scanEvents(data, func(ev sseEvent) bool {
			if ev.HasID && ev.ID != "" {
				if b.FirstID == "" {
					b.FirstID = ev.ID
				}
				b.LastID = ev.ID
			}
			return true
		})
	}
	b.Writer = h.Get(HeaderWriter)
	b.Count = int(num(HeaderCount))
	b.FirstSeq = num(HeaderFirstSeq)
	b.LastSeq = num(HeaderLastSeq)
	return b, err
}
