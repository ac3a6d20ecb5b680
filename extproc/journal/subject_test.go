package journal

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ssetrack/ssetrack/extproc/journal/history"
)

var routingIDs = []string{
	"a.b.c", "*", ">", "x y", "sess.>", "ünïcødé-セッション", strings.Repeat("z", 3000),
	"a", "", " ", ".", "..", "\r\n", "\x00", "b64:abc", "=", "plain-id-123",
	// Two ids whose plain encodings differ only by what a hash would use.
	strings.Repeat("y", 150), strings.Repeat("y", 151),
}

func TestSubjectToken(t *testing.T) {
	seen := map[string]string{}
	for _, id := range routingIDs {
		tok := SubjectToken(id)
		if tok == "" || len(tok) > 200 {
			t.Errorf("SubjectToken(%.20q) = %q: bad length", id, tok)
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '=') {
				t.Errorf("SubjectToken(%.20q) = %q: byte %q", id, tok, c)
			}
		}
		hashed := strings.HasPrefix(tok, "=")
		if hashed != (len(id) == 0 || len(id) > 150) {
			t.Errorf("SubjectToken(%.20q) hashed = %v", id, hashed)
		}
		if strings.Contains(tok[1:], "=") {
			t.Errorf("SubjectToken(%.20q) = %q: '=' inside", id, tok)
		}
		if SubjectToken(id) != tok {
			t.Errorf("SubjectToken(%.20q) not deterministic", id)
		}
		if prev, ok := seen[tok]; ok {
			t.Errorf("ids %.20q and %.20q share token %q", prev, id, tok)
		}
		seen[tok] = id
		if got := Subject("", id); got != DefaultSubjectPrefix+"."+tok {
			t.Errorf("Subject = %q", got)
		}
	}
}

// TestRouting publishes events of sessions with hostile ids and checks each
// session finds exactly its own events under its own subject.
func TestRouting(t *testing.T) {
	s := startTestServer(t)
	nc := connect(t, s.ClientURL())
	cfg := Config{Storage: 1, Batch: BatchConfig{MaxDelay: 5 * time.Millisecond}}
	p := newPublisher(t, nc, cfg)
	for i, id := range routingIDs {
		for j := 0; j < 3; j++ {
			if !p.Append(record(id, "s", 1+j*(i+1), i+1, false)) {
				t.Fatal("append refused")
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	js := jsOf(t, nc)
	total := 0
	for i, id := range routingIDs {
		bs := readAll(t, js, cfg, id)
		n := 0
		for _, b := range bs {
			if b.Session != id {
				t.Errorf("session %.20q: found batch of %.20q", id, b.Session)
			}
			n += b.Count
		}
		if n != 3*(i+1) {
			t.Errorf("session %.20q: %d events, want %d", id, n, 3*(i+1))
		}
		total += len(bs)
	}
	st, err := js.Stream(ctx, DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if int(info.State.Msgs) != total || info.State.NumSubjects != uint64(len(routingIDs)) {
		t.Errorf("stream has %d msgs on %d subjects, want %d on %d", info.State.Msgs, info.State.NumSubjects, total, len(routingIDs))
	}
}

// TestLongIDsStayOutOfHeaders: JetStream caps headers at 64 KiB, so ids
// longer than maxIDHeader are read back from the payload instead.
func TestLongIDsStayOutOfHeaders(t *testing.T) {
	long := strings.Repeat("x", 100_000)
	data := []byte("id: " + long + "\ndata: a\n\nid: short\ndata: b\n\n")
	b := Batch{Session: "s", Stream: "t", FirstID: long, LastID: "short", Count: 2, FirstSeq: 1, LastSeq: 2, Data: data}
	h := header(&b, "msg-id")
	if h.Get(HeaderFirstID) != "" || h.Get(HeaderIDs) != "payload" {
		t.Fatalf("headers %v: want ids left to the payload", h)
	}
	size := 0
	for k, vs := range h {
		for _, v := range vs {
			size += len(k) + len(v)
		}
	}
	if size > 4096 {
		t.Errorf("headers take %d bytes", size)
	}
	got, err := history.Decode(h, data)
	if err != nil {
		t.Fatal(err)
	}
	if got.FirstID != long || got.LastID != "short" {
		t.Errorf("decoded first id of %d bytes, last %q", len(got.FirstID), got.LastID)
	}
}

// TestDefaultsMatchHistory: package history, which consumers import instead
// of this one, names the same stream and subjects by default.
func TestDefaultsMatchHistory(t *testing.T) {
	if DefaultStream != history.DefaultStream || DefaultSubjectPrefix != history.DefaultSubjectPrefix {
		t.Errorf("journal defaults %q, %q; history %q, %q", DefaultStream, DefaultSubjectPrefix, history.DefaultStream, history.DefaultSubjectPrefix)
	}
}
