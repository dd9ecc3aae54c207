package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
)

func runPublish(ctx context.Context, e env, args []string) error {
	fs := flags(e, "publish", "TYPE [JSON]",
		"Publishes an event of TYPE (e.g. order.placed) whose data is JSON (none if left out),\n"+
			"and prints the reply: the event id, its channel, the offset it is recorded at (which\n"+
			"consumer groups and history read), and how many live subscriber connections received it.")
	var c common
	c.register(fs, e)
	subject := fs.String("subject", "", "what the event is about, e.g. an order id")
	idem := fs.String("idempotency-key", "", "publish at most once per key within 24 h")
	asJSON := fs.Bool("json", false, "print the reply as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) == 0:
		fmt.Fprintln(e.stderr, "eventbus publish: missing TYPE, the event type, such as order.placed")
		fs.Usage()
		return errUsage
	case len(pos) > 2:
		fmt.Fprintf(e.stderr, "eventbus publish: %d arguments; want TYPE and at most one JSON (quote it)\n", len(pos))
		fs.Usage()
		return errUsage
	}
	event := map[string]any{"type": pos[0], "subject": *subject}
	if len(pos) == 2 {
		data := json.RawMessage(pos[1])
		if !json.Valid(data) {
			return fmt.Errorf("JSON argument %q is not valid JSON", pos[1])
		}
		event["data"] = data
	}
	body, err := json.Marshal(event)
	if err != nil {
		return err
	}
	header := http.Header{}
	if *idem != "" {
		header.Set("Idempotency-Key", *idem)
	}
	var reply struct {
		ID        string `json:"id"`
		Channel   string `json:"channel"`
		Offset    string `json:"offset,omitempty"`
		Epoch     string `json:"epoch,omitempty"`
		Receivers int64  `json:"receivers"`
	}
	if err := newClient(c).do(ctx, http.MethodPost, "/v1/events", body, header, &reply); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(reply)
	}
	if reply.Offset != "" {
		// Receivers counts live pub/sub connections only; the record is
		// what consumer groups, history and resuming clients read, and it
		// has the event whether or not anyone is listening now.
		fmt.Fprintf(e.stdout, "published %s on %s at offset %s (epoch %s): recorded, for consumer groups and history to read; "+
			"delivered live to %d subscriber connection(s)\n", reply.ID, reply.Channel, reply.Offset, reply.Epoch, reply.Receivers)
		return nil
	}
	fmt.Fprintf(e.stdout, "published %s on %s: not recorded (the API keeps no history), delivered live to %d subscriber connection(s)\n",
		reply.ID, reply.Channel, reply.Receivers)
	return nil
}
