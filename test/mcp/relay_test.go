package mcpe2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// cutRelay is a TCP relay between an HTTP/1.1 client and Envoy that loses the last mile of
// one SSE response the way a broken network does: Envoy has sent the events, the client
// never sees them.
//
// Every connection is copied both ways untouched, except the first one that carries a
// request containing marker (for MCP, `"tools/call"`). On that connection the response is
// read as HTTP/1.1 (headers, then a chunked body) and its SSE events are split at blank
// lines: the relay forwards the body up to and including the first event for which cutAfter
// returns true, then reads and discards the next swallow events that carry data, calls
// beforeDrop, and closes both sides of the connection. The client sees its stream end
// without the chunked body's terminator: a dropped connection.
//
// The SSE splitting handles LF and CRLF line endings (what the Go SDK and Envoy send), not
// lone CRs.
type cutRelay struct {
	addr       string // where clients connect, 127.0.0.1:port
	target     string // Envoy's listener
	marker     []byte
	cutAfter   func(event []byte) bool
	swallow    int
	beforeDrop func() error

	// passedID is the id of the last event passed (the cut event's), "" if it had none;
	// set before done is closed.
	passedID string

	claimed atomic.Bool
	done    chan struct{} // closed when the chosen connection was dropped

	mu        sync.Mutex
	swallowed [][]byte // the events read from Envoy and never forwarded
	conns     []net.Conn
	errs      []error
}

// startCutRelay starts a relay to target; it stops when t ends.
func startCutRelay(t *testing.T, target string, r *cutRelay) *cutRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	r.addr = ln.Addr().String()
	r.target = target
	r.done = make(chan struct{})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.conns {
			c.Close()
		}
		for _, err := range r.errs {
			t.Errorf("relay: %v", err)
		}
	})
	return r
}

// Swallowed returns the events the relay read from Envoy and did not forward.
func (r *cutRelay) Swallowed() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.swallowed...)
}

func (r *cutRelay) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

func (r *cutRelay) track(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.conns = append(r.conns, c)
}

// serve relays one client connection.
func (r *cutRelay) serve(client net.Conn) {
	r.track(client)
	upstream, err := net.Dial("tcp", r.target)
	if err != nil {
		r.fail(fmt.Errorf("dial %s: %w", r.target, err))
		client.Close()
		return
	}
	r.track(upstream)
	defer client.Close()
	defer upstream.Close()

	// chosen is set before the request that carries the marker is forwarded in full, so
	// every response byte read after it belongs to that request (an HTTP/1.1 client sends
	// its next request only after it has read the previous response).
	var chosen atomic.Bool
	go func() {
		defer upstream.(*net.TCPConn).CloseWrite()
		var seen []byte
		buf := make([]byte, 32<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				if !chosen.Load() && !r.claimed.Load() {
					seen = append(seen, buf[:n]...)
					if bytes.Contains(seen, r.marker) && r.claimed.CompareAndSwap(false, true) {
						chosen.Store(true)
					}
					if len(seen) > 64<<10 {
						seen = seen[len(seen)-len(r.marker):]
					}
				}
				if _, err := upstream.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()

	buf := make([]byte, 32<<10)
	for {
		n, err := upstream.Read(buf)
		if n > 0 && chosen.Load() {
			if err := r.cut(client, upstream, buf[:n]); err != nil {
				r.fail(err)
			}
			return
		}
		if n > 0 {
			if _, err := client.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// cut handles the chosen response, whose first bytes are first.
func (r *cutRelay) cut(client, upstream net.Conn, first []byte) error {
	br := bufio.NewReader(io.MultiReader(bytes.NewReader(first), upstream))
	// Status line and headers, forwarded as they are.
	var head bytes.Buffer
	chunked := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("response headers: %w", err)
		}
		head.WriteString(line)
		name, value, _ := strings.Cut(strings.TrimSpace(line), ":")
		if strings.EqualFold(name, "transfer-encoding") && strings.EqualFold(strings.TrimSpace(value), "chunked") {
			chunked = true
		}
		if line == "\r\n" {
			break
		}
	}
	if _, err := client.Write(head.Bytes()); err != nil {
		return err
	}
	if !chunked {
		return fmt.Errorf("the response to cut is not chunked:\n%s", head.Bytes())
	}

	var split sseSplitter
	passing := true
	for {
		size, err := readChunkSize(br)
		if err != nil {
			return err
		}
		if size == 0 {
			return fmt.Errorf("the stream ended before the relay could cut it (swallowed %d of %d events)", len(r.Swallowed()), r.swallow)
		}
		data := make([]byte, size+2)
		if _, err := io.ReadFull(br, data); err != nil {
			return fmt.Errorf("chunk: %w", err)
		}
		data = data[:size]

		forward := len(data)
		if !passing {
			forward = 0
		}
		drop := false
		split.feed(data, func(event []byte, end int) {
			switch {
			case passing && hasData(event) && r.cutAfter(event):
				passing = false
				forward = end
				r.passedID, _ = eventID(event)
			case !passing && hasData(event) && !drop:
				r.mu.Lock()
				r.swallowed = append(r.swallowed, bytes.Clone(event))
				drop = len(r.swallowed) == r.swallow
				r.mu.Unlock()
			}
		})
		if forward > 0 {
			if _, err := fmt.Fprintf(client, "%x\r\n%s\r\n", forward, data[:forward]); err != nil {
				return err
			}
		}
		if drop {
			var err error
			if r.beforeDrop != nil {
				err = r.beforeDrop()
			}
			client.Close()
			upstream.Close()
			close(r.done)
			return err
		}
	}
}

// readChunkSize reads the size line of an HTTP/1.1 chunk (RFC 9112 §7.1).
func readChunkSize(br *bufio.Reader) (int, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("chunk size: %w", err)
	}
	hex, _, _ := strings.Cut(strings.TrimSpace(line), ";")
	size, err := strconv.ParseInt(hex, 16, 32)
	if err != nil || size < 0 {
		return 0, fmt.Errorf("chunk size line %q", line)
	}
	return int(size), nil
}

// sseSplitter splits an SSE body into blocks at blank lines (LF or CRLF endings).
type sseSplitter struct {
	block   []byte
	lineLen int // bytes of the current line so far, without its line ending
}

// feed passes each block completed in p to fn, with its bytes (from its first line to its
// blank line) and the offset in p just after it.
func (s *sseSplitter) feed(p []byte, fn func(block []byte, end int)) {
	for i, b := range p {
		s.block = append(s.block, b)
		switch b {
		case '\n':
			if s.lineLen == 0 {
				fn(s.block, i+1)
				s.block = s.block[:0]
			}
			s.lineLen = 0
		case '\r':
		default:
			s.lineLen++
		}
	}
}

// hasData reports whether an SSE block has a data line with a non-empty value (MCP's
// priming event has an empty one).
func hasData(block []byte) bool {
	_, ok := eventData(block)
	return ok
}

// eventData returns the value of a block's first non-empty data line.
func eventData(block []byte) ([]byte, bool) {
	for line := range bytes.Lines(block) {
		v, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("data:"))
		v = bytes.TrimPrefix(v, []byte(" "))
		if ok && len(v) > 0 {
			return v, true
		}
	}
	return nil, false
}

// eventID returns the value of a block's id line, and whether it has one.
func eventID(block []byte) (string, bool) {
	for line := range bytes.Lines(block) {
		v, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("id:"))
		if ok {
			return string(bytes.TrimPrefix(v, []byte(" "))), true
		}
	}
	return "", false
}

// progressOf returns the progress of an SSE block holding an MCP notifications/progress
// message.
func progressOf(block []byte) (int, bool) {
	data, ok := eventData(block)
	if !ok {
		return 0, false
	}
	var msg struct {
		Method string `json:"method"`
		Params struct {
			Progress float64 `json:"progress"`
		} `json:"params"`
	}
	if err := json.Unmarshal(data, &msg); err != nil || msg.Method != "notifications/progress" {
		return 0, false
	}
	return int(msg.Params.Progress), true
}
