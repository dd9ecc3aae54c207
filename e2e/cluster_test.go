package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// wsEvents follows a JSON WebSocket client subscribed to pattern, as a
// real client does: it keeps each stream's position from the frames, and
// when the edge closes the connection (1012, resume: a gap it could not
// fill) it connects again and resubscribes with since. It counts the
// subjects of the events it receives, and the times it had to resume.
type wsEvents struct {
	mu        sync.Mutex
	subjects  map[string]int
	streams   map[string]bool                           // the frames' "stream" names
	positions map[string]struct{ Offset, Epoch string } // stream → last position
	resumed   int
	done      chan error // the connection ended for good
}

func followEvents(t *testing.T, edge, pattern string) *wsEvents {
	t.Helper()
	w := &wsEvents{subjects: map[string]int{}, streams: map[string]bool{}, positions: map[string]struct{ Offset, Epoch string }{}, done: make(chan error, 1)}
	conn := dialJSON(t, edge, pattern)
	go func() {
		for {
			_, b, err := conn.Read(context.Background())
			if websocket.CloseStatus(err) == 1012 {
				w.mu.Lock()
				w.resumed++
				since, _ := json.Marshal(w.positions)
				w.mu.Unlock()
				if conn, err = dialJSONSince(t, edge, pattern, string(since)); err == nil {
					continue
				}
			}
			if err != nil {
				w.done <- err
				return
			}
			for line := range strings.SplitSeq(string(b), "\n") {
				var f struct {
					Channel, Stream, Offset, Epoch string
					Event                          struct {
						Subject string `json:"subject"`
					} `json:"event"`
				}
				if json.Unmarshal([]byte(line), &f) != nil || f.Event.Subject == "" {
					continue
				}
				stream := cmp.Or(f.Stream, strings.Split(f.Channel, ":")[0])
				w.mu.Lock()
				w.subjects[f.Event.Subject]++
				w.streams[f.Stream] = true
				if f.Offset != "" {
					w.positions[stream] = struct{ Offset, Epoch string }{f.Offset, f.Epoch}
				}
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// dialJSONSince is dialJSON resubscribing with since, a JSON object of
// positions by stream, as a resuming client does.
func dialJSONSince(t *testing.T, addr, pattern, since string) (*websocket.Conn, error) {
	tok, err := token.Issue([]byte(mqttSecret), "browser", []string{pattern}, time.Hour, time.Now())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := dialWS(ctx, t, addr, tok)
	if err != nil {
		return nil, err
	}
	req := `{"action":"subscribe","channel":"` + pattern + `","since":` + since + `,"id":"1"}`
	if err := conn.Write(ctx, websocket.MessageText, []byte(req)); err != nil {
		return nil, err
	}
	return conn, nil
}

// mqttSubjects connects paho's 3.1.1 client over /mqtt with a kept
// session, subscribes to filter at QoS 1 and counts the subjects of the
// events it receives.
func mqttSubjects(t *testing.T, edge, filter string) *wsEvents {
	t.Helper()
	tok, err := token.Issue([]byte(mqttSecret), "device", []string{strings.ReplaceAll(strings.ReplaceAll(filter, "/", ":"), "+", "*")}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	w := &wsEvents{subjects: map[string]int{}, streams: map[string]bool{}, done: make(chan error, 1)}
	// A kept session that reconnects by itself, as devices do: the edge
	// closes it, to resume, after a gap it cannot fill from the record.
	opts := paho3.NewClientOptions().AddBroker("ws://" + edge + "/mqtt").SetClientID("cluster-device").SetUsername("device").SetPassword(tok).
		SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(false).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) {
			var ev struct{ Subject string }
			_ = json.Unmarshal(m.Payload(), &ev)
			w.mu.Lock()
			w.subjects[ev.Subject]++
			w.mu.Unlock()
		})
	c := paho3.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	if tok := c.Subscribe(filter, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt subscribe %s: %v", filter, tok.Error())
	}
	return w
}

// masterHolding returns the master of c that holds a key matching pattern.
func masterHolding(t *testing.T, c *redistest.Cluster, pattern string) string {
	t.Helper()
	for _, addr := range c.Masters(t) {
		cl := redis.NewClient(&redis.Options{Addr: addr})
		keys, err := cl.Keys(t.Context(), pattern).Result()
		cl.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) > 0 {
			return addr
		}
	}
	t.Fatalf("no master holds a key matching %s", pattern)
	return ""
}

// The whole suite on a Redis Cluster (3 masters, 3 replicas), and the
// master holding the sign-ups' partition killed (SIGKILL) under a steady
// stream of them: its replica takes over; the api, logger, notification
// and edge go on without a restart; every sign-up the API acknowledged
// that the record kept is logged once, emailed once and received by a
// WebSocket client subscribed to * and by an MQTT device subscribed to
// user/+ at QoS 1; and the test prints what the dead master acknowledged
// and never replicated.
func TestSuiteOnAClusterRidesOutAFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	s := startSuite(t, c.URL, prefix)
	retainedOnACluster(t, s.edge) // before the browser, which counts every event of *
	browser := followEvents(t, s.edge, "*")
	device := mqttSubjects(t, s.edge, "user/+")
	users := signUpSteadily(t, s.api, "c")
	users.waitFor(t, 100, "sign-ups before the kill")

	victim := masterHolding(t, c, prefix+":stream:{*}:user")
	killed := time.Now()
	c.Kill(t, victim)
	users.waitFor(t, 1, "a sign-up acknowledged after the kill")
	// Those acknowledged right after the kill may have gone to other
	// partitions' masters: wait for the cluster, then for more.
	c.WaitHealthy(t)
	recovery := time.Since(killed)
	users.waitFor(t, 100, "sign-ups after the failover")
	users.end()

	// What the record kept: the API's history of user:*. A first read of
	// a slot whose master changed may answer 503 unavailable, as its
	// client learns the cluster's new shape: asked again, as a client
	// would.
	recorded := map[string]bool{}
	for cursor := ""; ; {
		var page struct {
			Events []struct {
				Event struct{ Subject string } `json:"event"`
			} `json:"events"`
			Next string `json:"next"`
			More bool   `json:"more"`
		}
		servicetest.WaitFor(t, "GET /v1/history answered", func() bool {
			resp, err := http.Get("http://" + s.api + "/v1/history?pattern=user:*&limit=1000" + cursor)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				return false
			}
			if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /v1/history = %s, %v", resp.Status, err)
			}
			return true
		})
		for _, e := range page.Events {
			recorded[e.Event.Subject] = true
		}
		if !page.More {
			break
		}
		cursor = "&since=" + page.Next
	}
	var kept []int
	for _, i := range users.acked {
		if recorded[users.user(i)] {
			kept = append(kept, i)
		}
	}
	if len(kept) < len(users.acked)/2 {
		t.Fatalf("the record kept %d of %d acknowledged sign-ups: more than a replication lag can lose", len(kept), len(users.acked))
	}
	servicetest.WaitFor(t, "every kept sign-up logged", func() bool {
		// The sign-ups' namespace: the retained check's sensor events
		// span partitions, whose offsets are not in one order.
		lines := slices.DeleteFunc(readLog(t, s.logDir), func(l loggedLine) bool { return !strings.HasPrefix(l.Channel, "user:") })
		logged := onceInOrder(t, lines)
		return !slices.ContainsFunc(kept, func(i int) bool { return !logged[users.user(i)] })
	})
	servicetest.WaitFor(t, "every kept sign-up received by the browser", func() bool {
		browser.mu.Lock()
		defer browser.mu.Unlock()
		return !slices.ContainsFunc(kept, func(i int) bool { return browser.subjects[users.user(i)] == 0 })
	})
	servicetest.WaitFor(t, "every kept sign-up received by the MQTT device", func() bool {
		device.mu.Lock()
		defer device.mu.Unlock()
		return !slices.ContainsFunc(kept, func(i int) bool { return device.subjects[users.user(i)] == 0 })
	})
	s.sg.waitFor(t, users.user, kept)
	s.sg.mu.Lock()
	for to, n := range s.sg.to {
		if n != 1 {
			t.Errorf("%s got %d welcome emails, want 1", to, n)
		}
	}
	s.sg.mu.Unlock()
	browser.mu.Lock()
	for subject, n := range browser.subjects {
		if n != 1 {
			t.Errorf("the browser received %s %d times, want once", subject, n)
		}
	}
	partitioned := len(browser.streams) > 0 && !browser.streams[""]
	browser.mu.Unlock()
	if !partitioned {
		t.Error("the browser's event frames name no partition's stream")
	}
	select {
	case err := <-browser.done:
		t.Errorf("the browser's connection ended: %v", err)
	default:
	}
	browser.mu.Lock()
	resumed := browser.resumed
	browser.mu.Unlock()
	s.running(t)
	t.Logf("killed %s holding user's partition; the cluster was whole again %v later; %d sign-ups tried, %d acknowledged, %d of them lost (acknowledged, never replicated); the browser resumed %d time(s)",
		victim, recovery.Round(time.Millisecond), users.tried, len(users.acked), len(users.acked)-len(kept), resumed)
}

// retainedOnACluster has a device keep a retained message on one topic
// and clear that of another over /mqtt, and a subscriber that comes
// later find the first alone: the store's script touches the hash of a
// namespace's partition and the two keys of its clears, one slot on a
// cluster.
func retainedOnACluster(t *testing.T, edge string) {
	t.Helper()
	tok, err := token.IssueClaims([]byte(mqttSecret), token.Claims{Channels: []string{"sensor:*"}, Publish: []string{"sensor:*"},
		RegisteredClaims: jwt.RegisteredClaims{Subject: "retainer"}}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	connect := func(id string) paho3.Client {
		c := paho3.NewClient(paho3.NewClientOptions().AddBroker("ws://" + edge + "/mqtt").SetClientID(id).
			SetUsername("device").SetPassword(tok).SetAutoReconnect(false))
		if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("%s: mqtt connect: %v", id, tk.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}
	device := connect("cluster-retainer")
	for _, m := range []struct{ topic, payload string }{
		{"sensor/kept", "21.5"}, {"sensor/gone", "19"}, {"sensor/gone", ""},
	} {
		if tk := device.Publish(m.topic, 1, true, m.payload); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("publish %s retained: %v", m.topic, tk.Error())
		}
	}
	got := make(chan string, 4)
	late := connect("cluster-late")
	tk := late.Subscribe("sensor/#", 1, func(_ paho3.Client, m paho3.Message) {
		got <- fmt.Sprintf("%s %s retained=%v", m.Topic(), m.Payload(), m.Retained())
	})
	if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscribe sensor/#: %v", tk.Error())
	}
	expect := func(want string) {
		t.Helper()
		select {
		case m := <-got:
			if m != want {
				t.Fatalf("the late subscriber got %q, want %q", m, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the late subscriber did not get %q in 10 s", want)
		}
	}
	expect("sensor/kept 21.5 retained=true")
	// Nothing else was retained: a message published now is the next.
	if tk := device.Publish("sensor/live", 1, false, "1"); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("publish sensor/live: %v", tk.Error())
	}
	expect("sensor/live 1 retained=false")
}
