package server

import "runtime/debug"

// Collector settings for a service whose live heap is small and whose
// garbage is nearly all per request (the api): with Go's default, GOGC=100,
// a heap of a few MB is collected every few hundred requests, and each
// cycle's fixed costs (its mark workers take a quarter of the CPU while it
// runs) add up at tens of thousands of requests a second. Letting the
// heap grow to five times the live data (GOGC=400) collects a fifth as
// often; the soft limit keeps a service holding much more live data (a
// full in-flight budget) near the default's pace instead of at five times
// its memory.
const (
	tunedGCPercent   = 400
	tunedMemoryLimit = 512 << 20
)

// TuneGC applies those settings unless the environment (getenv) sets
// GOGC or GOMEMLIMIT, which then rule as they always do. It returns
// whether it changed anything.
func TuneGC(getenv func(string) string) bool {
	if getenv("GOGC") != "" || getenv("GOMEMLIMIT") != "" {
		return false
	}
	debug.SetGCPercent(tunedGCPercent)
	debug.SetMemoryLimit(tunedMemoryLimit)
	return true
}
