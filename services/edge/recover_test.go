package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus/bustest"
	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// recorder publishes through a bus that keeps history, as the API does.
func (e *edge) recorder(t *testing.T) *redisbus.Bus {
	t.Helper()
	b, err := redisbus.New(e.redis.Client(t), redisbus.Options{Prefix: e.prefix, HistoryMaxLen: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// positions is what a client keeps to resume: namespace → position.
type positions map[string]struct{ Offset, Epoch string }

// follow reads n events, checking their order, and moves ps past them.
func (c *client) follow(ps positions, n int) []string {
	c.t.Helper()
	var got []string
	for range n {
		f := c.next()
		if f.Event == nil || f.Offset == "" || f.Epoch == "" {
			c.t.Fatalf("frame %+v, want an event with its position", f)
		}
		ns, _, _ := strings.Cut(f.Channel, ":")
		ps[ns] = struct{ Offset, Epoch string }{f.Offset, f.Epoch}
		got = append(got, f.subject())
	}
	return got
}

// resume subscribes to pattern from ps and returns the reply.
func (c *client) resume(id, pattern string, ps positions) frame {
	c.t.Helper()
	since := map[string]map[string]string{}
	for ns, p := range ps {
		since[ns] = map[string]string{"offset": p.Offset, "epoch": p.Epoch}
	}
	b, _ := json.Marshal(since)
	return c.do(fmt.Sprintf(`{"action":"subscribe","channel":%q,"id":%q,"since":%s}`, pattern, id, b))
}

// A client that was away resumes each subscription from the positions of
// the last events it got: everything published meanwhile comes, once, in
// order, then the live events; for an exact channel, a pattern in one
// namespace, and a pattern across three.
func TestResumeAfterReconnect(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	for _, tt := range []struct {
		pattern  string
		channels []string // published on in turn
	}{
		{"ra:x", []string{"ra:x"}},
		{"rb:*", []string{"rb:x", "rb:y"}},
		{"*", []string{"rc1:x", "rc2:y", "rc3:z"}},
	} {
		t.Run(tt.pattern, func(t *testing.T) {
			t.Parallel()
			e := startEdge(t, srv, nil)
			rec := e.recorder(t)
			publish := func(from, to int) []string {
				var subjects []string
				for i := from; i < to; i++ {
					ch := tt.channels[i%len(tt.channels)]
					s := fmt.Sprintf("%s#%d", ch, i)
					if _, err := rec.Publish(t.Context(), ch, event(t, ch, s)); err != nil {
						t.Fatal(err)
					}
					subjects = append(subjects, s)
				}
				return subjects
			}
			tok := mint(t, "u1", "*")
			c := e.dial(t, tok)
			ps := positions{}
			if r := c.do(fmt.Sprintf(`{"action":"subscribe","channel":%q,"id":"1"}`, tt.pattern)); !r.OK || r.Recovered != nil {
				t.Fatalf("subscribe = %+v, want ok, nothing about recovery", r)
			}
			want := publish(0, 6)
			if got := c.follow(ps, 6); !equal(got, want...) {
				t.Fatalf("live = %q, want %q", got, want)
			}
			c.conn.CloseNow()
			missed := publish(6, 306)
			c = e.dial(t, tok)
			r := c.resume("2", tt.pattern, ps)
			if !r.OK || r.Recovered == nil || !*r.Recovered || r.Missed == nil || *r.Missed != 300 {
				t.Fatalf("resume = %+v, want recovered, 300 missed", r)
			}
			got := c.follow(ps, 300)
			if !bustest.SameInEachNamespace(got, missed) {
				t.Fatalf("recovered %q, want %q in each namespace's order", got, missed)
			}
			live := publish(306, 309)
			if got := c.follow(ps, 3); !equal(got, live...) {
				t.Fatalf("then %q, want %q", got, live)
			}
		})
	}
}

// A subscription without a position is told where its namespaces stand,
// and resuming from there gives what came after.
func TestResumeFromTheSubscribePositions(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), nil)
	rec := e.recorder(t)
	if _, err := rec.Publish(t.Context(), "rp:x", event(t, "rp:x", "before")); err != nil {
		t.Fatal(err)
	}
	tok := mint(t, "u1", "*")
	c := e.dial(t, tok)
	r := c.do(`{"action":"subscribe","channel":"rp:*","id":"1"}`)
	if !r.OK || r.Positions["rp"].Offset == "" {
		t.Fatalf("subscribe = %+v, want the position of rp", r)
	}
	c.conn.CloseNow()
	if _, err := rec.Publish(t.Context(), "rp:x", event(t, "rp:x", "after")); err != nil {
		t.Fatal(err)
	}
	c = e.dial(t, tok)
	if r := c.resume("2", "rp:*", positions(r.Positions)); r.Missed == nil || *r.Missed != 1 {
		t.Fatalf("resume = %+v, want 1 missed", r)
	}
	if got := c.follow(positions{}, 1); !equal(got, "after") {
		t.Fatalf("recovered %q, want [after]", got)
	}
}

// A resumption that cannot be whole says why, and live events follow.
func TestResumeThatCannotRecover(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t) // flushed below: a server of its own
	redistest.RequireReal(t, srv)
	e := startEdge(t, srv, map[string]string{"EDGE_RECOVER_MAX": "10"})
	rec := e.recorder(t)
	tok := mint(t, "u1", "*")
	c := e.dial(t, tok)
	c.subscribe("1", "rf:*")
	ps := positions{}
	if _, err := rec.Publish(t.Context(), "rf:x", event(t, "rf:x", "seen")); err != nil {
		t.Fatal(err)
	}
	c.follow(ps, 1)
	c.conn.CloseNow()
	for i := range 11 {
		if _, err := rec.Publish(t.Context(), "rf:x", event(t, "rf:x", fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	c = e.dial(t, tok)
	if r := c.resume("2", "rf:*", ps); r.Recovered == nil || *r.Recovered || r.Reason != "too_many" {
		t.Fatalf("resume past EDGE_RECOVER_MAX = %+v, want recovered false, too_many", r)
	}
	c.conn.CloseNow()
	if err := srv.Client(t).FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := rec.Publish(t.Context(), "rf:x", event(t, "rf:x", "new epoch")); err != nil {
		t.Fatal(err)
	}
	c = e.dial(t, tok)
	if r := c.resume("3", "rf:*", ps); r.Recovered == nil || *r.Recovered || r.Reason != "epoch_changed" {
		t.Fatalf("resume after a flush = %+v, want recovered false, epoch_changed", r)
	}
	if _, err := rec.Publish(t.Context(), "rf:x", event(t, "rf:x", "live")); err != nil {
		t.Fatal(err)
	}
	if got := c.follow(positions{}, 1); !equal(got, "live") {
		t.Fatalf("then %q, want [live]", got)
	}
}

// Live clients miss nothing across a Redis crash: Redis is killed (its data
// kept in the append-only file) and restarted while events flow, and the
// edge reads what its subscription missed from the record. Every event
// acknowledged to the publisher reaches the client, once, in order.
func TestLiveClientsMissNothingAcrossARedisRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.StartPersistent(t)
	e := startEdge(t, srv, nil)
	rec := e.recorder(t)
	c := e.dial(t, mint(t, "1", "*"))
	c.subscribe("1", "rr:*")
	const n = 300
	halfway := make(chan struct{})
	acked := make(chan []string, 1)
	go func() {
		var subjects []string
		signal := halfway
		for i := 0; len(subjects) < n; i++ {
			if len(subjects) == n/2 && signal != nil {
				close(signal)
				signal = nil
			}
			s := fmt.Sprint(i)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := rec.Publish(ctx, "rr:x", event(t, "rr:x", s))
			cancel()
			if err == nil {
				subjects = append(subjects, s)
			}
		}
		acked <- subjects
	}()
	<-halfway
	srv.Stop(t) // SIGKILL
	srv.Restart(t)
	want := <-acked
	got := make(map[string]bool)
	var order []string
	for len(got) < len(want) || !allIn(want, got) {
		f := c.next()
		s := f.subject()
		if got[s] {
			t.Fatalf("event %s came twice (after %d events)", s, len(order))
		}
		got[s] = true
		order = append(order, s)
	}
	// Events the publisher was not told about may have come too (a
	// publish whose reply was lost); the acknowledged ones come in order.
	var gotAcked []string
	for _, s := range order {
		if slices.Contains(want, s) {
			gotAcked = append(gotAcked, s)
		}
	}
	if !equal(gotAcked, want...) {
		t.Fatalf("acknowledged events came in the order %q, want %q", gotAcked, want)
	}
	if v := e.metric(t, `eventbus_edge_recoveries_total{result="gap"}`); v < 1 {
		t.Fatalf("gap recoveries = %v, want the edge to have read its gap from the record", v)
	}
}

func allIn(want []string, got map[string]bool) bool {
	for _, s := range want {
		if !got[s] {
			return false
		}
	}
	return true
}
