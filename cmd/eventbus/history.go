package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// historyPage is one answer of GET /v1/history.
type historyPage struct {
	Events []struct {
		Offset  string          `json:"offset"`
		Epoch   string          `json:"epoch"`
		Channel string          `json:"channel"`
		Event   json.RawMessage `json:"event"`
	} `json:"events"`
	Next string `json:"next"`
	More bool   `json:"more"`
}

func runHistory(ctx context.Context, e env, args []string) error {
	fs := flags(e, "history", "PATTERN",
		"Prints the recorded events on channels matching PATTERN, oldest first, one JSON\n"+
			"object a line: {\"offset\",\"epoch\",\"channel\",\"event\"}. Without --since it starts at the\n"+
			"oldest event kept. The last line on standard error is the cursor to go on from\n"+
			"(--since CURSOR).")
	var c common
	c.register(fs, e)
	since := fs.String("since", "", "an offset (with --epoch) or a cursor printed by an earlier run")
	epoch := fs.String("epoch", "", "the epoch of the offset in --since")
	limit := fs.Int("limit", 0, "stop after this many events (0: all there are)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	} else if len(pos) != 1 || *limit < 0 {
		fs.Usage()
		return errUsage
	}
	cl := newClient(c)
	cursor, printed := *since, 0
	for {
		q := url.Values{"pattern": {pos[0]}, "limit": {"1000"}}
		if *limit > 0 {
			q.Set("limit", strconv.Itoa(min(1000, *limit-printed)))
		}
		if cursor != "" {
			q.Set("since", cursor)
			if cursor == *since && *epoch != "" {
				q.Set("epoch", *epoch)
			}
		}
		var page historyPage
		if err := cl.do(ctx, http.MethodGet, "/v1/history?"+q.Encode(), nil, nil, &page); err != nil {
			return err
		}
		enc := json.NewEncoder(e.stdout)
		for _, ev := range page.Events {
			if err := enc.Encode(ev); err != nil {
				return err
			}
		}
		printed += len(page.Events)
		cursor = page.Next
		if !page.More || *limit > 0 && printed >= *limit {
			break
		}
	}
	_, err = fmt.Fprintf(e.stderr, "cursor: %s\n", cursor)
	return err
}
