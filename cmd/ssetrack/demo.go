package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// demoUpstream runs a small SSE server for demos and the compose file. Each
// stream sends numbered events with ids "<n>"; a request with Last-Event-ID
// continues after that id, first repeating --overlap events the client
// already has, as some upstreams do, so ssetrack's dedup has work to show.
func demoUpstream(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo-upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "`address` to serve SSE on")
	interval := fs.Duration("interval", 200*time.Millisecond, "time between events")
	count := fs.Int("count", 0, "end each stream after this many events (0: never)")
	overlap := fs.Int("overlap", 3, "on a resume, repeat this many events before Last-Event-ID")
	fs.Usage = flagUsage(fs, stderr, "ssetrack demo-upstream [flags]")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log := newLogger(stderr, "info", "text")
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		serveDemoStream(w, r, *interval, *count, *overlap)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("demo upstream listening", "addr", lis.Addr().String())
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func serveDemoStream(w http.ResponseWriter, r *http.Request, interval time.Duration, count, overlap int) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	sid := r.Header.Get("Mcp-Session-Id")
	if sid == "" {
		var b [12]byte
		rand.Read(b[:])
		sid = hex.EncodeToString(b[:])
	}
	next := 1
	if last, err := strconv.Atoi(r.Header.Get("Last-Event-Id")); err == nil && last >= 0 {
		next = max(1, last+1-overlap)
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Mcp-Session-Id", sid)
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": demo stream\n\n")
	flusher.Flush()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for n := next; count == 0 || n <= count; n++ {
		fmt.Fprintf(w, "id: %d\nevent: tick\ndata: {\"n\":%d,\"at\":%q}\n\n", n, n, time.Now().UTC().Format(time.RFC3339Nano))
		flusher.Flush()
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
	slog.Debug("demo stream done", "events", count)
}
