//go:build !linux && !darwin && !freebsd && !netbsd && !openbsd

package logging

// isTerminal says no where this package does not know how to ask: Auto is
// JSON there, and LOG_FORMAT=text asks for text.
func isTerminal(uintptr) bool { return false }
