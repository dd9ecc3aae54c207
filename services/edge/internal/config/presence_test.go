package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPresence(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, namespaces, ttl string
		want                  []string
		wantTTL               time.Duration
		refused               string
	}{
		{name: "unset", want: []string{"notify"}, wantTTL: 30 * time.Second},
		{name: "some", namespaces: "room, notify", ttl: "5s", want: []string{"room", "notify"}, wantTTL: 5 * time.Second},
		{name: "every namespace", namespaces: "*", want: []string{"*"}, wantTTL: 30 * time.Second},
		{name: "off", namespaces: "off", want: nil, wantTTL: 30 * time.Second},
		{name: "a channel", namespaces: "room:1", refused: "EDGE_PRESENCE_NAMESPACES"},
		{name: "a pattern", namespaces: "room*", refused: "EDGE_PRESENCE_NAMESPACES"},
		{name: "upper case", namespaces: "Room", refused: "EDGE_PRESENCE_NAMESPACES"},
		{name: "the bus's own", namespaces: "eventbus", refused: "EDGE_PRESENCE_NAMESPACES"},
		{name: "a short TTL", ttl: "500ms", refused: "EDGE_PRESENCE_TTL"},
		{name: "no TTL", ttl: "0", refused: "EDGE_PRESENCE_TTL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"EDGE_JWT_SECRET": strings.Repeat("k", 32), "EDGE_PRESENCE_NAMESPACES": tt.namespaces, "EDGE_PRESENCE_TTL": tt.ttl}
			c, err := Load(func(k string) string { return env[k] })
			if tt.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tt.refused) {
					t.Fatalf("Load(%q, %q) = %v, want an error naming %s", tt.namespaces, tt.ttl, err, tt.refused)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load(%q, %q) = %v", tt.namespaces, tt.ttl, err)
			}
			if !slices.Equal(c.PresenceNamespaces, tt.want) || c.PresenceTTL != tt.wantTTL {
				t.Errorf("Load(%q, %q) = %q, %v; want %q, %v", tt.namespaces, tt.ttl, c.PresenceNamespaces, c.PresenceTTL, tt.want, tt.wantTTL)
			}
		})
	}
}
