package main

import (
	"bytes"
	"crypto/ecdh"
	"encoding/base64"
	"io"
	"strings"
	"testing"
)

// eventbus vapid prints a new P-256 pair as NOTIFY_VAPID_* lines: the
// public key uncompressed, the private key its scalar, both base64url.
func TestVapidPrintsANewPair(t *testing.T) {
	t.Parallel()
	pair := func() (pub, priv string) {
		var out bytes.Buffer
		if err := run(t.Context(), []string{"vapid"}, func(string) string { return "" }, &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != 2 {
			t.Fatalf("eventbus vapid printed %q, want two lines", out.String())
		}
		pub, ok1 := strings.CutPrefix(lines[0], "NOTIFY_VAPID_PUBLIC_KEY=")
		priv, ok2 := strings.CutPrefix(lines[1], "NOTIFY_VAPID_PRIVATE_KEY=")
		if !ok1 || !ok2 {
			t.Fatalf("eventbus vapid printed %q, want NOTIFY_VAPID_PUBLIC_KEY= and NOTIFY_VAPID_PRIVATE_KEY= lines", out.String())
		}
		return pub, priv
	}
	pub, priv := pair()
	rawPub, err := base64.RawURLEncoding.DecodeString(pub)
	if err != nil || len(rawPub) != 65 || rawPub[0] != 4 {
		t.Fatalf("public key %q: %d bytes, %v; want the base64url of an uncompressed point (65 bytes)", pub, len(rawPub), err)
	}
	rawPriv, err := base64.RawURLEncoding.DecodeString(priv)
	if err != nil {
		t.Fatalf("private key is not base64url: %v", err)
	}
	k, err := ecdh.P256().NewPrivateKey(rawPriv)
	if err != nil || !bytes.Equal(k.PublicKey().Bytes(), rawPub) {
		t.Fatalf("private key: %v; want the P-256 key of the public key", err)
	}
	if pub2, _ := pair(); pub2 == pub {
		t.Errorf("two runs printed the same pair")
	}
	if err := run(t.Context(), []string{"vapid", "extra"}, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
		t.Errorf("eventbus vapid extra = nil, want a usage error")
	}
}
