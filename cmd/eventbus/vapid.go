package main

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

// runVapid prints a new VAPID key pair (RFC 8292) for the notification
// service's Web Push, as the variables it reads.
func runVapid(_ context.Context, e env, args []string) error {
	fs := flags(e, "vapid", "", `Prints a new VAPID key pair for the notification service's Web Push, as
the two variables it reads: a P-256 key, base64url without padding (the
public key an uncompressed point, as browsers want it for
applicationServerKey). Keep the private key secret; changing the pair
invalidates every push subscription made with the old public key.

  eventbus vapid > vapid.env`)
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 {
		fs.Usage()
		return errUsage
	}
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate a VAPID key: %w", err)
	}
	_, err = fmt.Fprintf(e.stdout, "NOTIFY_VAPID_PUBLIC_KEY=%s\nNOTIFY_VAPID_PRIVATE_KEY=%s\n",
		base64.RawURLEncoding.EncodeToString(k.PublicKey().Bytes()), base64.RawURLEncoding.EncodeToString(k.Bytes()))
	return err
}
