package revocation_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// A token is revoked by its id, or as one of a user's issued before a time;
// a later revocation by time never undoes an earlier, later one.
func TestStore(t *testing.T) {
	t.Parallel()
	testStore(t, revocation.Store{Redis: redistest.Shared(t).Client(t), Prefix: redistest.Prefix(t), MaxAge: time.Hour})
}

// On a Redis Cluster too, where a user's key and a token's are on
// different slots.
func TestStoreOnACluster(t *testing.T) {
	t.Parallel()
	testStore(t, revocation.Store{Redis: redistest.SharedCluster(t).Client(t), Prefix: redistest.Prefix(t), MaxAge: time.Hour})
}

func testStore(t *testing.T, s revocation.Store) {
	now := time.Now()
	if err := s.Record(t.Context(), revocation.Command{Action: revocation.ActionRevoke, JTI: "j1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(t.Context(), revocation.Command{Action: revocation.ActionRevoke, Sub: "42", IssuedBefore: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(t.Context(), revocation.Command{Action: revocation.ActionRevoke, Sub: "42", IssuedBefore: now.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		jti, sub string
		iat      time.Time
		want     bool
	}{
		{"j1", "7", now, true},
		{"j2", "7", now, false},
		{"j2", "42", now.Add(-time.Minute), true}, // before the later cut
		{"j2", "42", now.Add(time.Second), false},
		{"", "42", now.Add(time.Second), false},
	} {
		if got, err := s.Revoked(t.Context(), tt.jti, tt.sub, tt.iat); err != nil || got != tt.want {
			t.Errorf("Revoked(%s, %s, %v) = %v, %v; want %v", tt.jti, tt.sub, tt.iat, got, err, tt.want)
		}
	}
}

// A command survives its trip through the control channel, and every
// malformed one is refused with a reason.
func TestCommands(t *testing.T) {
	t.Parallel()
	before := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	for _, c := range []revocation.Command{
		{Action: revocation.ActionRevoke, JTI: "abc"},
		{Action: revocation.ActionRevoke, Sub: "42", IssuedBefore: before},
		{Action: revocation.ActionDisconnect, Sub: "42"},
		{Action: revocation.ActionUnsubscribe, Sub: "42", Pattern: "order:*"},
		{Action: revocation.ActionTakeover, Identity: "user:42", ClientID: "phone ü", Conn: "c1", ConnectedBefore: before},
	} {
		b, err := c.Payload("test", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		got, err := revocation.Parse(b)
		if err != nil || got.Action != c.Action || got.JTI != c.JTI || got.Sub != c.Sub || !got.IssuedBefore.Equal(c.IssuedBefore) || got.Pattern != c.Pattern ||
			got.Identity != c.Identity || got.ClientID != c.ClientID || got.Conn != c.Conn || !got.ConnectedBefore.Equal(c.ConnectedBefore) {
			t.Errorf("Parse(Envelope(%+v)) = %+v, %v", c, got, err)
		}
	}
	for _, c := range []revocation.Command{
		{Action: "nope"},
		{Action: revocation.ActionRevoke},
		{Action: revocation.ActionRevoke, JTI: "a", Sub: "42"},
		{Action: revocation.ActionRevoke, Sub: "42"},
		{Action: revocation.ActionRevoke, JTI: "a b"},
		{Action: revocation.ActionRevoke, JTI: strings.Repeat("a", 256)},
		{Action: revocation.ActionRevoke, Sub: "4:2", IssuedBefore: before},
		{Action: revocation.ActionDisconnect},
		{Action: revocation.ActionUnsubscribe, Sub: "42", Pattern: "a b"},
		{Action: revocation.ActionTakeover, Identity: "user:42", ClientID: "phone", ConnectedBefore: before},
		{Action: revocation.ActionTakeover, Identity: "user:42", ClientID: "phone", Conn: "c1"},
		{Action: revocation.ActionTakeover, Identity: "user:42", ClientID: "a\nb", Conn: "c1"},
		{Action: revocation.ActionTakeover, Identity: "user:42", ClientID: "\xff", Conn: "c1"},
	} {
		if err := c.Validate(); !errors.Is(err, revocation.ErrInvalid) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalid", c, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	b, _ := revocation.Command{Action: revocation.ActionRevoke, JTI: "abc"}.Payload("test", time.Now())
	f.Add(b)
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, payload []byte) {
		c, err := revocation.Parse(payload)
		if err == nil && c.Validate() != nil {
			t.Fatalf("Parse accepted %+v, which Validate refuses", c)
		}
	})
}

// BenchmarkTakeoverPayload: the command every MQTT CONNECT publishes.
func BenchmarkTakeoverPayload(b *testing.B) {
	c := revocation.Command{Action: revocation.ActionTakeover, Identity: "user:42", ClientID: "thermo-1", Conn: "c1", ConnectedBefore: time.Now()}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Payload("edge", time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}
