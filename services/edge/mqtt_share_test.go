package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// shareMember is a member of a shared subscription: paho's 3.1.1 client
// over TCP, counting the subjects it receives; kill cuts its socket, as a
// device that loses power does.
type shareMember struct {
	mu   sync.Mutex
	got  map[string]int
	conn net.Conn
}

func (m *shareMember) count() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int, len(m.got))
	for k, v := range m.got {
		out[k] = v
	}
	return out
}

func joinShare(t *testing.T, e *edge, id, filter string) *shareMember {
	t.Helper()
	m := &shareMember{got: map[string]int{}}
	opts := paho3.NewClientOptions().AddBroker("tcp://" + e.mqtt).SetClientID(id).SetUsername("device").
		SetPassword(mint(t, id, "jobs:*")).SetAutoReconnect(false).SetOrderMatters(false).
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho3.ClientOptions) (net.Conn, error) {
			c, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
			m.mu.Lock()
			m.conn = c
			m.mu.Unlock()
			return c, err
		})
	c := paho3.NewClient(opts)
	if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("%s: connect: %v", id, tk.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	tk := c.Subscribe(filter, 1, func(_ paho3.Client, msg paho3.Message) {
		m.mu.Lock()
		m.got[subjectOf(t, msg.Payload())]++
		m.mu.Unlock()
	})
	if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("%s: subscribe %s: %v", id, filter, tk.Error())
	}
	for _, code := range tk.(*paho3.SubscribeToken).Result() { // paho keys it by the filter without $share/<group>/
		if code != 1 {
			t.Fatalf("%s: SUBACK %d, want QoS 1 granted", id, code)
		}
	}
	return m
}

// A shared subscription is a consumer group: 3 members on two edges share
// 3,000 events, each delivered to one member once; then a member whose
// socket is cut mid-way loses nothing: what it took and did not
// acknowledge goes to another member within the visibility timeout.
func TestMQTTSharedSubscription(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	redistest.RequireReal(t, srv)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	env := map[string]string{"EDGE_MQTT_SHARE_VISIBILITY": "1s"}
	e1 := startEdgeWithPrefix(t, srv, prefix, env)
	e2 := startEdgeWithPrefix(t, srv, prefix, env)
	const filter = "$share/workers/jobs/+"
	members := []*shareMember{joinShare(t, e1, "w1", filter), joinShare(t, e1, "w2", filter), joinShare(t, e2, "w3", filter)}
	other := joinShare(t, e2, "other", "$share/others/jobs/+") // another group gets every event too
	rec := e1.recorder(t)
	publish := func(from, to int) error {
		for i := from; i < to; i++ {
			if _, err := rec.Publish(context.Background(), "jobs:run", event(t, "jobs:run", fmt.Sprint(i))); err != nil {
				return err
			}
		}
		return nil
	}
	total := func(ms ...*shareMember) map[string]int {
		all := map[string]int{}
		for _, m := range ms {
			for k, v := range m.count() {
				all[k] += v
			}
		}
		return all
	}

	if err := publish(0, 3000); err != nil {
		t.Fatal(err)
	}
	servicetest.WaitFor(t, "3,000 events shared by the members", func() bool { return len(total(members...)) == 3000 })
	servicetest.WaitFor(t, "3,000 events at the other group", func() bool { return len(other.count()) == 3000 })
	for k, n := range total(members...) {
		if n != 1 {
			t.Fatalf("event %s delivered %d times across the group, want once", k, n)
		}
	}
	for i, m := range members {
		if len(m.count()) == 0 {
			t.Errorf("member w%d got nothing: the events go to every member", i+1)
		}
	}

	// w3's socket is cut while events flow.
	victim := members[2]
	before := len(victim.count())
	published := make(chan error, 1)
	go func() { published <- publish(3000, 6000) }()
	servicetest.WaitFor(t, "w3 at work on the second batch", func() bool { return len(victim.count()) > before+50 })
	victim.mu.Lock()
	_ = victim.conn.Close()
	victim.mu.Unlock()
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	servicetest.WaitFor(t, "6,000 events, none lost", func() bool { return len(total(members...)) == 6000 })
	survivors := total(members[0], members[1])
	for k, n := range total(members...) {
		if n > 1 && survivors[k] > 1 {
			t.Fatalf("event %s delivered %d times to the members that kept working, want once", k, survivors[k])
		}
	}
}
