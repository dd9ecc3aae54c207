package redistest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterNodeTimeout is how long a cluster node may be unreachable before
// the others count it as failed and its replica takes over: about twice
// this passes between a master's death and its replica's promotion.
const clusterNodeTimeout = 2 * time.Second

// Cluster is a Redis Cluster for tests: redis-server nodes on 127.0.0.1,
// each on a free port below 55535 (its cluster bus port is 10000 above),
// joined by redis-cli --cluster create with the slots split evenly among
// the masters.
type Cluster struct {
	// URL is redis+cluster://host:port,host:port,…, every node: the form
	// REDIS_URL takes for a cluster.
	URL string
	// Addrs of every node, the first ones created as masters.
	Addrs []string

	mu    sync.Mutex
	nodes map[string]*Server
}

var (
	sharedCluster     *Cluster
	sharedClusterErr  error
	sharedClusterOnce sync.Once
)

// SharedCluster returns the cluster shared by every test of this binary,
// 3 masters and 3 replicas, started on first use; only Main stops it. Tests
// sharing it isolate themselves with Prefix, and must not stop its nodes:
// StartCluster gives a test a cluster of its own for that. It needs
// redis-server and redis-cli: without them it skips the test, counting the
// skip, or fails under EVENTBUS_REQUIRE_REDIS=1.
func SharedCluster(tb testing.TB) *Cluster {
	tb.Helper()
	requireClusterTools(tb)
	sharedClusterOnce.Do(func() { sharedCluster, sharedClusterErr = startCluster(3, 1) })
	if sharedClusterErr != nil {
		tb.Fatalf("redistest: %v", sharedClusterErr)
	}
	return sharedCluster
}

// StartCluster starts a cluster of the test's own with masters masters,
// each with replicas replicas, stopped when the test ends.
func StartCluster(tb testing.TB, masters, replicas int) *Cluster {
	tb.Helper()
	requireClusterTools(tb)
	c, err := startCluster(masters, replicas)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(c.stop)
	return c
}

func requireClusterTools(tb testing.TB) {
	tb.Helper()
	for _, tool := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("EVENTBUS_REQUIRE_REDIS") == "1" {
				tb.Fatalf("EVENTBUS_REQUIRE_REDIS=1 but %s is not on PATH", tool)
			}
			skipped.Add(1)
			tb.Skip("needs " + tool + " for a Redis Cluster (apt-get install redis-server)")
		}
	}
}

func startCluster(masters, replicas int) (*Cluster, error) {
	c := &Cluster{nodes: make(map[string]*Server)}
	for range masters * (1 + replicas) {
		s, err := startNode()
		if err != nil {
			c.stop()
			return nil, err
		}
		c.nodes[s.Addr] = s
		c.Addrs = append(c.Addrs, s.Addr)
	}
	c.URL = "redis+cluster://" + strings.Join(c.Addrs, ",")
	if err := c.create(masters, replicas); err != nil {
		c.stop()
		return nil, err
	}
	if err := c.waitHealthy(30 * time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// create joins the nodes: with redis-cli --cluster create, which wants
// 3 masters at least; fewer masters, without replicas, are given the
// slots by hand.
func (c *Cluster) create(masters, replicas int) error {
	if masters >= 3 {
		args := append([]string{"--cluster", "create"}, c.Addrs...)
		args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
		if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
		}
		return nil
	}
	if replicas > 0 {
		return errors.New("redistest: a cluster of fewer than 3 masters has no replicas here")
	}
	ctx := context.Background()
	for i, addr := range c.Addrs {
		cl := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		err := cl.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", i*slots/masters, (i+1)*slots/masters-1).Err()
		if err == nil && i > 0 {
			host, port, _ := net.SplitHostPort(c.Addrs[0])
			err = cl.ClusterMeet(ctx, host, port).Err()
		}
		cl.Close()
		if err != nil {
			return fmt.Errorf("give node %s its slots: %w", addr, err)
		}
	}
	return nil
}

// slots is the number of hash slots of a Redis Cluster.
const slots = 16384

// startNode starts one cluster node on a port whose bus port is free too.
func startNode() (*Server, error) {
	dir, err := os.MkdirTemp("", "redistest-cluster-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 20 {
		// The port and its bus port, 10000 above, both below the
		// kernel's ephemeral range (32768 up on Linux), where
		// servicetest.FreeAddr and outgoing connections take theirs: a bus
		// port in that range once took the port an api was about to
		// bind.
		port := 10000 + rand.IntN(6000)
		if !free(port) || !free(port+10000) {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		s := &Server{Addr: addr, URL: "redis://" + addr + "/0", Real: true, port: strconv.Itoa(port), cluster: dir}
		if lastErr = s.spawn(); lastErr == nil {
			return s, nil
		}
	}
	os.RemoveAll(dir)
	return nil, fmt.Errorf("start a cluster node: %w", cmp.Or(lastErr, errors.New("no free port pair")))
}

func free(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// Client returns a cluster client of c, closed when the test ends.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs})
	tb.Cleanup(func() { _ = cl.Close() })
	return cl
}

// Masters returns the addresses of the nodes that serve slots now, sorted.
func (c *Cluster) Masters(tb testing.TB) []string {
	tb.Helper()
	m, err := c.masters()
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return m
}

func (c *Cluster) masters() ([]string, error) {
	var lastErr error
	for _, addr := range c.live() {
		cl := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		slots, err := cl.ClusterSlots(context.Background()).Result()
		cl.Close()
		if err != nil {
			lastErr = err
			continue
		}
		var out []string
		for _, s := range slots {
			if len(s.Nodes) > 0 && !slices.Contains(out, s.Nodes[0].Addr) {
				out = append(out, s.Nodes[0].Addr)
			}
		}
		slices.Sort(out)
		return out, nil
	}
	return nil, fmt.Errorf("read the cluster's masters: %w", cmp.Or(lastErr, errors.New("no node runs")))
}

// live returns the addresses of the nodes running now.
func (c *Cluster) live() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, addr := range c.Addrs {
		if c.nodes[addr].cmd != nil {
			out = append(out, addr)
		}
	}
	return out
}

// Kill stops the node at addr as a crash would (SIGKILL).
func (c *Cluster) Kill(tb testing.TB, addr string) {
	tb.Helper()
	c.mu.Lock()
	s := c.nodes[addr]
	c.mu.Unlock()
	if s == nil || s.cmd == nil {
		tb.Fatalf("redistest: no running node at %s", addr)
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	c.mu.Lock()
	s.cmd = nil
	c.mu.Unlock()
}

// Restart starts a node stopped by Kill again, on its address, with its
// cluster configuration: it rejoins the cluster (a master that lost its
// slots meanwhile comes back as a replica).
func (c *Cluster) Restart(tb testing.TB, addr string) {
	tb.Helper()
	c.mu.Lock()
	s := c.nodes[addr]
	c.mu.Unlock()
	if err := s.spawn(); err != nil {
		tb.Fatalf("redistest: restart %s: %v", addr, err)
	}
}

// nodeID returns the cluster node id of the node at addr.
func nodeID(ctx context.Context, addr string) (string, error) {
	cl := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer cl.Close()
	return cl.Do(ctx, "CLUSTER", "MYID").Text()
}

// MasterOf returns the address of the master serving slot now.
func (c *Cluster) MasterOf(tb testing.TB, slot int) string {
	tb.Helper()
	for _, addr := range c.live() {
		cl := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		slots, err := cl.ClusterSlots(context.Background()).Result()
		cl.Close()
		if err != nil {
			continue
		}
		for _, s := range slots {
			if int(s.Start) <= slot && slot <= int(s.End) && len(s.Nodes) > 0 {
				return s.Nodes[0].Addr
			}
		}
	}
	tb.Fatalf("redistest: no master serves slot %d", slot)
	return ""
}

// MigrateSlot moves slot, with its keys, from its master to the master at
// to, as redis-cli --cluster reshard does: the target imports it, the
// source migrates it, the keys go over with MIGRATE, and every master is
// told the slot's new owner. Sharded subscribers of the slot are then
// unsubscribed by the source, and must find the slot's new master.
func (c *Cluster) MigrateSlot(tb testing.TB, slot int, to string) {
	tb.Helper()
	ctx := context.Background()
	from := c.MasterOf(tb, slot)
	if from == to {
		tb.Fatalf("redistest: slot %d is on %s already", slot, to)
	}
	fromID, err := nodeID(ctx, from)
	if err != nil {
		tb.Fatal(err)
	}
	toID, err := nodeID(ctx, to)
	if err != nil {
		tb.Fatal(err)
	}
	src := redis.NewClient(&redis.Options{Addr: from, MaxRetries: -1})
	defer src.Close()
	dst := redis.NewClient(&redis.Options{Addr: to, MaxRetries: -1})
	defer dst.Close()
	do := func(cl *redis.Client, args ...any) {
		tb.Helper()
		if err := cl.Do(ctx, args...).Err(); err != nil {
			tb.Fatalf("redistest: %v: %v", args, err)
		}
	}
	do(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID)
	do(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID)
	host, port, _ := net.SplitHostPort(to)
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		if err != nil {
			tb.Fatalf("redistest: keys of slot %d: %v", slot, err)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		do(src, args...)
	}
	do(dst, "CLUSTER", "SETSLOT", slot, "NODE", toID)
	do(src, "CLUSTER", "SETSLOT", slot, "NODE", toID)
	for _, addr := range c.Masters(tb) {
		if addr != from && addr != to {
			cl := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
			do(cl, "CLUSTER", "SETSLOT", slot, "NODE", toID)
			cl.Close()
		}
	}
	c.WaitHealthy(tb)
}

// WaitHealthy waits until every running node says the cluster is ok,
// with every slot served, and every replica's link to its master is up:
// after a failover or a restart, the point where the cluster is whole
// again. It fails the test after 30 s.
func (c *Cluster) WaitHealthy(tb testing.TB) {
	tb.Helper()
	if err := c.waitHealthy(30 * time.Second); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
}

func (c *Cluster) waitHealthy(within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := c.healthy()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the cluster is not healthy after %v: %w", within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) healthy() error {
	ctx := context.Background()
	for _, addr := range c.live() {
		cl := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		info, err := cl.ClusterInfo(ctx).Result()
		var repl string
		if err == nil {
			repl, err = cl.Info(ctx, "replication").Result()
		}
		cl.Close()
		switch {
		case err != nil:
			return fmt.Errorf("node %s: %w", addr, err)
		case !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384"):
			return fmt.Errorf("node %s: cluster not ok", addr)
		case strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up"):
			return fmt.Errorf("node %s: replica not linked to its master", addr)
		}
	}
	return nil
}

func (c *Cluster) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.nodes {
		s.stop()
		os.RemoveAll(s.cluster)
	}
}
