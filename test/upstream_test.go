package e2e

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// upstream is the SSE server behind Envoy: a net/http server on a real TCP port whose
// responses the tests script per path. It records every body it sent, so the tests compute
// what the client must receive from the bytes that were actually sent.
type upstream struct {
	port int

	mu     sync.Mutex
	next   int
	routes map[string]*route
}

// route is one scripted path.
type route struct {
	plan     func(n int, r *http.Request) reply // n counts requests to the path from 0
	reqs     int
	sent     [][]byte         // bodies sent, by request
	received [][]byte         // request bodies received, by request
	serve    http.HandlerFunc // if set, answers instead of plan
}

// reply is one scripted response: headers, then the body cut into pieces at the given
// offsets, each piece flushed on its own (so Envoy reads it as a separate chunk) with a
// short pause before the next.
type reply struct {
	header http.Header // Content-Type defaults to text/event-stream
	body   []byte
	cuts   []int // ascending offsets into body
	pause  time.Duration
	// hold keeps the response open after the body until the client goes away.
	hold bool
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{port: l.Addr().(*net.TCPAddr).Port, routes: map[string]*route{}}
	// HTTP/1.1 and, for clusters configured with http2_protocol_options,
	// HTTP/2 over cleartext (prior knowledge).
	srv := &http.Server{Handler: u, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("upstream: %v", err)
		}
	}()
	t.Cleanup(func() { srv.Close() })
	return u
}

// handle registers plan under a fresh path and returns the path.
func (u *upstream) handle(plan func(n int, r *http.Request) reply) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.next++
	path := "/s/" + strconv.Itoa(u.next)
	u.routes[path] = &route{plan: plan}
	return path
}

// handleFunc registers a handler that writes the response itself under a
// fresh path and returns the path.
func (u *upstream) handleFunc(f http.HandlerFunc) string {
	path := u.handle(nil)
	u.mu.Lock()
	u.routes[path].serve = f
	u.mu.Unlock()
	return path
}

// static registers a path that sends rep to every request.
func (u *upstream) static(rep reply) string {
	return u.handle(func(int, *http.Request) reply { return rep })
}

// received returns the request bodies received on path so far, by request.
func (u *upstream) received(path string) [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.routes[path].received...)
}

// sent returns the bodies sent on path so far, by request.
func (u *upstream) sent(path string) [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.routes[path].sent...)
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	rt := u.routes[r.URL.Path]
	var n int
	if rt != nil {
		n = rt.reqs
		rt.reqs++
	}
	u.mu.Unlock()
	if rt == nil {
		http.NotFound(w, r)
		return
	}
	if rt.serve != nil {
		rt.serve(w, r)
		return
	}
	reqBody, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rep := rt.plan(n, r)
	u.mu.Lock()
	for len(rt.sent) <= n {
		rt.sent = append(rt.sent, nil)
		rt.received = append(rt.received, nil)
	}
	rt.sent[n] = rep.body
	rt.received[n] = reqBody
	u.mu.Unlock()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	for k, v := range rep.header {
		h[k] = v
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	prev := 0
	for _, cut := range append(rep.cuts, len(rep.body)) {
		if cut <= prev {
			continue
		}
		if rep.pause > 0 && prev > 0 {
			time.Sleep(rep.pause)
		}
		if _, err := w.Write(rep.body[prev:cut]); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		prev = cut
	}
	if rep.hold {
		<-r.Context().Done()
	}
}

// sseEvent is one event as the upstream writes it.
type sseEvent struct {
	id   string // "" for an id-less event
	data string
}

// encode returns the event's block: "id: X\ndata: Y\n\n" (without the id line if id is "").
func (e sseEvent) encode() []byte {
	var b []byte
	if e.id != "" {
		b = append(b, "id: "+e.id+"\n"...)
	}
	b = append(b, "data: "+e.data+"\n\n"...)
	return b
}

// encodeAll concatenates the events' blocks.
func encodeAll(evs []sseEvent) []byte {
	var b []byte
	for _, e := range evs {
		b = append(b, e.encode()...)
	}
	return b
}

// resumeFrom returns the events an upstream that honours Last-Event-ID sends, but replays
// overlap events too many: the events after lastID, preceded by the overlap events up to
// and including lastID. Without lastID (or an unknown one) it sends them all.
func resumeFrom(evs []sseEvent, lastID string, overlap int) []sseEvent {
	if lastID == "" {
		return evs
	}
	for i, e := range evs {
		if e.id == lastID {
			return evs[max(0, i+1-overlap):]
		}
	}
	return evs
}

// everyCut returns cuts every n bytes of a body of length size.
func everyCut(size, n int) []int {
	var cuts []int
	for i := n; i < size; i += n {
		cuts = append(cuts, i)
	}
	return cuts
}
