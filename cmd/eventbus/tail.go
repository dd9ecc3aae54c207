package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/sse"
)

func runTail(ctx context.Context, e env, args []string) error {
	fs := flags(e, "tail", "[PATTERN]",
		"Prints the last N events matching PATTERN (default *) from the logger, then every new\n"+
			"one as it arrives, like tail -f. It reconnects by itself and resumes where it left off.\n"+
			"A logger with API_KEYS set wants one of them: pass --api-key or EVENTBUS_API_KEY.")
	var c common
	c.register(fs, e)
	n := fs.Int("n", 10, "how many past events to print first")
	asJSON := fs.Bool("json", false, "print each event as the logger's JSON line")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		fs.Usage()
		return errUsage
	}
	pattern := "*"
	if len(pos) == 1 {
		pattern = pos[0]
	}
	if err := channel.ValidatePattern(pattern); err != nil {
		return err
	}
	t := &tailer{
		url:     fmt.Sprintf("%s/v1/tail?pattern=%s&n=%d", strings.TrimSuffix(c.logger, "/"), url.QueryEscape(pattern), *n),
		apiKey:  c.apiKey,
		http:    httpClient(0, c.connectTimeout, true), // the logger sends its headers at once
		connect: c.connectTimeout,
		e:       e,
		asJSON:  *asJSON,
	}
	return t.follow(ctx)
}

type tailer struct {
	url     string
	apiKey  string // sent as a bearer token when set
	http    *http.Client
	connect time.Duration
	e       env
	asJSON  bool
	lastID  string
}

// errFinal is a refusal that retrying will not change.
type errFinal struct{ error }

// follow streams until ctx ends, reconnecting with backoff and resuming
// after the last event printed.
func (t *tailer) follow(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		printed, err := t.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if fe := (errFinal{}); errors.As(err, &fe) {
			return fe.error
		}
		if printed {
			backoff = 100 * time.Millisecond
		}
		fmt.Fprintf(t.e.stderr, "eventbus: tail: %v; reconnecting in %v\n", err, backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// stream reads one connection until it ends; printed reports whether any
// event came through.
func (t *tailer) stream(ctx context.Context) (printed bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url, nil)
	if err != nil {
		return false, errFinal{err}
	}
	req.Header.Set("Accept", "text/event-stream")
	if t.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+t.apiKey)
	}
	if t.lastID != "" {
		req.Header.Set("Last-Event-ID", t.lastID)
	}
	resp, err := t.http.Do(req)
	if err != nil {
		return false, describe(err, t.connect)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		err := fmt.Errorf("GET %s: %s: %s", t.url, resp.Status, strings.TrimSpace(string(body)))
		if resp.StatusCode/100 == 4 {
			return false, errFinal{err}
		}
		return false, err
	}
	rd := sse.NewReader(resp.Body)
	for {
		ev, err := rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the logger closed the stream")
			}
			return printed, err
		}
		if ev.Type == "lagged" {
			fmt.Fprintln(t.e.stderr, "eventbus: tail: fell behind the logger; resuming")
			continue
		}
		t.lastID = ev.ID
		printed = true
		if t.asJSON {
			fmt.Fprintln(t.e.stdout, ev.Data)
			continue
		}
		fmt.Fprintln(t.e.stdout, readable(ev.Data))
	}
}

// readable renders a logger line for people:
//
//	2026-11-22T05:00:00.123Z  order:placed  order.placed  subject=o1  {"order_id":"o1",...}
func readable(line string) string {
	var l struct {
		Channel string `json:"channel"`
		Error   string `json:"error"`
		Event   struct {
			ID      string                     `json:"id"`
			Type    string                     `json:"type"`
			Subject string                     `json:"subject"`
			Time    string                     `json:"time"`
			Data    map[string]json.RawMessage `json:"data"`
		} `json:"event"`
	}
	if err := json.Unmarshal([]byte(line), &l); err != nil {
		return line
	}
	if l.Error != "" {
		return fmt.Sprintf("%s  (not an envelope: %s)", l.Channel, l.Error)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s  %s", l.Event.Time, l.Channel, l.Event.Type)
	if l.Event.Subject != "" {
		fmt.Fprintf(&b, "  subject=%s", l.Event.Subject)
	}
	if data := eventData(l.Event.Data); data != "" {
		b.WriteString("  " + data)
	}
	return b.String()
}

// eventData renders an Any as its fields, without the type URL: a Struct's
// value as it is, a typed message as its fields.
func eventData(d map[string]json.RawMessage) string {
	if len(d) == 0 {
		return ""
	}
	typeURL, _ := strconv.Unquote(string(d["@type"]))
	if strings.HasSuffix(typeURL, "/google.protobuf.Struct") {
		return string(d["value"])
	}
	delete(d, "@type")
	b, _ := json.Marshal(d) // sorted keys: stable output
	return string(b)
}
