package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// needJSClient stops a test whose driver script in clients/js/integration
// imports what a fresh clone lacks until make js: the client's build
// (dist/eventbus.js) or its npm dependencies (node_modules/mqtt). paths
// are relative to clients/js. The test is skipped with the reason, or
// fails under EVENTBUS_REQUIRE_NODE=1, as CI sets it.
func needJSClient(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join("..", "clients", "js", p)); err != nil {
			servicetest.Needs(t, "EVENTBUS_REQUIRE_NODE", fmt.Sprintf("clients/js/%s is missing: run make js (%v)", p, err))
		}
	}
}
