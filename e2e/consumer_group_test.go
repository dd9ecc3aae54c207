package e2e

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

// A consumer group outlives its consumer, and Redis trims no entry a group
// has yet to read: the Python example's --stream group would pin the
// stream. With --remove-group, a group the run created is destroyed when
// it stops on SIGTERM; a group that existed before is left in place.
func TestPythonConsumerRemovesItsGroup(t *testing.T) {
	examples, err := filepath.Abs(filepath.Join("..", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	srv := redistest.Shared(t)
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	key := prefix + ":stream:{rg}"
	rdb := srv.Client(t)
	groups := func() []string {
		t.Helper()
		infos, err := rdb.XInfoGroups(t.Context(), key).Result()
		if err != nil {
			t.Fatalf("XINFO GROUPS %s: %v", key, err)
		}
		var names []string
		for _, g := range infos {
			names = append(names, g.Name)
		}
		return names
	}
	consume := func(group string) *process {
		t.Helper()
		cmd := pythonConsumer(t, examples)
		cmd.Args = append(cmd.Args, "--stream", "rg", "--group", group, "--consumer", "c1", "--remove-group")
		p, _ := startConsumer(t, srv, prefix, cmd, "reading "+key+" as "+group+"/c1\n")
		return p
	}

	p := consume("mine")
	if got := groups(); !slices.Contains(got, "mine") {
		t.Fatalf("groups of %s while the consumer runs = %v, want mine", key, got)
	}
	p.stop(t)
	if got := groups(); slices.Contains(got, "mine") {
		t.Errorf("groups of %s after SIGTERM = %v, want mine removed:\n%s", key, got, p.out)
	}

	if err := rdb.XGroupCreateMkStream(t.Context(), key, "theirs", "$").Err(); err != nil {
		t.Fatal(err)
	}
	p = consume("theirs")
	p.stop(t)
	if got := groups(); !slices.Contains(got, "theirs") {
		t.Errorf("groups of %s after SIGTERM = %v, want theirs, made before the consumer, left in place:\n%s", key, got, p.out)
	}
}
