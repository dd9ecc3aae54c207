package main

import (
	"net/http"
	"testing"
)

// A page asks for the VAPID public key without an API key, as it is the
// public half: with Web Push on it gets NOTIFY_VAPID_PUBLIC_KEY, with it
// off a JSON 404 push_off.
func TestPushVAPIDPublicKey(t *testing.T) {
	t.Parallel()
	on, pub := newPushWorld(t, map[string]string{"API_KEYS": "k1"})
	off := newWorld(t, newFakeSendGrid(t), map[string]string{"API_KEYS": "k1"})
	const path = "/v1/push/vapid-public-key"

	var got struct {
		Key string `json:"vapid_public_key"`
	}
	if status := call(t, on.replica(), http.MethodGet, path, "", "", &got); status != http.StatusOK || got.Key != pub {
		t.Errorf("GET %s with Web Push on = %d %q, want 200 and NOTIFY_VAPID_PUBLIC_KEY %q", path, status, got.Key, pub)
	}

	var e struct {
		Error struct{ Code, Message string }
	}
	if status := call(t, off.replica(), http.MethodGet, path, "", "", &e); status != http.StatusNotFound ||
		e.Error.Code != "push_off" || e.Error.Message == "" {
		t.Errorf("GET %s with Web Push off = %d %+v, want 404 push_off with a message", path, status, e.Error)
	}
}
