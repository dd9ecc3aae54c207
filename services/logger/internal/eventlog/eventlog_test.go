package eventlog_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/logger/internal/eventlog"
)

func record(t *testing.T, ch string, i int) eventlog.Record {
	t.Helper()
	env := &envelope.Envelope{Type: "test.event", Channel: ch, Subject: strconv.Itoa(i)}
	if err := envelope.Fill(env, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	b, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := eventlog.Format(bus.Message{Channel: ch, Patterns: []string{"*"}, Payload: b}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func subjects(t *testing.T, recs []eventlog.Record) string {
	t.Helper()
	var s []string
	for _, r := range recs {
		p, err := eventlog.Parse(r.Line)
		if err != nil || p.ID != r.ID || p.Channel != r.Channel {
			t.Fatalf("Parse(%s) = %+v, %v; want id %s channel %s", r.Line, p, err, r.ID, r.Channel)
		}
		_, rest, _ := strings.Cut(string(r.Line), `"subject":"`)
		sub, _, _ := strings.Cut(rest, `"`)
		s = append(s, sub)
	}
	return strings.Join(s, ",")
}

func TestFilesRotateAndReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fs, err := eventlog.OpenFiles(dir, 4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	for i := range n {
		if err := fs.WriteLine(record(t, "a:b", i).Line); err != nil {
			t.Fatal(err)
		}
	}
	if err := fs.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Fatalf("%d files in the log directory, want events.log and 2 rotated", len(entries))
	}
	for _, e := range entries {
		info, _ := e.Info()
		if info.Size() > 4096 {
			t.Errorf("%s is %d bytes, more than the 4096 allowed", e.Name(), info.Size())
		}
	}
	recent, err := eventlog.LoadRecent(dir, 10, eventlog.NamespaceOf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := subjects(t, recent.Records), "90,91,92,93,94,95,96,97,98,99"; got != want {
		t.Errorf("LoadRecent(10) subjects = %s, want %s", got, want)
	}
	// Reopening appends rather than truncating.
	fs, err = eventlog.OpenFiles(dir, 4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.WriteLine(record(t, "a:b", n).Line); err != nil {
		t.Fatal(err)
	}
	fs.Close()
	recent, _ = eventlog.LoadRecent(dir, 2, eventlog.NamespaceOf)
	if got := subjects(t, recent.Records); got != "99,100" {
		t.Errorf("after reopening, last two = %s, want 99,100", got)
	}
}

func TestLoadRecentSkipsATornLine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := record(t, "a:b", 1).Line
	content := fmt.Sprintf("%s\n{\"channel\":\"a:b\",\"ev", good)
	if err := os.WriteFile(filepath.Join(dir, "events.log"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	recent, err := eventlog.LoadRecent(dir, 10, eventlog.NamespaceOf)
	if err != nil || len(recent.Records) != 1 {
		t.Fatalf("LoadRecent = %d records, %v; want the 1 whole line", len(recent.Records), err)
	}
}

func TestFormatKeepsAPayloadThatIsNoEnvelope(t *testing.T) {
	t.Parallel()
	rec, err := eventlog.Format(bus.Message{Channel: "x:y", Patterns: []string{"x:*"}, Payload: []byte{0xff, 0x01}}, time.Now())
	if err == nil {
		t.Fatal("Format(garbage) error = nil, want the decoding error")
	}
	if !strings.Contains(string(rec.Line), `"payload_base64":"/wE="`) || !strings.Contains(string(rec.Line), `"pattern":"x:*"`) {
		t.Errorf("line = %s, want the raw payload and pattern kept", rec.Line)
	}
}

// A line says where its event is in the record, and reads back with it;
// one read back from the record, not logged now, has no logged_at.
func TestFormatKeepsThePosition(t *testing.T) {
	t.Parallel()
	p := bus.Position{Offset: "1732290000000-3", Epoch: "9f86d081884c7d65"}
	m := bus.Message{Channel: "o:x", Patterns: []string{"o:*"}, Payload: []byte{0xff}, Position: p}
	rec, _ := eventlog.Format(m, time.Now())
	if rec.Position != p || !strings.Contains(string(rec.Line), `"pattern":"o:*","offset":"1732290000000-3","epoch":"9f86d081884c7d65",`) {
		t.Errorf("Format with a position = %+v\n%s\nwant offset and epoch after pattern", rec.Position, rec.Line)
	}
	if got, err := eventlog.Parse(rec.Line); err != nil || got.Position != p {
		t.Errorf("Parse(%s) position = %+v, %v; want %+v", rec.Line, got.Position, err, p)
	}
	replayed, _ := eventlog.Format(m, time.Time{})
	if strings.Contains(string(replayed.Line), "logged_at") || !strings.HasPrefix(string(replayed.Line), `{"channel":"o:x",`) {
		t.Errorf("Format with no time = %s, want no logged_at", replayed.Line)
	}
	m.Position = bus.Position{}
	if rec, _ := eventlog.Format(m, time.Now()); strings.Contains(string(rec.Line), "offset") {
		t.Errorf("Format without a position = %s, want no offset", rec.Line)
	}
	for _, l := range []string{
		`{"channel":"o:x","offset":"1-0","epoch":"XYZ"}`,
		`{"channel":"o:x","offset":"1","epoch":"ab"}`,
		`{"channel":"o:x","offset":"1-0"}`,
	} {
		if got, err := eventlog.Parse([]byte(l)); err != nil || !got.Position.IsZero() {
			t.Errorf("Parse(%s) = %+v, %v; want the line without a position", l, got.Position, err)
		}
	}
}
