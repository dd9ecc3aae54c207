package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// eventbus revoke posts what the API takes, with the API key, and refuses
// flags that do not make one revocation.
func TestRevoke(t *testing.T) {
	t.Parallel()
	var got []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/revocations" || r.Header.Get("Authorization") != "Bearer k" {
			http.Error(w, `{"error":{"code":"nope","message":"wrong request"}}`, http.StatusBadRequest)
			return
		}
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		got = append(got, body)
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"revoked":true}`)
	}))
	defer srv.Close()
	getenv := func(k string) string {
		return map[string]string{"EVENTBUS_API": srv.URL, "EVENTBUS_API_KEY": "k"}[k]
	}
	for _, args := range [][]string{
		{"revoke", "--jti", "j1"},
		{"revoke", "--sub", "42", "--issued-before", "2026-11-22T10:00:00Z"},
	} {
		if err := run(t.Context(), args, getenv, io.Discard, io.Discard); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	if len(got) != 2 || got[0]["jti"] != "j1" || got[1]["sub"] != "42" || got[1]["issued_before"] != "2026-11-22T10:00:00Z" {
		t.Fatalf("the API got %v", got)
	}
	for _, args := range [][]string{
		{"revoke"},
		{"revoke", "--jti", "j1", "--sub", "42"},
		{"revoke", "--jti", "j1", "--issued-before", "2026-11-22T10:00:00Z"},
	} {
		if err := run(t.Context(), args, getenv, io.Discard, io.Discard); err != errUsage {
			t.Errorf("%v = %v, want the usage", args, err)
		}
	}
	if err := run(t.Context(), []string{"revoke", "--sub", "42", "--issued-before", "yesterday"}, getenv, io.Discard, io.Discard); err == nil {
		t.Error("a bad --issued-before was taken")
	}
}
