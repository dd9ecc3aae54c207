package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/chromedp"

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
			if err := chromedp.Do(ctx, chromedp.WaitReady(chromedp.CSS(`#status:not([data-state="open"])`))); err != nil {
				t.Fatalf("wait for the page to notice: %v; %s", err, pageState(t, browser))
			}
			publish(300, n) // while the page is offline
			setOffline(t, ctx, false)
			if err := chromedp.Do(ctx, chromedp.WaitReady(chromedp.CSS(`#recovery[data-state="recovered"]`))); err != nil {
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
			if !sameInEachNamespace(subjects, want) {
				t.Fatalf("the feed shows %d events %q…, want %d once each in order", len(subjects), strings.Join(subjects[:min(len(subjects), 10)], ","), n)
			}
			if missed == "" || missed == "0" {
				t.Fatalf("the page recovered %q missed events, want those published while it was offline", missed)
			}
		})
	}
}
