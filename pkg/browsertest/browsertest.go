// Package browsertest drives a real headless Chromium for the tests of
// the pages the services serve.
package browsertest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// Chromium finds Debian's chromium, which .ci/run installs. Without it the
// test is skipped, unless EVENTBUS_REQUIRE_BROWSER=1 (as in CI) makes that a
// failure.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	servicetest.Needs(t, "EVENTBUS_REQUIRE_BROWSER", "no chromium on PATH (apt-get install chromium)")
	return ""
}

// Open starts a headless Chromium of the test's own on url.
func Open(t testing.TB, url string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(Chromium(t)),
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.WindowSize(1100, 800),
	)
	alloc, cancel := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancel)
	browser, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	// The first action starts the browser and must not carry a timeout;
	// the later ones get one, so a missing element fails rather than hangs.
	if err := chromedp.Do(browser, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	return browser
}

// Do runs one browser action and returns its value, failing the test on
// error.
func Do[T any](t testing.TB, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// PageState describes the page for a failure message by the text of the
// element status selects, and keeps a screenshot of it as failure.png
// among the test's artifacts.
func PageState(t testing.TB, browser context.Context, status string) string {
	ctx, cancel := context.WithTimeout(browser, 10*time.Second)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(status)))
	if err != nil {
		return "page unreadable: " + err.Error()
	}
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		_ = os.WriteFile(filepath.Join(t.ArtifactDir(), "failure.png"), png, 0o644)
	}
	return "page status: " + text
}
