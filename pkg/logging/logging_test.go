package logging_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/logging"
)

func TestParseFormat(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, in string
		want     logging.Format
		bad      bool
	}{
		{name: "json", in: "json", want: logging.JSON},
		{name: "text", in: "text", want: logging.Text},
		{name: "auto", in: "auto", want: logging.Auto},
		{name: "unknown", in: "xml", bad: true},
		{name: "capitals", in: "JSON", bad: true},
		{name: "empty", in: "", bad: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := logging.ParseFormat(tt.in)
			if tt.bad {
				if err == nil || !strings.Contains(err.Error(), "json, text or auto") {
					t.Errorf("ParseFormat(%q) = %q, %v; want an error naming the formats", tt.in, got, err)
				}
				return
			}
			if got != tt.want || err != nil {
				t.Errorf("ParseFormat(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// Off a terminal (a pipe, as under scripts/run.sh, a container or a test)
// auto is JSON, every record carrying its service.
func TestAutoIsJSONOnAPipe(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := logging.Auto.For(w); got != logging.JSON {
		t.Errorf("Auto.For(a pipe) = %q, want json", got)
	}
	if logging.IsTerminal(&bytes.Buffer{}) {
		t.Error("IsTerminal(a bytes.Buffer) = true")
	}
	logging.New(w, logging.Auto, slog.LevelInfo, "api").Info("listening", "http_addr", ":8080")
	w.Close()
	var rec map[string]any
	if err := json.NewDecoder(r).Decode(&rec); err != nil {
		t.Fatalf("the record is not JSON: %v", err)
	}
	if rec["service"] != "api" || rec["msg"] != "listening" || rec["http_addr"] != ":8080" {
		t.Errorf("record = %v, want service, msg and http_addr", rec)
	}
}

func TestTextLines(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	log := logging.New(&b, logging.Text, slog.LevelInfo, "logger")
	log.Debug("not shown")
	log.Info("listening", "http_addr", "[::]:8082", "patterns", []string{"*"})
	log.With("member", "m1").WithGroup("lag").Warn("read the record: redis is unreachable", "error", errors.New("dial tcp: refused"), "events", 3)
	log.Error("stopped")
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	want := []*regexp.Regexp{
		regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} INFO  listening http_addr=\[::\]:8082 patterns=\[\*\]$`),
		regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} WARN  read the record: redis is unreachable member=m1 lag\.error="dial tcp: refused" lag\.events=3$`),
		regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} ERROR stopped$`),
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), b.String())
	}
	for i, re := range want {
		if !re.MatchString(lines[i]) {
			t.Errorf("line %d = %q, want it to match %s", i, lines[i], re)
		}
	}
	if strings.Contains(b.String(), "service=") || strings.Contains(b.String(), "{") {
		t.Errorf("text lines carry the service or JSON:\n%s", b.String())
	}
}

// Records logged at once from many goroutines come out as whole lines.
func TestTextLinesAreWhole(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	log := logging.New(&b, logging.Text, slog.LevelInfo, "edge")
	done := make(chan struct{})
	for g := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			l := log.With("g", g)
			for i := range 100 {
				l.Info("event", "i", i)
			}
		}()
	}
	for range 8 {
		<-done
	}
	re := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} INFO  event g=\d i=\d+$`)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 800 {
		t.Errorf("got %d lines, want 800", len(lines))
	}
	for _, l := range lines {
		if !re.MatchString(l) {
			t.Fatalf("line %q is not whole", l)
		}
	}
}
