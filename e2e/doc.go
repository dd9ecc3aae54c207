// Package e2e holds the end-to-end tests: they start the real binaries as
// processes against a real Redis and drive them as users do.
package e2e
