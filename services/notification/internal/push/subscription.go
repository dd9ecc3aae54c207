// Package push sends Web Push messages (RFC 8030), encrypted (RFC 8291)
// and signed with the service's VAPID key (RFC 8292) by webpush-go, to the
// browsers' push subscriptions it keeps in Redis, and serves the routes
// that add and remove them.
package push

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Limits of a PushSubscription.
const (
	// MaxBodyBytes bounds the body of the routes: a browser's
	// PushSubscription is a few hundred bytes.
	MaxBodyBytes = 8 << 10
	// MaxEndpointBytes bounds an endpoint URL; the browsers' push services
	// hand out URLs of a few hundred bytes.
	MaxEndpointBytes = 2048
	// P256dhBytes is the size of the subscription's public key, an
	// uncompressed P-256 point.
	P256dhBytes = 65
	// AuthBytes is the size of the subscription's authentication secret.
	AuthBytes = 16
)

// ErrInvalid is wrapped by every error of ParseSubscription and
// ParseEndpoint: the input is no PushSubscription the service accepts.
var ErrInvalid = errors.New("invalid push subscription")

// Keys are a subscription's keys, base64url without padding.
type Keys struct {
	P256dh string `json:"p256dh"`
	Auth   string `json:"auth"`
}

// Subscription is a browser's PushSubscription, as its toJSON() gives it.
type Subscription struct {
	Endpoint string `json:"endpoint"`
	Keys     Keys   `json:"keys"`
}

// ID names a subscription for good, from its endpoint: the push service
// gives every subscription an endpoint of its own.
func (s Subscription) ID() string { return EndpointID(s.Endpoint) }

// EndpointID is the ID of the subscription at endpoint: 16 hex digits of
// its SHA-256, short enough for a claim's key and a log line.
func EndpointID(endpoint string) string {
	h := sha256.Sum256([]byte(endpoint))
	return hex.EncodeToString(h[:8])
}

// ParseSubscription reads a browser's PushSubscription:
//
//	{"endpoint":"https://…","expirationTime":null,"keys":{"p256dh":"…","auth":"…"}}
//
// The endpoint must be an absolute https URL of at most MaxEndpointBytes
// (http too, to a loopback address, when allowHTTP is set: a push service
// of a test or of a development machine); p256dh the base64url of an
// uncompressed point of P-256, auth of 16 bytes, with or without padding.
// The keys come back without padding. Unknown fields are refused, but
// expirationTime, which toJSON() includes, is ignored.
func ParseSubscription(body []byte, allowHTTP bool) (Subscription, error) {
	var in struct {
		Endpoint       string          `json:"endpoint"`
		ExpirationTime json.RawMessage `json:"expirationTime"`
		Keys           *Keys           `json:"keys"`
	}
	if err := decodeOne(body, &in); err != nil {
		return Subscription{}, fmt.Errorf(`%w: want {"endpoint":"https://…","keys":{"p256dh":"…","auth":"…"}}: %v`, ErrInvalid, err)
	}
	if err := checkEndpoint(in.Endpoint, allowHTTP, false); err != nil {
		return Subscription{}, err
	}
	if in.Keys == nil {
		return Subscription{}, fmt.Errorf("%w: keys are missing", ErrInvalid)
	}
	p256dh, err := decodeKey("keys.p256dh", in.Keys.P256dh, P256dhBytes)
	if err != nil {
		return Subscription{}, err
	}
	if _, err := ecdh.P256().NewPublicKey(p256dh); err != nil {
		return Subscription{}, fmt.Errorf("%w: keys.p256dh is not an uncompressed point of P-256", ErrInvalid)
	}
	auth, err := decodeKey("keys.auth", in.Keys.Auth, AuthBytes)
	if err != nil {
		return Subscription{}, err
	}
	return Subscription{Endpoint: in.Endpoint, Keys: Keys{
		P256dh: base64.RawURLEncoding.EncodeToString(p256dh),
		Auth:   base64.RawURLEncoding.EncodeToString(auth),
	}}, nil
}

// ParseEndpoint reads the body of a removal, {"endpoint":"https://…"}; a
// whole PushSubscription is accepted too, its keys ignored. The endpoint
// is checked as ParseSubscription checks it, but for its scheme: one
// stored before a change of NOTIFY_PUSH_ALLOW_HTTP can still be removed.
func ParseEndpoint(body []byte) (string, error) {
	var in struct {
		Endpoint       string          `json:"endpoint"`
		ExpirationTime json.RawMessage `json:"expirationTime"`
		Keys           json.RawMessage `json:"keys"`
	}
	if err := decodeOne(body, &in); err != nil {
		return "", fmt.Errorf(`%w: want {"endpoint":"https://…"}: %v`, ErrInvalid, err)
	}
	if err := checkEndpoint(in.Endpoint, false, true); err != nil {
		return "", err
	}
	return in.Endpoint, nil
}

// decodeOne decodes one JSON object into v, refusing unknown fields and
// anything after it.
func decodeOne(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return errors.New("the body is empty")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("want one JSON object, found more after it")
	}
	return nil
}

// checkEndpoint checks an endpoint URL, and its scheme unless anyScheme.
func checkEndpoint(endpoint string, allowHTTP, anyScheme bool) error {
	switch {
	case endpoint == "":
		return fmt.Errorf("%w: endpoint is missing", ErrInvalid)
	case len(endpoint) > MaxEndpointBytes:
		return fmt.Errorf("%w: endpoint is %d bytes; want at most %d", ErrInvalid, len(endpoint), MaxEndpointBytes)
	case !utf8.ValidString(endpoint):
		return fmt.Errorf("%w: endpoint is not valid UTF-8", ErrInvalid)
	}
	u, err := url.Parse(endpoint)
	if err != nil || !u.IsAbs() || u.Host == "" || u.User != nil || u.Fragment != "" || u.Opaque != "" {
		return fmt.Errorf("%w: endpoint is not an absolute URL without user or fragment", ErrInvalid)
	}
	switch {
	case anyScheme:
		return nil
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && allowHTTP && isLoopback(u.Hostname()):
		return nil
	case u.Scheme == "http" && allowHTTP:
		return fmt.Errorf("%w: endpoint is http, allowed only to a loopback address (NOTIFY_PUSH_ALLOW_HTTP)", ErrInvalid)
	}
	return fmt.Errorf("%w: endpoint is not https", ErrInvalid)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// decodeKey decodes a base64url key (padded or not) of want bytes.
func decodeKey(name, s string, want int) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: %s is missing", ErrInvalid, name)
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64url", ErrInvalid, name)
	}
	if len(b) != want {
		return nil, fmt.Errorf("%w: %s is %d bytes; want %d", ErrInvalid, name, len(b), want)
	}
	return b, nil
}

// Message is what a push carries, as JSON: the fields of the in-page
// notification (eventbus.v1.Notification, by their proto names), so that a
// service worker shows the same thing, and a page that receives both
// recognises them as one by notification_id.
type Message struct {
	Type           string `json:"type"` // "notification.created"
	NotificationID string `json:"notification_id"`
	UserID         string `json:"user_id"`
	Title          string `json:"title"`
	Body           string `json:"body"`
	Link           string `json:"link,omitempty"`
	CauseEventID   string `json:"cause_event_id"`
}
