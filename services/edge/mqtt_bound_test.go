package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// dialPreConnect opens an MQTT WebSocket from address from (through the
// trusted proxy the test is) and sends nothing: a socket before CONNECT.
func (e *edge) dialPreConnect(t *testing.T, from string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, strings.Replace(e.base, "http", "ws", 1)+"/mqtt", &websocket.DialOptions{
		Subprotocols: []string{"mqtt"}, HTTPHeader: http.Header{"X-Forwarded-For": {from}}})
	if err != nil {
		t.Fatalf("dial /mqtt from %s: %v", from, err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return conn
}

// closedWith reads until the edge closes conn and returns the close code.
func closedWith(t *testing.T, conn *websocket.Conn) websocket.StatusCode {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err := conn.Read(ctx); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

// rssMB is VmRSS of /proc/self/status, in MB: the test process's, which
// runs the edge (servicetest.Start calls run) and its clients.
func rssMB(t *testing.T) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb float64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// heapMB is the edge's heap in use, in MB. The edge runs in the test's
// process (servicetest.Start calls run), so this is runtime.MemStats of
// the test binary, edge and test clients together, after a collection.
func heapMB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapInuse) / (1 << 20)
}

// MQTT sockets that never send CONNECT count against their address, as
// tokenless WebSockets do: at most EDGE_MAX_USER_CONNECTIONS per address
// and EDGE_MAX_ADDRESS_CONNECTIONS over all addresses; one more is closed
// with 4029 and holds nothing. Memory is logged before and after.
func TestMQTTSocketsBeforeConnectAreBounded(t *testing.T) {
	const perAddr, total = 50, 400
	e := startEdge(t, redistest.Shared(t), map[string]string{
		"EDGE_TRUSTED_PROXIES": "127.0.0.1", "EDGE_AUTH_TIMEOUT": "10m",
		"EDGE_MAX_USER_CONNECTIONS": fmt.Sprint(perAddr), "EDGE_MAX_ADDRESS_CONNECTIONS": fmt.Sprint(total),
	})
	before, rssBefore := heapMB(), rssMB(t)
	open := 0
	waitOpen := func() {
		t.Helper()
		servicetest.WaitFor(t, fmt.Sprintf("%d connections in the hub", open), func() bool {
			return e.metric(t, "eventbus_edge_connections") == float64(open)
		})
	}
	for range perAddr {
		e.dialPreConnect(t, "192.0.2.1")
		open++
	}
	waitOpen()
	if code := closedWith(t, e.dialPreConnect(t, "192.0.2.1")); code != 4029 {
		t.Fatalf("socket %d before CONNECT from one address closed with %d, want 4029 too many connections", perAddr+1, code)
	}
	// Other addresses, up to the bound over all of them.
	for i := 0; open < total; i++ {
		e.dialPreConnect(t, fmt.Sprintf("198.51.100.%d", 1+i/perAddr))
		open++
	}
	waitOpen()
	refused := 0
	for i := range 100 {
		if code := closedWith(t, e.dialPreConnect(t, fmt.Sprintf("203.0.113.%d", i))); code == 4029 {
			refused++
		}
	}
	if refused != 100 {
		t.Errorf("%d of 100 sockets from fresh addresses past %d in all closed with 4029, want every one", refused, total)
	}
	if got := e.metric(t, "eventbus_edge_connections"); got != total {
		t.Errorf("eventbus_edge_connections = %v after the refusals, want %d", got, total)
	}
	after, rssAfter := heapMB(), rssMB(t)
	t.Logf("edge in-process, so the test process's memory (edge and clients): heap in use (runtime.MemStats) %.1f MB before, %.1f MB with %d sockets before CONNECT held and 101 refused (%.1f KB a held socket, both sides); VmRSS (/proc/self/status) %.1f MB before, %.1f MB after",
		before, after, total, (after-before)*1024/total, rssBefore, rssAfter)
}
