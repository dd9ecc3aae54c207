package server

import (
	"math"
	"runtime/debug"
	"testing"
)

// TuneGC sets GOGC=400 and a 512 MiB soft limit, unless the environment
// sets either: then the runtime's own reading of it stands.
func TestTuneGC(t *testing.T) {
	percent, limit := debug.SetGCPercent(100), debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(percent); debug.SetMemoryLimit(limit) })

	for _, name := range []string{"GOGC", "GOMEMLIMIT"} {
		set := func(k string) string {
			if k == name {
				return "200"
			}
			return ""
		}
		if TuneGC(set) {
			t.Errorf("TuneGC with %s set changed the collector", name)
		}
		if got := debug.SetGCPercent(100); got != 100 {
			t.Errorf("with %s set, GC percent = %d, want 100 untouched", name, got)
		}
	}
	if !TuneGC(func(string) string { return "" }) {
		t.Fatal("TuneGC without GOGC or GOMEMLIMIT changed nothing")
	}
	if got := debug.SetGCPercent(100); got != tunedGCPercent {
		t.Errorf("GC percent = %d, want %d", got, tunedGCPercent)
	}
	if got := debug.SetMemoryLimit(-1); got != tunedMemoryLimit {
		t.Errorf("memory limit = %d, want %d", got, tunedMemoryLimit)
	}
}
