package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/bus/redisbus"
	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// The logger runs as the image's user (65532) on a data directory set up
// as the image sets up /data (created owned by that user), and writes its
// log there.
func TestLoggerWritesItsDataDirectoryAsTheImageUser(t *testing.T) {
	if os.Geteuid() != 0 {
		servicetest.Needs(t, "EVENTBUS_REQUIRE_ROOT", "the tests do not run as root, which running a process as uid 65532 takes")
	}
	srv := redistest.Shared(t)
	base, err := os.MkdirTemp("", "eventbus-uid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil { // reachable by the user, as / is
		t.Fatal(err)
	}
	data := filepath.Join(base, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, 65532, 65532); err != nil { // COPY --chown=65532:65532 … /data
		t.Fatal(err)
	}
	exe := filepath.Join(base, "logger")
	b, err := os.ReadFile(filepath.Join(bin, "logger"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	prefix := strings.TrimSuffix(redistest.Prefix(t), ":")
	addr := servicetest.FreeAddr(t)
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "REDIS_URL="+srv.URL, "REDIS_PREFIX="+prefix, "LOGGER_HTTP_ADDR="+addr, "LOGGER_DIR="+data, "LOGGER_STDOUT=false")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
	waitReady(t, startCmd(t, "logger", cmd), "http://"+addr+"/readyz")
	b2, err := redisbus.New(srv.Client(t), redisbus.Options{Prefix: prefix + ":", HistoryMaxLen: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if _, err := b2.Publish(t.Context(), "uid:test", []byte("not an envelope: logged raw")); err != nil {
		t.Fatal(err)
	}
	servicetest.WaitFor(t, "a log file written by uid 65532", func() bool {
		entries, _ := os.ReadDir(data)
		for _, e := range entries {
			info, err := e.Info()
			if err == nil && info.Size() > 0 && info.Sys().(*syscall.Stat_t).Uid == 65532 {
				return true
			}
		}
		return false
	})
}
