package redisbus

import (
	"bytes"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

func TestNewClientReadsSingleAndClusterURLs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, url string
		addrs     []string // a cluster's; nil for one server
		user      string
		password  string
		tls       bool
	}{
		{name: "one server", url: "redis://localhost:6379/0"},
		{name: "cluster", url: "redis+cluster://a:7000,b:7001,c:7002", addrs: []string{"a:7000", "b:7001", "c:7002"}},
		{name: "cluster with a slash", url: "redis+cluster://a:7000/", addrs: []string{"a:7000"}},
		{name: "cluster with credentials and options", url: "redis+cluster://u:p%40ss@a:7000,b:7001?dial_timeout=2s",
			addrs: []string{"a:7000", "b:7001"}, user: "u", password: "p@ss"},
		{name: "cluster over TLS", url: "rediss+cluster://a:7000", addrs: []string{"a:7000"}, tls: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := NewClient(tc.url)
			if err != nil {
				t.Fatalf("NewClient(%q) = %v", tc.url, err)
			}
			defer c.Close()
			cc, cluster := c.(*redis.ClusterClient)
			if cluster != (tc.addrs != nil) {
				t.Fatalf("NewClient(%q) = %T, want a cluster client %v", tc.url, c, tc.addrs != nil)
			}
			if !cluster {
				return
			}
			o := cc.Options()
			if !slices.Equal(o.Addrs, tc.addrs) || o.Username != tc.user || o.Password != tc.password || (o.TLSConfig != nil) != tc.tls || !o.ContextTimeoutEnabled {
				t.Fatalf("NewClient(%q) options = addrs %q user %q password %q tls %v, want %q %q %q %v", tc.url,
					o.Addrs, o.Username, o.Password, o.TLSConfig != nil, tc.addrs, tc.user, tc.password, tc.tls)
			}
		})
	}
}

func TestNewClientRefusesBadURLs(t *testing.T) {
	t.Parallel()
	for _, url := range []string{
		"", "localhost:6379", "http://localhost:6379", "redis+cluster://", "redis+cluster://a", "redis+cluster://a:1,,b:2",
		"redis+cluster://a:1,b", "redis+cluster://:7000", "redis+cluster://a:1?dial_timeout=soon", "redis+sentinel://a:1",
	} {
		if err := CheckURL(url); err == nil {
			t.Errorf("CheckURL(%q) = nil, want an error", url)
		}
	}
}

func TestRedactedURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"redis+cluster://u:secret@a:1,b:2": "redis+cluster://u:xxxxx@a:1,b:2",
		"redis://:secret@localhost:6379/0": "redis://:xxxxx@localhost:6379/0",
		"redis://localhost:6379/0":         "redis://localhost:6379/0",
	} {
		if got := redactedURL(in); got != want {
			t.Errorf("redactedURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzNewClient(f *testing.F) {
	for _, s := range []string{"redis://localhost:6379/0", "redis+cluster://a:7000,b:7001", "redis+cluster://u:p@a:1?addr=b:2", "rediss+cluster://a:1/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, url string) {
		c, err := NewClient(url)
		if err != nil {
			return
		}
		defer c.Close()
		if cc, ok := c.(*redis.ClusterClient); ok {
			for _, a := range cc.Options().Addrs {
				if _, _, err := net.SplitHostPort(a); err != nil {
					t.Fatalf("NewClient(%q) took node %q, not host:port", url, a)
				}
			}
		}
	})
}

// Dial reaches every node of a cluster from a URL that names one.
func TestDialCluster(t *testing.T) {
	t.Parallel()
	c := redistest.SharedCluster(t)
	rdb, err := Dial(t.Context(), "redis+cluster://"+c.Addrs[0], 5*time.Second, nil)
	if err != nil {
		t.Fatalf("Dial = %v", err)
	}
	defer rdb.Close()
	for _, key := range []string{"{a}", "{b}", "{c}"} {
		if err := rdb.Set(t.Context(), key, "v", 0).Err(); err != nil {
			t.Fatalf("SET %s through the cluster = %v", key, err)
		}
	}
}

// Open sizes its connections' buffers by Options.ConnBuffer, on the
// client it returns and on the bus's publishing client, and a bus on
// buffers that small still moves messages, and pipelines, many times
// their size.
func TestOpenSizesConnectionBuffers(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	b, rdb, err := Open(t.Context(), srv.URL, 5*time.Second, Options{Prefix: redistest.Prefix(t), HistoryMaxLen: 1000, ConnBuffer: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkBuffers(t, b, rdb, [4]int{1024, 1024, 4096, 4096})
	sub, err := b.Subscribe(t.Context(), "big:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	msgs := make([]bus.Publication, 16)
	for i := range msgs {
		msgs[i] = bus.Publication{Channel: "big:" + strconv.Itoa(i), Payload: bytes.Repeat([]byte{byte('a' + i)}, 8<<10)}
	}
	_, errs, err := b.PublishBatch(t.Context(), msgs)
	if err != nil || slices.ContainsFunc(errs, func(err error) bool { return err != nil }) {
		t.Fatalf("PublishBatch of %d × 8 KiB = %v, %v", len(msgs), errs, err)
	}
	for _, want := range msgs {
		select {
		case m := <-sub.Messages():
			if m.Channel != want.Channel || !bytes.Equal(m.Payload, want.Payload) {
				t.Fatalf("received %s with %d bytes, want %s with %d", m.Channel, len(m.Payload), want.Channel, len(want.Payload))
			}
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
}

// Without ConnBuffer, go-redis's own sizes stand.
func TestOpenKeepsGoRedisBuffers(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	b, rdb, err := Open(t.Context(), srv.URL, 5*time.Second, Options{Prefix: redistest.Prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if o := rdb.(*redis.Client).Options(); o.ReadBufferSize != 32<<10 || o.WriteBufferSize != 32<<10 {
		t.Errorf("buffers = read %d, write %d; want go-redis's 32 KiB", o.ReadBufferSize, o.WriteBufferSize)
	}
}

// On a cluster, ConnBuffer sizes the buffers of every node's pools, on the
// client Open returns and on the bus's publishing client.
func TestOpenSizesClusterBuffers(t *testing.T) {
	t.Parallel()
	c := redistest.SharedCluster(t)
	b, rdb, err := Open(t.Context(), "redis+cluster://"+c.Addrs[0], 5*time.Second, Options{Prefix: redistest.Prefix(t), ConnBuffer: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkBuffers(t, b, rdb, [4]int{1024, 1024, 4096, 4096})
	sub, err := b.Subscribe(t.Context(), "big:*")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	sent := time.Now()
	if _, err := b.Publish(t.Context(), "big:x", bytes.Repeat([]byte{'x'}, 8<<10)); err != nil {
		t.Fatalf("Publish of 8 KiB through 1 KiB buffers = %v", err)
	}
	// The sharded subscription says when it read each message, as one
	// server's does (the edge's Pacer counts from it).
	select {
	case m := <-sub.Messages():
		if len(m.Payload) != 8<<10 || m.Received.Before(sent) || m.Received.After(time.Now()) {
			t.Fatalf("received %d bytes, read at %v; want 8 KiB, read after %v", len(m.Payload), m.Received, sent)
		}
	case <-t.Context().Done():
		t.Fatal(t.Context().Err())
	}
}

// checkBuffers checks the buffers, read and write, then pipelines' read
// and write, of rdb and of b's publishing client, on one server or a
// cluster.
func checkBuffers(t *testing.T, b *Bus, rdb redis.UniversalClient, want [4]int) {
	t.Helper()
	for name, c := range map[string]redis.UniversalClient{"client": rdb, "publishing client": b.pub} {
		var got [4]int
		switch c := c.(type) {
		case *redis.Client:
			o := c.Options()
			got = [4]int{o.ReadBufferSize, o.WriteBufferSize, o.PipelineReadBufferSize, o.PipelineWriteBufferSize}
		case *redis.ClusterClient:
			o := c.Options()
			got = [4]int{o.ReadBufferSize, o.WriteBufferSize, o.PipelineReadBufferSize, o.PipelineWriteBufferSize}
		}
		if got != want {
			t.Errorf("%s's buffers (read, write, pipeline read, pipeline write) = %v, want %v", name, got, want)
		}
	}
}
