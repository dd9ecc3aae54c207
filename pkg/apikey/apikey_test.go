package apikey_test

import (
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/apikey"
)

func TestAllow(t *testing.T) {
	t.Parallel()
	keys := apikey.New([]string{"k1", "k2"})
	tests := []struct {
		name          string
		keys          apikey.Keys
		authorization string
		want          bool
	}{
		{"first key", keys, "Bearer k1", true},
		{"second key", keys, "Bearer k2", true},
		{"scheme in any case (RFC 9110)", keys, "bearer k1", true},
		{"scheme in capitals", keys, "BEARER k2", true},
		{"unknown key", keys, "Bearer k3", false},
		{"prefix of a key", keys, "Bearer k", false},
		{"no header", keys, "", false},
		{"empty bearer", keys, "Bearer ", false},
		{"other scheme", keys, "Basic k1", false},
		{"open: no header", apikey.Keys{}, "", true},
		{"open: anything", apikey.New(nil), "Bearer whatever", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.keys.Allow(tt.authorization); got != tt.want {
				t.Errorf("Allow(%q) = %v, want %v", tt.authorization, got, tt.want)
			}
		})
	}
	if keys.Open() || !apikey.New(nil).Open() {
		t.Errorf("Open() = %v with keys, %v without; want false, true", keys.Open(), apikey.New(nil).Open())
	}
}
