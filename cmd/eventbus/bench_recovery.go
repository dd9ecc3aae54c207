package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"
)

// recoveryNamespace is where bench recovery publishes: its events are
// benchrec.event on channel benchrec:event.
const recoveryNamespace = "benchrec"

func benchRecovery(ctx context.Context, e env, args []string) error {
	fs := flags(e, "bench recovery", "",
		"One WebSocket client subscribes, takes an event, and goes away while --events events\n"+
			"are published over gRPC; then it resumes from its position and the time to catch up\n"+
			"is measured: from the resuming subscribe to the last missed event. Every event must\n"+
			"come once, in order, and the edge must say recovered (run the edge with\n"+
			"EDGE_RECOVER_MAX at least --events).")
	var b benchFlags
	b.register(fs, e)
	n := fs.Int("events", 10_000, "events published while the client is away")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 || *n < 1 {
		fs.Usage()
		return errUsage
	}
	tok, err := b.token(ctx, "bench-recovery")
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(b.grpc.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := eventbusv1.NewEventServiceClient(conn)
	pctx := ctx
	if b.apiKey != "" {
		pctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+b.apiKey)
	}
	publish := func(count int) error {
		const perStream = 1000
		g, gctx := errgroup.WithContext(pctx)
		g.SetLimit(4)
		for from := 0; from < count; from += perStream {
			g.Go(func() error {
				stream, err := client.PublishStream(gctx)
				if err != nil {
					return err
				}
				req := &eventbusv1.PublishStreamRequest{Event: &eventbusv1.Envelope{Type: recoveryNamespace + ".event", Subject: "recovery"}}
				for range min(perStream, count-from) {
					if err := stream.Send(req); err != nil {
						return err
					}
				}
				resp, err := stream.CloseAndRecv()
				if err == nil && resp.GetRejected() > 0 {
					err = fmt.Errorf("%d events rejected", resp.GetRejected())
				}
				return err
			})
		}
		return g.Wait()
	}

	// Subscribe, and take one event for a position.
	var src sourceClients
	ws, err := b.dialEdge(ctx, &src, 0, tok, recoveryNamespace+":*")
	if err != nil {
		return err
	}
	ws.SetReadLimit(1 << 20)
	if err := publish(1); err != nil {
		ws.CloseNow()
		return fmt.Errorf("publish: %w", err)
	}
	var r recoveryReader
	if err := r.read(ctx, ws, 1); err != nil {
		ws.CloseNow()
		return err
	}
	since := map[string]map[string]string{recoveryNamespace: {"offset": r.last, "epoch": r.epoch}}
	ws.CloseNow()

	t0 := time.Now()
	if err := publish(*n); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	published := time.Since(t0)

	ws, _, err = websocket.Dial(ctx, b.wsURL(tok), &websocket.DialOptions{HTTPClient: src.get(1)})
	if err != nil {
		return err
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 20)
	start := time.Now()
	s, _ := json.Marshal(since)
	if err := ws.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"action":"subscribe","channel":"%s:*","id":"r","since":%s}`, recoveryNamespace, s)); err != nil {
		return err
	}
	r = recoveryReader{last: r.last}
	if err := r.read(ctx, ws, *n); err != nil {
		return err
	}
	elapsed := time.Since(start)
	res := result{
		{"events", *n}, {"recovered", r.recovered}, {"missed", r.missed}, {"received", r.events},
		{"publish_s", round(published.Seconds(), 2)}, {"catch_up_s", round(elapsed.Seconds(), 3)},
		{"recovered_per_sec", round(float64(r.events)/elapsed.Seconds(), 0)},
	}
	if err := res.print(e.stdout, b.json, "recovery"); err != nil {
		return err
	}
	if !r.recovered || r.missed != *n || r.events != *n {
		fmt.Fprintf(e.stderr, "\n*** recovery: recovered %v, %d missed, %d received; want %d of each ***\n\n", r.recovered, r.missed, r.events, *n)
		return errLoss
	}
	return nil
}

// recoveryReader reads a subscription's frames: the reply, then events,
// each after the last.
type recoveryReader struct {
	recovered   bool
	missed      int
	events      int
	last, epoch string
}

// read reads until n events came, checking that offsets only grow.
func (r *recoveryReader) read(ctx context.Context, ws *websocket.Conn, n int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for r.events < n {
		_, msg, err := ws.Read(ctx)
		if err != nil {
			return fmt.Errorf("recovery: after %d events: %w", r.events, err)
		}
		for line := range bytes.SplitSeq(msg, []byte("\n")) {
			if bytes.HasPrefix(line, []byte(`{"channel":`)) {
				// An event: its offset is all this needs, and decoding
				// the whole frame would make the client the bottleneck.
				offset, epoch := stringField(line, "offset"), stringField(line, "epoch")
				if r.last != "" && bus.CompareOffsets(offset, r.last) <= 0 {
					return fmt.Errorf("recovery: event at %s after %s: out of order or twice", offset, r.last)
				}
				r.last, r.epoch = offset, epoch
				r.events++
				continue
			}
			var f struct {
				ID        string
				Recovered *bool
				Missed    int
				Reason    string
				Offset    string
				Epoch     string
				Event     json.RawMessage
				Error     *struct{ Code, Message string }
			}
			if err := json.Unmarshal(line, &f); err != nil {
				return fmt.Errorf("recovery: frame %s: %w", line, err)
			}
			switch {
			case f.Error != nil:
				return fmt.Errorf("recovery: %s: %s", f.Error.Code, f.Error.Message)
			case f.ID == "r":
				r.recovered, r.missed = f.Recovered != nil && *f.Recovered, f.Missed
				if !r.recovered {
					return fmt.Errorf("recovery: the edge did not recover: %s (is EDGE_RECOVER_MAX below %d?)", f.Reason, n)
				}
			case f.Event != nil:
				if r.last != "" && bus.CompareOffsets(f.Offset, r.last) <= 0 {
					return fmt.Errorf("recovery: event at %s after %s: out of order or twice", f.Offset, r.last)
				}
				r.last, r.epoch = f.Offset, f.Epoch
				r.events++
			}
		}
	}
	return nil
}

// stringField returns the value of the first "key":"value" in a frame, or
// "" (offsets and epochs hold nothing JSON escapes).
func stringField(frame []byte, key string) string {
	k := []byte(`"` + key + `":"`)
	i := bytes.Index(frame, k)
	if i < 0 {
		return ""
	}
	rest := frame[i+len(k):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}
