package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

func runRevoke(ctx context.Context, e env, args []string) error {
	fs := flags(e, "revoke", "",
		"Revokes edge tokens through the API (POST /v1/revocations): one token by its id (--jti),\n"+
			"or every token of a user issued before a time (--sub, --issued-before, default now).\n"+
			"Every edge closes their connections with 4003 at once, and refuses them from then on.")
	var c common
	c.register(fs, e)
	jti := fs.String("jti", "", "the token's id (its jti claim)")
	sub := fs.String("sub", "", "the user whose tokens to revoke")
	before := fs.String("issued-before", "", "with --sub: revoke the tokens issued before this time (RFC 3339; default now)")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 || (*jti == "") == (*sub == "") || (*before != "" && *sub == "") {
		fs.Usage()
		return errUsage
	}
	body := map[string]any{}
	if *jti != "" {
		body["jti"] = *jti
	} else {
		t := time.Now().UTC()
		if *before != "" {
			var err error
			if t, err = time.Parse(time.RFC3339, *before); err != nil {
				return fmt.Errorf("--issued-before: want an RFC 3339 time such as 2026-11-22T10:00:00Z: %w", err)
			}
		}
		body["sub"], body["issued_before"] = *sub, t.Format(time.RFC3339Nano)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	var reply map[string]any
	if err := newClient(c).do(ctx, http.MethodPost, "/v1/revocations", b, nil, &reply); err != nil {
		return err
	}
	_, err = fmt.Fprintln(e.stdout, "revoked: every edge closes the matching connections and refuses the tokens")
	return err
}
