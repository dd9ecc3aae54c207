package sseapi

import (
	"strings"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

// FuzzLastEventID: whatever a client sends back, the stream either
// refuses it with a reason or resumes from positions it could have sent.
func FuzzLastEventID(f *testing.F) {
	f.Add(bus.Cursor{"order": {Offset: "1732290000000-0", Epoch: "9f01"}}.String())
	f.Add("")
	f.Add("e30")
	f.Add(strings.Repeat("A", 100))
	f.Fuzz(func(t *testing.T, id string) {
		c, err := lastEventID(id)
		if err != nil {
			if c != nil || err.Code != protocol.CodeBadRequest || err.Message == "" {
				t.Fatalf("lastEventID(%q) = %v, %+v", id, c, err)
			}
			return
		}
		if id == "" {
			if c != nil {
				t.Fatalf("lastEventID(\"\") = %v, want none", c)
			}
			return
		}
		if len(c) > protocol.MaxSince {
			t.Fatalf("lastEventID accepted %d namespaces", len(c))
		}
		for ns, p := range c {
			if strings.ContainsAny(ns, ":*") || !bus.IsOffset(p.Offset) || !bus.IsEpoch(p.Epoch) {
				t.Fatalf("lastEventID accepted %q: %+v", ns, p)
			}
		}
	})
}
