package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/token"
)

func runToken(ctx context.Context, e env, args []string) error {
	fs := flags(e, "token", "",
		"Mints a development token for the edge: HS256-signed with EDGE_JWT_SECRET, for user --sub,\n"+
			"allowed the patterns in --channels (and always its own notify:user:<sub>).")
	sub := fs.String("sub", "", "user id (required)")
	channels := fs.String("channels", "", "comma-separated patterns the user may subscribe to, e.g. 'order:*,user:*'")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	secret := fs.String("secret", e.getenv("EDGE_JWT_SECRET"), "signing secret (env EDGE_JWT_SECRET)")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 || *sub == "" {
		fs.Usage()
		return errUsage
	}
	if *secret == "" {
		return errors.New("no secret: set EDGE_JWT_SECRET or pass --secret")
	}
	var patterns []string
	for _, p := range strings.Split(*channels, ",") {
		if p = strings.TrimSpace(p); p != "" {
			patterns = append(patterns, p)
		}
	}
	tok, err := token.Issue([]byte(*secret), *sub, patterns, *ttl, time.Now())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(e.stdout, tok)
	return err
}
