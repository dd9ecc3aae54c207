package servicetest

import (
	"os"
	"testing"
)

// Needs stops a test that lacks something outside Go (a program, root):
// it fails when the variable env is 1, as CI sets it so that nothing is
// skipped there, and is skipped elsewhere. missing says what is lacking
// and how to get it.
func Needs(tb testing.TB, env, missing string) {
	tb.Helper()
	if os.Getenv(env) == "1" {
		tb.Fatalf("%s=1 but %s", env, missing)
	}
	tb.Skip(missing)
}
