package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/eventbus-suite/eventbus/pkg/token"
)

// devSecretFile is where scripts/run.sh (make run) keeps the secret the
// development edge signs and checks tokens with, relative to the
// repository's root.
const devSecretFile = "data/dev-secret"

func runToken(ctx context.Context, e env, args []string) error {
	fs := flags(e, "token", "",
		"Mints a development token for the edge: HS256-signed with EDGE_JWT_SECRET, for user --sub,\n"+
			"allowed the patterns in --channels (and always its own notify:user:<sub>), and to publish\n"+
			"over MQTT on the channels of --publish.")
	sub := fs.String("sub", "", "user id (required)")
	channels := fs.String("channels", "", "comma-separated patterns the user may subscribe to, e.g. 'order:*,user:*'")
	publish := fs.String("publish", "", "comma-separated patterns the user may publish to over MQTT, e.g. 'sensor:*'")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid, from now (positive)")
	secret := fs.String("secret", e.getenv("EDGE_JWT_SECRET"),
		"signing secret (env EDGE_JWT_SECRET); without either, the development secret make run keeps in "+devSecretFile)
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 || *sub == "" {
		fs.Usage()
		return errUsage
	}
	if *ttl <= 0 {
		return fmt.Errorf("--ttl %v: want a positive duration, such as 15m or 24h; a token that is already expired is refused by every edge", *ttl)
	}
	if *secret == "" {
		b, err := os.ReadFile(devSecretFile)
		if err != nil {
			return fmt.Errorf("no secret: set EDGE_JWT_SECRET, pass --secret, or start the system with make run, which keeps its development secret in %s (%w)", devSecretFile, err)
		}
		*secret = strings.TrimSpace(string(b))
	}
	tok, err := token.IssueClaims([]byte(*secret), token.Claims{
		Channels: list(*channels), Publish: list(*publish), RegisteredClaims: jwt.RegisteredClaims{Subject: *sub},
	}, *ttl, time.Now())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(e.stdout, tok)
	return err
}

// list splits a comma-separated flag into its non-empty items.
func list(s string) []string {
	var items []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			items = append(items, p)
		}
	}
	return items
}
