package contacts_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/services/notification/internal/contacts"
	"github.com/eventbus-suite/eventbus/services/notification/internal/rules"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func TestStore(t *testing.T) {
	t.Parallel()
	for name, rdb := range map[string]redis.UniversalClient{
		"one server": redistest.Shared(t).Client(t),
		"cluster":    redistest.SharedCluster(t).Client(t),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := contacts.New(rdb, redistest.Prefix(t))
			if c, err := s.Get(t.Context(), "42"); err != nil || c != nil {
				t.Fatalf("Get before Save = %v, %v; want nil, nil", c, err)
			}
			for _, c := range []rules.Contact{{Email: "ada@example.com", Name: "Ada"}, {Email: "ada@example.org"}} {
				if err := s.Save(t.Context(), "42", c); err != nil {
					t.Fatalf("Save = %v", err)
				}
				if got, err := s.Get(t.Context(), "42"); err != nil || got == nil || *got != c {
					t.Fatalf("Get after Save(%+v) = %+v, %v", c, got, err)
				}
			}
		})
	}
}
