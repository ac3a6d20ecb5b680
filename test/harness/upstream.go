package harness

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Upstream is an SSE server on a real TCP port whose responses a test scripts per path. It
// records every body it sent and every request body it received, so a test computes what
// the client must receive from the bytes that were actually sent.
type Upstream struct {
	// Port is the port it listens on, on 127.0.0.1.
	Port int

	mu     sync.Mutex
	next   int
	routes map[string]*route
}

// route is one scripted path.
type route struct {
	plan     func(n int, r *http.Request) Reply // n counts requests to the path from 0
	reqs     int
	sent     [][]byte // bodies sent, by request
	received [][]byte // request bodies received, by request
}

// Reply is one scripted response: headers, then the body cut into pieces at the given
// offsets, each piece flushed on its own (so Envoy reads it as a separate chunk) with a
// pause before the next.
type Reply struct {
	// Header is added to the response; Content-Type defaults to text/event-stream.
	Header http.Header
	Body   []byte
	// Cuts are ascending offsets into Body.
	Cuts  []int
	Pause time.Duration
	// Hold keeps the response open after the body until the client goes away.
	Hold bool
	// BeforeWrite, if set, is called before each piece is written, with the piece's offset
	// into Body. It may block, to hold the stream back.
	BeforeWrite func(off int)
	// Trailer, if set, is sent as HTTP trailers after the body (HTTP/2, or chunked
	// HTTP/1.1).
	Trailer http.Header
	// Abort cuts the connection after the body instead of ending the response: no final
	// chunk (HTTP/1.1 closes the connection, HTTP/2 resets the stream), so the body may stop
	// in the middle of an event.
	Abort bool
}

// StartUpstream starts an Upstream; it stops when tb ends.
func StartUpstream(tb TB) *Upstream {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("upstream: %v", err)
	}
	u := &Upstream{Port: l.Addr().(*net.TCPAddr).Port, routes: map[string]*route{}}
	// HTTP/1.1 and, for a cluster with http2_protocol_options, HTTP/2 over cleartext
	// (prior knowledge).
	srv := &http.Server{Handler: u, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			tb.Errorf("upstream: %v", err)
		}
	}()
	tb.Cleanup(func() { srv.Close() })
	return u
}

// Handle registers plan under a fresh path and returns the path. plan gets the number of
// the request to the path (from 0) and the request.
func (u *Upstream) Handle(plan func(n int, r *http.Request) Reply) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.next++
	path := "/s/" + strconv.Itoa(u.next)
	u.routes[path] = &route{plan: plan}
	return path
}

// Static registers a path that sends rep to every request.
func (u *Upstream) Static(rep Reply) string {
	return u.Handle(func(int, *http.Request) Reply { return rep })
}

// Received returns the request bodies received on path so far, by request.
func (u *Upstream) Received(path string) [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.routes[path].received...)
}

// Sent returns the bodies sent (or being sent) on path so far, by request.
func (u *Upstream) Sent(path string) [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.routes[path].sent...)
}

// ServeHTTP serves the scripted paths; others get 404.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	rt.sent[n] = rep.Body
	rt.received[n] = reqBody
	u.mu.Unlock()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	for k, v := range rep.Header {
		h[k] = v
	}
	for k := range rep.Trailer {
		h.Add("Trailer", k)
	}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	prev := 0
	for _, cut := range append(rep.Cuts, len(rep.Body)) {
		if cut <= prev {
			continue
		}
		if rep.Pause > 0 && prev > 0 {
			time.Sleep(rep.Pause)
		}
		if rep.BeforeWrite != nil {
			rep.BeforeWrite(prev)
		}
		if _, err := w.Write(rep.Body[prev:cut]); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		prev = cut
	}
	if rep.Abort {
		panic(http.ErrAbortHandler) // net/http closes the connection without logging
	}
	for k, v := range rep.Trailer {
		h[k] = v
	}
	if rep.Hold {
		<-r.Context().Done()
	}
}

// Event is one SSE event as an upstream writes it.
type Event struct {
	ID   string // "" for an id-less event
	Data string
}

// Encode returns the event's block: "id: X\ndata: Y\n\n" (without the id line if ID is "").
func (e Event) Encode() []byte {
	var b []byte
	if e.ID != "" {
		b = append(b, "id: "+e.ID+"\n"...)
	}
	b = append(b, "data: "+e.Data+"\n\n"...)
	return b
}

// EncodeAll concatenates the events' blocks.
func EncodeAll(evs []Event) []byte {
	var b []byte
	for _, e := range evs {
		b = append(b, e.Encode()...)
	}
	return b
}

// ResumeFrom returns the events an upstream that honours Last-Event-ID sends, but that
// replays overlap events too many: the events after lastID, preceded by the overlap events
// up to and including lastID. Without lastID (or with an unknown one) it sends them all.
func ResumeFrom(evs []Event, lastID string, overlap int) []Event {
	if lastID == "" {
		return evs
	}
	for i, e := range evs {
		if e.ID == lastID {
			return evs[max(0, i+1-overlap):]
		}
	}
	return evs
}

// EveryCut returns cuts every n bytes of a body of length size.
func EveryCut(size, n int) []int {
	var cuts []int
	for i := n; i < size; i += n {
		cuts = append(cuts, i)
	}
	return cuts
}

// EventCuts cuts a body of evs at each event boundary, so every event is a chunk of its own.
func EventCuts(evs []Event) []int {
	var cuts []int
	off := 0
	for _, e := range evs {
		off += len(e.Encode())
		cuts = append(cuts, off)
	}
	return cuts
}
