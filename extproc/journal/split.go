package journal

import (
	"github.com/ssetrack/ssetrack/extproc/session"
	"github.com/ssetrack/ssetrack/extproc/sse"
)

// headerRoom is what a batch message's headers may take besides its
// payload, with room to spare: the session id (at most 4096 bytes, the
// processor's limit, base64-encoded past 512: 5.5 KiB), two event ids of at
// most maxIDHeader bytes each (base64 past 512: 2.7 KiB; longer ones are
// left out of the headers, see history.HeaderIDs), the stream id, the
// writer, the Nats-Msg-Id and the numbers (under 1 KiB).
const headerRoom = 16 << 10

// splitRecord cuts rec, whose bytes exceed limit, at event boundaries into
// records of at most limit bytes each, in order, so that every one fits in
// a message the server accepts (its max_payload less headerRoom). An event
// that alone is larger than limit cannot be stored: it is left out and
// counted in tooLarge (its sequence number is then missing from the
// journal). Bytes that are not events (the LF owed to the previous record's
// CRLF) stay with the events around them while the part has room, else
// start the next part. End goes with the last part.
//
// The record's events carry consecutive sequence numbers from FirstSeq:
// the processor numbers a chunk's events while it holds the session.
func splitRecord(rec session.Record, limit int) (parts []session.Record, tooLarge int) {
	part := func() session.Record {
		return session.Record{Session: rec.Session, Stream: rec.Stream, Principal: rec.Principal, Base: rec.Base}
	}
	cur := part()      // the part being built; its Data is set when it is closed
	start, off := 0, 0 // offsets in rec.Data: cur's first byte, the segment at hand
	seq := rec.FirstSeq
	closePart := func(end int) {
		if cur.Count > 0 || end > start {
			cur.Data = rec.Data[start:end:end]
			parts = append(parts, cur)
		}
		cur, start = part(), end
	}
	take := func(seg sse.Segment) {
		end := off + len(seg.Raw)
		event := seg.Kind == sse.KindBlock && (seg.HasData || seg.HasID)
		switch {
		case event && len(seg.Raw) > limit:
			closePart(off)
			tooLarge++
			seq++
			start = end // left out
		default:
			if end-start > limit && off > start {
				// What is at hand starts the next part; so do bytes that
				// are not events when the part is full.
				closePart(off)
			}
			if event {
				if cur.Count == 0 {
					cur.FirstSeq = seq
				}
				cur.LastSeq, cur.Count = seq, cur.Count+1
				seq++
				if seg.HasID && len(seg.ID) > 0 {
					if cur.FirstID == "" {
						cur.FirstID = string(seg.ID)
					}
					cur.LastID = string(seg.ID)
				}
			}
		}
		off = end
	}
	// Never oversize: the record holds whole events. Mid-stream: a record
	// never holds the stream's BOM.
	p := sse.Parser{MaxEventSize: len(rec.Data) + 1, MidStream: true}
	p.Feed(rec.Data)
	for seg, ok := p.Next(); ok; seg, ok = p.Next() {
		take(seg)
	}
	if tail := p.Flush(); len(tail) > 0 {
		take(sse.Segment{Raw: tail}) // a partial block (never in a processor's record), kept as received
	}
	closePart(len(rec.Data))
	if len(parts) > 0 {
		parts[len(parts)-1].End = rec.End
	} else if rec.End {
		parts = append(parts, session.Record{Session: rec.Session, Stream: rec.Stream, Principal: rec.Principal, Base: rec.Base, End: true})
	}
	return parts, tooLarge
}
