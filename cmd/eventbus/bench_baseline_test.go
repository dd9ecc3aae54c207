package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

// bench baseline serves the empty handler, reading whatever body comes
// and answering 202, until its context ends; a stray argument is refused.
func TestBenchBaseline(t *testing.T) {
	t.Parallel()
	if err := run(t.Context(), []string{"bench", "baseline", "extra"}, func(string) string { return "" }, io.Discard, io.Discard); !errors.Is(err, errUsage) {
		t.Fatalf("bench baseline extra = %v, want a usage error", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	out, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"bench", "baseline", "--listen", "127.0.0.1:0"}, func(string) string { return "" }, w, io.Discard)
		w.Close()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "serving on ")
	if !ok {
		t.Fatalf("bench baseline printed %q, want \"serving on ADDR\"", line)
	}
	go io.Copy(io.Discard, out)
	resp, err := http.Post("http://"+addr+"/v1/events", "application/json", strings.NewReader(`{"type":"bench.ingest"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("POST = %s, want 202 Accepted", resp.Status)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("bench baseline after its context ended = %v, want nil", err)
	}
}

// bench ingest refuses a negative --rate, and --rate over gRPC, whose
// streams it does not pace, before it sends anything.
func TestBenchIngestRefusesBadRates(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"bench", "ingest", "--rate", "-1"},
		{"bench", "ingest", "--rate", "100", "--grpc"},
	} {
		var stderr strings.Builder
		if err := run(t.Context(), args, func(string) string { return "" }, io.Discard, &stderr); !errors.Is(err, errUsage) {
			t.Errorf("%q = %v, want a usage error", args, err)
		}
		if !strings.Contains(stderr.String(), "-rate") {
			t.Errorf("%q printed %q, want the usage with -rate", args, stderr.String())
		}
	}
}
