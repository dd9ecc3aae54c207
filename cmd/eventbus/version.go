package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// commit and buildVersion are set by make build (-ldflags -X), as Go
// records no VCS information in a workspace build.
var commit, buildVersion string

// version describes the build: the module version, the commit it was built
// from (and whether the tree had changes) and the Go version, as Go records
// them in the binary.
func version() string {
	v, rev, dirty := "(devel)", "unknown", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				rev = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = ", modified"
			}
		}
	}
	if buildVersion != "" {
		v = buildVersion
	}
	if commit != "" {
		rev = commit
	}
	return fmt.Sprintf("eventbus %s (commit %s%s, %s)", v, rev, dirty, runtime.Version())
}

func runVersion(_ context.Context, e env, args []string) error {
	fs := flags(e, "version", "", "Prints the version, the commit and the Go version of this build.")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 {
		fs.Usage()
		return errUsage
	}
	_, err := fmt.Fprintln(e.stdout, version())
	return err
}
