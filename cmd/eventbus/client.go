package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// client is a small JSON client of the API.
type client struct {
	base    string
	apiKey  string
	http    *http.Client
	connect time.Duration // for messages
}

func newClient(c common) *client {
	return &client{base: strings.TrimSuffix(c.api, "/"), apiKey: c.apiKey,
		http: httpClient(30*time.Second, c.connectTimeout, true), connect: c.connectTimeout}
}

// httpClient returns a client whose requests end with an error after total
// (0: no limit), or after connect when the service has not connected by
// then, nor, if headers is true, sent the status line of its reply: a
// silent listener is reported quickly. headers is false for requests the
// service answers only when their work is done.
func httpClient(total, connect time.Duration, headers bool) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = connect
	if headers {
		t.ResponseHeaderTimeout = connect
	}
	return &http.Client{Timeout: total, Transport: t}
}

// describe adds to err of a request to url what a timeout means.
func describe(err error, connect time.Duration) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w (no answer within --connect-timeout %v: is the service running at that address?)", err, connect)
	}
	return err
}

// do sends a request and decodes a 2xx JSON reply into out; any other
// reply becomes an error carrying the API's own message.
func (c *client) do(ctx context.Context, method, path string, body []byte, header http.Header, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header = header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return describe(err, c.connect) // *url.Error: names the method and URL
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read reply of %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct{ Code, Message string }
		}
		if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s %s: %d %s: %s", method, path, resp.StatusCode, e.Error.Code, e.Error.Message)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decode reply of %s %s: %w", method, path, err)
	}
	return nil
}
