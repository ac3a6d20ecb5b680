package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/ssetrack/ssetrack/extproc/journal"
	"github.com/ssetrack/ssetrack/extproc/journal/history"
)

// tail prints a session's events from JetStream, in order.
func tail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var j journalFlags
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sid := fs.String("session", "", "session `id` to read (required)")
	fromID := fs.String("from-id", "", "start after the event with this `id`")
	since := fs.String("since", "", "start at events stored this long ago (a duration like 10m) or since an RFC 3339 `time`")
	follow := fs.Bool("follow", false, "keep waiting for new events")
	asJSON := fs.Bool("json", false, "print JSON lines instead of SSE")
	j.registerConn(fs, "empty: nats://"+journal.DefaultServerListen+", where serve's embedded server listens")
	fs.Usage = flagUsage(fs, stderr, "ssetrack tail --session ID [--from-id X | --since D] [--follow] [--json]")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var errs []error
	if *sid == "" {
		errs = append(errs, errors.New("--session is required"))
	}
	if *fromID != "" && *since != "" {
		errs = append(errs, errors.New("--from-id and --since exclude each other"))
	}
	opts := history.ReadOptions{FromID: *fromID, Follow: *follow}
	if *since != "" {
		t, err := parseSince(*since, time.Now())
		if err != nil {
			errs = append(errs, err)
		}
		opts.Since = t
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	conn := j.opts.Conn
	conn.URLs = j.urls.values
	if len(conn.URLs) == 0 {
		// Where `ssetrack serve`'s embedded server listens by default.
		conn.URLs = []string{"nats://" + journal.DefaultServerListen}
	}
	r, closeConn, err := journal.OpenReader(ctx, conn, j.opts.Config)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer closeConn()
	enc := json.NewEncoder(stdout)
	for ev, err := range r.Events(ctx, *sid, opts) {
		if errors.Is(err, context.Canceled) {
			return nil
		}
		if err != nil {
			return err
		}
		if *asJSON {
			err = enc.Encode(jsonEvent(ev))
		} else {
			_, err = stdout.Write(ev.Data)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// parseSince reads a duration back from now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want a duration (10m) or an RFC 3339 time", s)
}

// eventJSON is one line of `tail --json`.
type eventJSON struct {
	Session string    `json:"session"`
	Stream  string    `json:"stream"`
	Seq     uint64    `json:"seq"`
	ID      *string   `json:"id,omitempty"`
	Event   string    `json:"event,omitempty"`
	Data    string    `json:"data"`
	Raw     string    `json:"raw"`
	Time    time.Time `json:"time"`
}

func jsonEvent(ev history.Event) eventJSON {
	out := eventJSON{Session: ev.Session, Stream: ev.Stream, Seq: ev.Seq, Raw: string(ev.Data), Time: ev.Time}
	if ev.HasID {
		id := ev.ID
		out.ID = &id
	}
	out.Event, out.Data = eventFields(ev.Data)
	return out
}

// eventFields decodes an event block's type and data as a browser would:
// data lines joined with "\n".
func eventFields(block []byte) (event, data string) {
	var d []byte
	hasData := false
	for len(block) > 0 {
		end := bytes.IndexAny(block, "\r\n")
		line := block
		next := []byte(nil)
		if end >= 0 {
			line, next = block[:end], block[end+1:]
			if block[end] == '\r' && len(next) > 0 && next[0] == '\n' {
				next = next[1:]
			}
		}
		block = next
		name, value, found := bytes.Cut(line, []byte(":"))
		if len(line) == 0 || (found && len(name) == 0) {
			continue // blank line or comment
		}
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(name) {
		case "event":
			event = string(value)
		case "data":
			if hasData {
				d = append(d, '\n')
			}
			d, hasData = append(d, value...), true
		}
	}
	return event, string(d)
}
