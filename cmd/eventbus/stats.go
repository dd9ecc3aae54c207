package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"text/tabwriter"
)

func runStats(ctx context.Context, e env, args []string) error {
	fs := flags(e, "stats", "",
		"Shows the channels with subscribers and the pattern count, as Redis reports them, and each\n"+
			"recorded namespace with its consumer groups: their members, pending events and lag.")
	var c common
	c.register(fs, e)
	asJSON := fs.Bool("json", false, "print JSON")
	if pos, err := parse(fs, args); err != nil {
		return err
	} else if len(pos) != 0 {
		fs.Usage()
		return errUsage
	}
	var st struct {
		Channels   []string         `json:"channels"`
		NumSub     map[string]int64 `json:"numsub"`
		NumPat     int64            `json:"numpat"`
		Namespaces []struct {
			Namespace string `json:"namespace"`
			Events    int64  `json:"events"`
			Groups    []struct {
				Name               string `json:"name"`
				Consumers, Pending int64
				Lag                int64 `json:"lag"`
			} `json:"groups"`
		} `json:"namespaces"`
	}
	if err := newClient(c).do(ctx, http.MethodGet, "/v1/stats", nil, nil, &st); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(st)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHANNEL\tSUBSCRIBERS")
	for _, ch := range st.Channels {
		fmt.Fprintf(tw, "%s\t%d\n", ch, st.NumSub[ch])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(e.stdout, "\n%d channel(s) with subscribers; %d pattern subscription(s) on the server\n", len(st.Channels), st.NumPat); err != nil {
		return err
	}
	if len(st.Namespaces) == 0 {
		return nil
	}
	fmt.Fprintln(e.stdout)
	fmt.Fprintln(tw, "NAMESPACE\tEVENTS KEPT\tCONSUMER GROUP\tMEMBERS\tPENDING\tLAG")
	for _, n := range st.Namespaces {
		if len(n.Groups) == 0 {
			fmt.Fprintf(tw, "%s\t%d\t-\t\t\t\n", n.Namespace, n.Events)
		}
		for _, g := range n.Groups {
			lag := fmt.Sprint(g.Lag)
			if g.Lag < 0 {
				lag = "?"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\n", n.Namespace, n.Events, g.Name, g.Consumers, g.Pending, lag)
		}
	}
	return tw.Flush()
}
