package history

import (
	"encoding/base64"
	"fmt"
	"iter"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ssetrack/ssetrack/extproc/sse"
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

// DecodeHeaderValue reverses EncodeHeaderValue. It fails with ErrBadBatch
// when a "b64:" value is not valid base64url.
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
	if s[0] == ' ' || s[0] == '\t' || s[len(s)-1] == ' ' || s[len(s)-1] == '\t' {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// Batch is one stored message: consecutive events of one stream of one
// session.
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
	// Sequence is the message's JetStream stream sequence; 0 when unknown.
	Sequence uint64
	// Time is when JetStream stored the message; zero when unknown.
	Time time.Time
	// Writer identifies the ssetrack process that wrote the batch: random
	// per process start, so replicas and restarts differ.
	Writer string
}

// Event is one stored event.
type Event struct {
	// Session and Stream identify where it was delivered, Writer the
	// process that stored it (Batch.Writer).
	Session, Stream, Writer string
	// ID is the event's id field; valid when HasID (an event may have an
	// empty id, which resets a browser's last event id).
	ID    string
	HasID bool
	// Seq is the event's per-session sequence number.
	Seq uint64
	// Data is the event's SSE bytes as received: its lines and the blank
	// line that ends it. It aliases the batch's Data.
	Data []byte
	// Sequence and Time are its batch's JetStream stream sequence and store
	// time.
	Sequence uint64
	Time     time.Time
}

// Decode reads a batch from a message's headers and payload. The Batch
// shares data; Sequence and Time are left for the caller (DecodeMsg fills
// them). It fails with ErrBadBatch when the session header is missing or a
// number header is not a decimal number.
func Decode(h nats.Header, data []byte) (Batch, error) {
	b := Batch{Data: data}
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
		eachEvent(data, func(seg sse.Segment, _ int) bool {
			if len(seg.ID) > 0 {
				if b.FirstID == "" {
					b.FirstID = string(seg.ID)
				}
				b.LastID = string(seg.ID)
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

// DecodeMsg is Decode for a message delivered by a JetStream consumer,
// with Sequence and Time from its metadata.
func DecodeMsg(msg jetstream.Msg) (Batch, error) {
	md, err := msg.Metadata()
	if err != nil {
		return Batch{}, fmt.Errorf("batch metadata: %w", err)
	}
	b, err := Decode(msg.Headers(), msg.Data())
	b.Sequence, b.Time = md.Sequence.Stream, md.Timestamp
	return b, err
}

// decodeRaw is Decode for a message read with a (direct) get.
func decodeRaw(m *jetstream.RawStreamMsg) (Batch, error) {
	b, err := Decode(m.Header, m.Data)
	b.Sequence, b.Time = m.Sequence, m.Time
	return b, err
}

// Events iterates over the batch's events in order. Event k gets the
// per-session sequence FirstSeq+k when the payload holds exactly Count
// events; otherwise (a writer that counted differently) every event gets
// LastSeq, which keeps the order and never claims a number past the batch.
// An incomplete block at the end of the payload is not an event.
func (b Batch) Events() iter.Seq[Event] {
	return func(yield func(Event) bool) {
		n := 0
		eachEvent(b.Data, func(sse.Segment, int) bool { n++; return true })
		exact := n == b.Count
		k := uint64(0)
		eachEvent(b.Data, func(seg sse.Segment, _ int) bool {
			seq := b.LastSeq
			if exact {
				seq = b.FirstSeq + k
			}
			k++
			ev := Event{
				Session: b.Session, Stream: b.Stream, Writer: b.Writer,
				HasID: seg.HasID, Seq: seq, Data: seg.Raw,
				Sequence: b.Sequence, Time: b.Time,
			}
			if seg.HasID {
				ev.ID = string(seg.ID)
			}
			return yield(ev)
		})
	}
}

// eachEvent calls fn with each event of a stored payload, in order, and the
// offset just past it. An event is a complete block with a data or an id
// field, which is what the processor records; every other segment (a BOM,
// blank lines, comments, what a newer parser may split off on its own) is
// not an event. fn returns false to stop.
func eachEvent(p []byte, fn func(seg sse.Segment, end int) bool) {
	// The whole payload is one chunk, so no block is over the limit and
	// every segment is a sub-slice of p.
	// A payload starts mid-stream: the processor never records the stream's
	// BOM, so a U+FEFF at the payload's start belongs to its first event.
	ps := sse.Parser{MaxEventSize: len(p) + 1, MidStream: true}
	ps.Feed(p)
	off := 0
	for {
		seg, ok := ps.Next()
		if !ok {
			return
		}
		off += len(seg.Raw)
		if seg.Kind != sse.KindBlock || !(seg.HasData || seg.HasID) {
			continue
		}
		if !fn(seg, off) {
			return
		}
	}
}

// after returns b reduced to the events after the last one with id, and
// whether b has such an event.
func (b Batch) after(id string) (Batch, bool) {
	cut, idx, n := -1, 0, 0
	eachEvent(b.Data, func(seg sse.Segment, end int) bool {
		if seg.HasID && string(seg.ID) == id {
			cut, idx = end, n
		}
		n++
		return true
	})
	if cut < 0 {
		return b, false
	}
	rest := b
	rest.Data = b.Data[cut:]
	rest.Count = n - idx - 1
	if n == b.Count {
		rest.FirstSeq = b.FirstSeq + uint64(idx) + 1
	} else {
		rest.FirstSeq = b.LastSeq
	}
	rest.FirstID, rest.LastID = "", ""
	eachEvent(rest.Data, func(seg sse.Segment, _ int) bool {
		if len(seg.ID) > 0 {
			if rest.FirstID == "" {
				rest.FirstID = string(seg.ID)
			}
			rest.LastID = string(seg.ID)
		}
		return true
	})
	return rest, true
}

// has reports whether b holds an event with id.
func (b Batch) has(id string) bool {
	if b.LastID == id || b.FirstID == id {
		return true
	}
	found := false
	eachEvent(b.Data, func(seg sse.Segment, _ int) bool {
		found = seg.HasID && string(seg.ID) == id
		return !found
	})
	return found
}
