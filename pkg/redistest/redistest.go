// Package redistest runs Redis for tests, in the spirit of net/http/httptest.
//
// Tests get a real redis-server from PATH, started on a free port of
// 127.0.0.1, or the server at REDIS_URL when that is set. Where no
// redis-server is installed they fall back to an embedded Redis-compatible
// server (miniredis), and tests that need the real thing call RequireReal,
// which skips them and counts the skip (Main reports the count, and appends
// it to the file EVENTBUS_SKIP_REPORT names); with EVENTBUS_REQUIRE_REDIS=1
// (as in CI) a missing redis-server fails instead.
//
// Redis pub/sub ignores database numbers, so tests that share a server
// isolate themselves with Prefix.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Server is a Redis server for tests.
type Server struct {
	// Addr is host:port.
	Addr string
	// URL is redis://Addr/0, the form REDIS_URL takes.
	URL string
	// Real is true for a redis-server process or REDIS_URL, false for the
	// embedded fallback.
	Real bool

	port    string
	dir     string // with the append-only file there; empty keeps nothing
	cluster string // a cluster node's directory, for its nodes.conf; empty for a lone server
	cmd     *exec.Cmd
	mini    *miniredis.Miniredis
	logf    string
	exited  chan error
}

var (
	shared     *Server
	sharedErr  error
	sharedOnce sync.Once
	skipped    atomic.Int64
)

// Main runs the tests of a package, then stops the shared server and says
// how many tests were skipped for want of a real redis-server. Call it from
// TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	if sharedCluster != nil {
		sharedCluster.stop()
	}
	if n := skipped.Load(); n > 0 {
		msg := fmt.Sprintf("redistest: %s: %d test(s) skipped: they need a real redis-server; install it (apt-get install redis-server) or set REDIS_URL\n",
			filepath.Base(os.Args[0]), n)
		fmt.Fprint(os.Stderr, msg)
		// go test hides the output of a package that passes; make test
		// collects these lines from the file it names and prints them.
		if report := os.Getenv("EVENTBUS_SKIP_REPORT"); report != "" {
			if f, err := os.OpenFile(report, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				_, _ = f.WriteString(msg)
				_ = f.Close()
			}
		}
	}
	os.Exit(code)
}

// Shared returns the server shared by every test of this binary: REDIS_URL
// when set, else one started on first use. Only Main stops it.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	sharedOnce.Do(func() {
		if u := os.Getenv("REDIS_URL"); u != "" {
			opt, err := redis.ParseURL(u)
			if err != nil {
				sharedErr = fmt.Errorf("parse REDIS_URL: %w", err)
				return
			}
			shared = &Server{Addr: opt.Addr, URL: u, Real: true}
			return
		}
		shared, sharedErr = start()
	})
	if sharedErr != nil {
		tb.Fatalf("redistest: %v", sharedErr)
	}
	return shared
}

// Start starts a server of the test's own, stopped when the test ends. Use
// it where a test stops or restarts Redis.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := start()
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.stop)
	return s
}

// RequireReal skips the test, counting the skip, unless s is a real Redis.
// Use it for behaviour the embedded server does not share with Redis.
func RequireReal(tb testing.TB, s *Server) {
	tb.Helper()
	if !s.Real {
		skipped.Add(1)
		tb.Skip("needs a real redis-server: the embedded fallback behaves differently here")
	}
}

// Client returns a client of s, closed when the test ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Prefix returns a channel prefix ("name-1a2b3c:") unique to this test, so
// tests sharing a server never see each other's messages.
func Prefix(tb testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(tb.Name()) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
		if b.Len() >= 40 {
			break
		}
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	return strings.Trim(b.String(), "-") + "-" + hex.EncodeToString(rnd[:]) + ":"
}

// Stop stops a real server started by Start, as a crash or an operator
// would; Restart brings it back on the same address.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	RequireReal(tb, s)
	if s.cmd == nil {
		tb.Fatal("redistest: Stop needs a server started by Start")
	}
	s.stop()
}

// Restart starts a server stopped by Stop again, on the same address, and
// waits until it answers.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.spawn(); err != nil {
		tb.Fatalf("redistest: restart: %v", err)
	}
}

// Pause freezes a real server started by Start (SIGSTOP), as a hung or
// unreachable Redis looks to its clients: connections open and writes are
// taken by the kernel, but nothing answers. Resume thaws it; the test's
// cleanup does too.
func (s *Server) Pause(tb testing.TB) {
	tb.Helper()
	RequireReal(tb, s)
	if s.cmd == nil {
		tb.Fatal("redistest: Pause needs a running server started by Start")
	}
	cmd := s.cmd
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		tb.Fatalf("redistest: pause: %v", err)
	}
	tb.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGCONT) })
}

// Resume thaws a server frozen by Pause.
func (s *Server) Resume(tb testing.TB) {
	tb.Helper()
	if s.cmd == nil {
		tb.Fatal("redistest: Resume needs a server frozen by Pause")
	}
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		tb.Fatalf("redistest: resume: %v", err)
	}
}

func start() (*Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("EVENTBUS_REQUIRE_REDIS") == "1" {
			return nil, errors.New("EVENTBUS_REQUIRE_REDIS=1 but redis-server is not on PATH")
		}
		m := miniredis.NewMiniRedis()
		if err := m.Start(); err != nil {
			return nil, fmt.Errorf("start embedded redis: %w", err)
		}
		return &Server{Addr: m.Addr(), URL: "redis://" + m.Addr() + "/0", mini: m}, nil
	}
	// A free port can be taken between our probe and redis-server's bind;
	// try a few.
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", port)
		s := &Server{Addr: addr, URL: "redis://" + addr + "/0", Real: true, port: port}
		if lastErr = s.spawn(); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

// StartPersistent starts a real server of the test's own that keeps its
// data in the append-only file, fsynced at every write (appendfsync
// always), in a directory of its own: Stop (SIGKILL) and Restart bring it
// back with everything it acknowledged.
func StartPersistent(tb testing.TB) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("EVENTBUS_REQUIRE_REDIS") == "1" {
			tb.Fatal("EVENTBUS_REQUIRE_REDIS=1 but redis-server is not on PATH")
		}
		skipped.Add(1)
		tb.Skip("needs a real redis-server: the embedded fallback keeps nothing on disk")
	}
	port, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", port)
	s := &Server{Addr: addr, URL: "redis://" + addr + "/0", Real: true, port: port, dir: tb.TempDir()}
	if err := s.spawn(); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.stop)
	return s
}

func (s *Server) spawn() error {
	logf, err := os.CreateTemp("", "redistest-*.log")
	if err != nil {
		return fmt.Errorf("create redis log: %w", err)
	}
	s.logf = logf.Name()
	args := []string{"--port", s.port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", os.TempDir(), "--protected-mode", "no"}
	if s.dir != "" {
		args = []string{"--port", s.port, "--bind", "127.0.0.1", "--save", "",
			"--appendonly", "yes", "--appendfsync", "always", "--dir", s.dir, "--protected-mode", "no"}
	}
	if s.cluster != "" {
		args = append(args, "--dir", s.cluster, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.Itoa(int(clusterNodeTimeout.Milliseconds())))
	}
	cmd := exec.Command("redis-server", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start redis-server: %w", err)
	}
	logf.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := waitReady(s.Addr, exited); err != nil {
		_ = cmd.Process.Kill()
		out, _ := os.ReadFile(s.logf)
		os.Remove(s.logf)
		return fmt.Errorf("redis-server on %s: %w\n%s", s.Addr, err, out)
	}
	s.cmd, s.exited = cmd, exited
	return nil
}

// waitReady polls until the server answers PING, or fails when the process
// exits first or 10 s pass.
func waitReady(addr string, exited <-chan error) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not answering after 10s: %w", err)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		case <-tick.C:
		}
	}
}

func (s *Server) stop() {
	switch {
	case s.mini != nil:
		s.mini.Close()
	case s.cmd != nil:
		_ = s.cmd.Process.Kill()
		<-s.exited
		s.cmd = nil
		os.Remove(s.logf)
	}
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}
