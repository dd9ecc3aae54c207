package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/chromedp"

	"github.com/eventbus-suite/eventbus/pkg/bus/bustest"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// networkConditions are the parameters of Network.emulateNetworkConditions,
// which cdproto no longer lists but Chromium still serves.
type networkConditions struct {
	Offline            bool    `json:"offline"`
	Latency            float64 `json:"latency"`
	DownloadThroughput float64 `json:"downloadThroughput"`
	UploadThroughput   float64 `json:"uploadThroughput"`
}

var emulateNetworkConditions = cdp.Command[networkConditions, cdp.Empty]{Method: "Network.emulateNetworkConditions"}

func setOffline(t *testing.T, ctx context.Context, offline bool) {
	t.Helper()
	if _, err := chromedp.Call(ctx, emulateNetworkConditions, networkConditions{Offline: offline, DownloadThroughput: -1, UploadThroughput: -1}); err != nil {
		t.Fatalf("emulate offline %v: %v", offline, err)
	}
}

// A browser on the demo page goes offline while 1,000 events flow, and
// comes back: the feed shows all 1,000, once each and in order, and says
// it recovered; for an exact channel, a pattern in one namespace and one
// across three. Over WebSocket, and over SSE.
func TestDemoPageRecoversAfterGoingOffline(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	for _, tt := range []struct {
		name, pattern, transport string
		channels                 []string
	}{
		{"exact channel", "bx:placed", "websocket", []string{"bx:placed"}},
		{"pattern", "by:*", "websocket", []string{"by:placed", "by:shipped"}},
		{"three namespaces", "*", "websocket", []string{"bz1:placed", "bz2:placed", "bz3:placed"}},
		{"over SSE", "bs:*", "sse", []string{"bs:placed", "bs:shipped"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := startEdge(t, srv, map[string]string{"EDGE_DEMO": "true"})
			rec := e.recorder(t)
			browser := openBrowser(t, fmt.Sprintf("%s/?user=7&pattern=%s&transport=%s", e.base, tt.pattern, tt.transport))
			ctx, cancel := context.WithTimeout(browser, 90*time.Second)
			defer cancel()
			if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#status[data-state="open"]`)),
				chromedp.WaitReady(chromedp.CSS(`#recovery[data-state="live"]`))); err != nil {
				t.Fatalf("wait for the page to subscribe: %v; %s", err, pageState(t, browser))
			}
			const n = 1000
			publish := func(from, to int) {
				for i := from; i < to; i++ {
					ch := tt.channels[i%len(tt.channels)]
					if _, err := rec.Publish(t.Context(), ch, event(t, ch, fmt.Sprint(i))); err != nil {
						t.Fatal(err)
					}
				}
			}
			publish(0, 300)
			setOffline(t, ctx, true)
			if err := chromedp.Do(ctx, chromedp.WaitReady(chromedp.CSS(`#status[data-state="reconnecting"]`))); err != nil {
				t.Fatalf("wait for the page to notice: %v; %s", err, pageState(t, browser))
			}
			publish(300, n) // while the page is offline
			setOffline(t, ctx, false)
			if err := chromedp.Do(ctx, chromedp.WaitReady(chromedp.CSS(`#recovery[data-state="recovered"]`)),
				chromedp.WaitReady(chromedp.CSS(`#status[data-state="resumed"]`))); err != nil {
				t.Fatalf("wait for the page to resume: %v; %s", err, pageState(t, browser))
			}
			if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.querySelectorAll("#feed li").length >= %d`, n))); err != nil {
				t.Fatalf("wait for %d events in the feed: %v; %s", n, err, pageState(t, browser))
			}
			subjects := do(t, ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#feed li")].reverse().map((li) => li.dataset.channel + "#" + li.dataset.subject)`))
			missed := do(t, ctx, chromedp.Evaluate[string](`document.querySelector("#recovery").dataset.missed`))
			// Once each, in order within each namespace (across namespaces,
			// events of one millisecond may come in either order).
			var want []string
			for i := range n {
				want = append(want, tt.channels[i%len(tt.channels)]+"#"+fmt.Sprint(i))
			}
			if !bustest.SameInEachNamespace(subjects, want) {
				t.Fatalf("the feed shows %d events %q…, want %d once each in order", len(subjects), strings.Join(subjects[:min(len(subjects), 10)], ","), n)
			}
			if missed == "" || missed == "0" {
				t.Fatalf("the page recovered %q missed events, want those published while it was offline", missed)
			}
		})
	}
}

// An EventSource, the browser's own SSE client, resumes by itself: its edge
// shuts down, events are published while none runs, and when another edge
// answers at the address, EventSource's reconnection sends the last id
// back and every missed event comes, once, in order.
func TestEventSourceResumesOnAnotherEdge(t *testing.T) {
	t.Parallel()
	srv := redistest.Shared(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	env := map[string]string{"EDGE_DEMO": "true", "EDGE_HTTP_ADDR": addr}
	first := startEdgeWithPrefix(t, srv, prefix, env)
	rec := first.recorder(t)
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := rec.Publish(t.Context(), "es:x", event(t, "es:x", fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	browser := openBrowser(t, first.base+"/?user=7&pattern=none:x")
	ctx, cancel := context.WithTimeout(browser, 90*time.Second)
	defer cancel()
	open := fmt.Sprintf(`(() => {
		window.got = []; window.replies = [];
		const es = new EventSource("/sse?channel=es:*&token=%s");
		es.onmessage = (m) => window.got.push(JSON.parse(m.data).event.subject);
		es.addEventListener("subscribed", (m) => window.replies.push(JSON.parse(m.data)));
		return true;
	})()`, mint(t, "u7", "es:*"))
	do(t, ctx, chromedp.Evaluate[bool](open))
	wait := func(what, cond string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](cond)); err != nil {
			t.Fatalf("wait for %s: %v; %s", what, err, pageState(t, browser))
		}
	}
	wait("the subscription", `window.replies.length === 1`)
	publish(0, 5)
	wait("the live events", `window.got.length === 5`)
	if err := first.svc.Stop(); err != nil {
		t.Fatal(err)
	}
	publish(5, 25) // while no edge runs
	startEdgeWithPrefix(t, srv, prefix, env)
	wait("the missed events", `window.got.length >= 25`)
	got := do(t, ctx, chromedp.Evaluate[[]string](`window.got`))
	var want []string
	for i := range 25 {
		want = append(want, fmt.Sprint(i))
	}
	if !equal(got, want...) {
		t.Fatalf("EventSource got %q, want %q", got, want)
	}
	reply := do(t, ctx, chromedp.Evaluate[map[string]any](`window.replies[window.replies.length - 1]`))
	if reply["recovered"] != true || reply["missed"] != float64(20) {
		t.Fatalf("the resumed subscription said %v, want recovered, 20 missed", reply)
	}
}

// The client keeps its positions in sessionStorage: a page reloaded while
// events flow resumes where the page before it stopped.
func TestDemoPageResumesAcrossAReload(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{"EDGE_DEMO": "true"})
	rec := e.recorder(t)
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := rec.Publish(t.Context(), "rl:x", event(t, "rl:x", fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	browser := openBrowser(t, e.base+"/?user=7&pattern=rl:*")
	ctx, cancel := context.WithTimeout(browser, 90*time.Second)
	defer cancel()
	wait := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("wait for %s: %v; %s", what, err, pageState(t, browser))
		}
	}
	wait("the subscription", chromedp.WaitReady(chromedp.CSS(`#recovery[data-state="live"]`)))
	publish(0, 5)
	wait("the events", chromedp.Poll[chromedp.Void](`document.querySelectorAll("#feed li").length === 5`))
	// Leave the page (it saves its positions as it goes), publish, and
	// come back: what was published meanwhile is missed, then recovered.
	wait("leaving the page", chromedp.Navigate("about:blank"))
	publish(5, 15)
	wait("the reloaded page", chromedp.Navigate(e.base+"/?user=7&pattern=rl:*"),
		chromedp.WaitReady(chromedp.CSS(`#recovery[data-state="recovered"]`)),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll("#feed li").length >= 10`))
	got := do(t, ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#feed li")].reverse().map((li) => li.dataset.subject)`))
	missed := do(t, ctx, chromedp.Evaluate[string](`document.querySelector("#recovery").dataset.missed`))
	if !equal(got, "5", "6", "7", "8", "9", "10", "11", "12", "13", "14") || missed != "10" {
		t.Fatalf("after the reload the feed shows %q (%s missed), want 5 to 14, 10 missed", got, missed)
	}
}
