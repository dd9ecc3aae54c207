package redistest_test

import (
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// The shared cluster has 3 masters, each with a replica, every slot served,
// and takes writes through a cluster client.
func TestSharedCluster(t *testing.T) {
	c := redistest.SharedCluster(t)
	if got := c.Masters(t); len(got) != 3 || len(c.Addrs) != 6 {
		t.Fatalf("masters %q of nodes %q, want 3 of 6", got, c.Addrs)
	}
	cl := c.Client(t)
	for _, key := range []string{"{a}x", "{b}x", "{c}x"} {
		if err := cl.Set(t.Context(), key, "v", 0).Err(); err != nil {
			t.Fatalf("SET %s = %v", key, err)
		}
	}
}

// A master killed is replaced by its replica, and the cluster is healthy
// again with every slot served.
func TestClusterFailover(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	before := c.Masters(t)
	c.Kill(t, before[0])
	c.WaitHealthy(t)
	after := c.Masters(t)
	if len(after) != 3 || after[0] == before[0] && after[1] == before[1] && after[2] == before[2] {
		t.Fatalf("masters after killing %s = %q, want a replica promoted", before[0], after)
	}
	c.Restart(t, before[0])
	c.WaitHealthy(t)
}
