package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
)

const deadLettersUsage = `Usage: eventbus dead-letters list [flags]
       eventbus dead-letters retry [--id ID ...] [flags]

Dead letters are the emails the notification service never sent: SendGrid
refused them, or failed every attempt. list prints them, newest first, one JSON
object a line (without their bodies). retry sends them again, the ones named
with --id or else the oldest 1,000, and prints what it did. However many
retries run at once, none sends an email that went already (it is dropped from
the list) or that another replica is sending (it is left to it). Run
'eventbus dead-letters list --help' for the flags.
`

func runDeadLetters(ctx context.Context, e env, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, deadLettersUsage)
		return errUsage
	}
	switch args[0] {
	case "list":
		return runDeadLettersList(ctx, e, args[1:])
	case "retry":
		return runDeadLettersRetry(ctx, e, args[1:])
	case "-h", "--help", "help":
		fmt.Fprint(e.stdout, deadLettersUsage)
		return nil
	}
	fmt.Fprintf(e.stderr, "eventbus: dead-letters: unknown command %q\n\n%s", args[0], deadLettersUsage)
	return errUsage
}

// notificationFlags are the flags of the commands that talk to the
// notification service.
type notificationFlags struct {
	base, apiKey   string
	connectTimeout time.Duration
}

func (n *notificationFlags) register(fs *flag.FlagSet, e env) {
	fs.StringVar(&n.base, "notification", serviceURL(e.getenv, "EVENTBUS_NOTIFICATION", "NOTIFICATION_HTTP_ADDR", ":8083"),
		"notification service base URL (env EVENTBUS_NOTIFICATION, else that of NOTIFICATION_HTTP_ADDR)")
	fs.StringVar(&n.apiKey, "api-key", e.getenv("EVENTBUS_API_KEY"), "API key sent as a bearer token (env EVENTBUS_API_KEY)")
	registerConnectTimeout(fs, &n.connectTimeout)
}

// client returns a client of the notification service whose requests
// take at most timeout; headers says whether the service begins its reply
// at once (see httpClient).
func (n *notificationFlags) client(timeout time.Duration, headers bool) *client {
	return &client{base: strings.TrimSuffix(n.base, "/"), apiKey: n.apiKey,
		http: httpClient(timeout, n.connectTimeout, headers), connect: n.connectTimeout}
}

func runDeadLettersList(ctx context.Context, e env, args []string) error {
	fs := flags(e, "dead-letters list", "",
		"Prints the newest 1,000 dead letters, newest first, one JSON object a line:\n"+
			"{\"id\",\"event_id\",\"type\",\"notification\",\"user_id\",\"to\",\"to_name\",\"subject\",\"key\",\n"+
			"\"attempts\",\"reason\",\"failed_at\"}; the id is what 'retry --id' takes. How many there\n"+
			"are in all goes to standard error.")
	var n notificationFlags
	n.register(fs, e)
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 {
		fs.Usage()
		return errUsage
	}
	var reply struct {
		DeadLetters []json.RawMessage `json:"dead_letters"`
		Total       int64             `json:"total"`
	}
	if err := n.client(30*time.Second, true).do(ctx, http.MethodGet, "/v1/dead-letters", nil, nil, &reply); err != nil {
		return err
	}
	for _, dl := range reply.DeadLetters {
		if _, err := fmt.Fprintf(e.stdout, "%s\n", dl); err != nil {
			return err
		}
	}
	if int64(len(reply.DeadLetters)) < reply.Total {
		fmt.Fprintf(e.stderr, "%d of %d dead letters shown, the newest\n", len(reply.DeadLetters), reply.Total)
	} else {
		fmt.Fprintf(e.stderr, "%d dead letter(s)\n", reply.Total)
	}
	return nil
}

// printable returns s, quoted if it holds anything a terminal would not
// print as it is (a reason carries SendGrid's answer, an id what a
// publisher chose): one outcome stays one line, and none moves the cursor.
func printable(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// ids is a flag that may be given many times.
type ids []string

func (v *ids) String() string { return strings.Join(*v, ",") }

func (v *ids) Set(s string) error {
	if s == "" {
		return fmt.Errorf("empty id")
	}
	*v = append(*v, s)
	return nil
}

// retrySummary is the answer of POST /v1/dead-letters/retry.
type retrySummary struct {
	Sent      int       `json:"sent"`
	Skipped   []outcome `json:"skipped"`
	Failed    []outcome `json:"failed"`
	Remaining int64     `json:"remaining"`
}

type outcome struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

func runDeadLettersRetry(ctx context.Context, e env, args []string) error {
	fs := flags(e, "dead-letters retry", "[--id ID ...]",
		"Sends dead letters again: those named with --id (at most 1,000), or else the oldest\n"+
			"1,000. Prints how many were sent, and each one skipped (sent_already: it went\n"+
			"meanwhile and is dropped; in_progress: another replica is sending it; not_tried:\n"+
			"SendGrid was still failing, so the call stopped) or failed (with the reason; it is\n"+
			"kept, its attempts counted). Exits 1 when any failed. Safe to run again, and\n"+
			"from several places at once: an email that went or is going is not sent again.")
	var n notificationFlags
	n.register(fs, e)
	var only ids
	fs.Var(&only, "id", "the id of a dead letter to retry (repeatable); none: the oldest 1,000")
	asJSON := fs.Bool("json", false, "print the service's JSON answer")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 {
		fs.Usage()
		return errUsage
	}
	var body []byte
	if len(only) > 0 {
		var err error
		if body, err = json.Marshal(map[string][]string{"ids": only}); err != nil {
			return err
		}
	}
	// A retry sends up to 1,000 emails, each given up to the service's
	// visibility timeout.
	var sum retrySummary
	if err := n.client(10*time.Minute, false).do(ctx, http.MethodPost, "/v1/dead-letters/retry", body, nil, &sum); err != nil {
		return err
	}
	if *asJSON {
		if err := json.NewEncoder(e.stdout).Encode(sum); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(e.stdout, "sent %d, skipped %d, failed %d; %d dead letter(s) remain\n", sum.Sent, len(sum.Skipped), len(sum.Failed), sum.Remaining)
		for _, o := range sum.Skipped {
			fmt.Fprintf(e.stdout, "skipped %s: %s\n", printable(o.ID), printable(o.Reason))
		}
		for _, o := range sum.Failed {
			fmt.Fprintf(e.stdout, "failed  %s: %s\n", printable(o.ID), printable(o.Reason))
		}
	}
	if len(sum.Failed) > 0 {
		return fmt.Errorf("dead-letters retry: %d failed", len(sum.Failed))
	}
	return nil
}
