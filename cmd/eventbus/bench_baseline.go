package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
)

// benchBaseline serves the yardstick of the ingest benchmarks: a Go
// net/http handler that reads the body and answers 202, nothing else. A
// loader (wrk, or bench ingest) run against it and against the api in the
// same run gives the fraction of a bare HTTP server's rate the api keeps
// while it validates, records and publishes each event (docs/benchmarks.md).
func benchBaseline(ctx context.Context, e env, args []string) error {
	fs := flags(e, "bench baseline", "",
		"Serves an empty handler (read the body, answer 202) until interrupted: the yardstick\n"+
			"for POST /v1/events. It prints \"serving on ADDR\" once it listens.")
	listen := fs.String("listen", "127.0.0.1:18090", "address to serve on")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 {
		fs.Usage()
		return errUsage
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	})}
	fmt.Fprintf(e.stdout, "serving on %s\n", l.Addr())
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
