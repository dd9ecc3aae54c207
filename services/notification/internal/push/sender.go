package push

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	webpush "github.com/SherClockHolmes/webpush-go"
)

// Outcome is how a push went, as counted by
// eventbus_notification_push_sent_total{outcome}.
type Outcome string

// Outcomes of Send.
const (
	// Sent: the push service accepted the message (2xx).
	Sent Outcome = "sent"
	// Gone: the push service answered 404 or 410, the subscription is
	// no more; the caller removes it.
	Gone Outcome = "gone"
	// Rejected: another 4xx, or a message that could not be made (too
	// large); trying again would not help.
	Rejected Outcome = "rejected"
	// Failed: 429, 5xx or no answer within the timeout, MaxAttempts
	// times.
	Failed Outcome = "failed"
)

// Urgency is the Urgency header of every push (RFC 8030 5.3): "normal"
// leaves a device on low battery alone until it charges.
const Urgency = webpush.UrgencyNormal

// Options configure a Sender.
type Options struct {
	// VAPIDPublicKey and VAPIDPrivateKey are the application server's
	// key pair, base64url (CheckVAPID).
	VAPIDPublicKey, VAPIDPrivateKey string
	// Subject is the VAPID JWT's sub: a mailto: or https: URL where the
	// push service's operators can reach the sender's.
	Subject string
	// TTL is how long the push service keeps a message for a browser that
	// is offline (the TTL header, whole seconds).
	TTL time.Duration
	// Timeout bounds one attempt: a push service that does not answer
	// within it is tried again, like a 5xx.
	Timeout time.Duration
	// MaxAttempts is how often a message is tried on 429, 5xx and no
	// answer, waiting as Retry-After says or RetryBase, 2·RetryBase, …
	// (with jitter) up to RetryMax between tries: SendGrid's policy.
	MaxAttempts         int
	RetryBase, RetryMax time.Duration
}

// Sender sends Web Push messages. It is safe for concurrent use.
type Sender struct {
	opts   Options
	client *http.Client
	// OnRetry, when set before the first Send, is called before each
	// retry, with the status (0 for no answer) and the wait, e.g. to
	// count it.
	OnRetry func(status int, wait time.Duration)
}

// NewSender returns a Sender of opts, whose keys CheckVAPID accepted.
func NewSender(opts Options) *Sender {
	return &Sender{opts: opts, client: &http.Client{
		Timeout: opts.Timeout,
		// A push service answers, it does not redirect; following one
		// would send the message (and our VAPID token) elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// Send encrypts payload for sub and sends it, with the TTL and Urgency
// headers and Topic (at most 32 base64url characters: a message still
// waiting at the push service with the same topic is replaced, so a
// repeat of a message reaches an offline browser once). It retries as
// Options say, and returns the outcome with, unless Sent, why. When ctx
// ends first it returns ctx's error and no outcome: the message may or
// may not have gone.
func (s *Sender) Send(ctx context.Context, sub Subscription, payload []byte, topic string) (Outcome, error) {
	opts := &webpush.Options{
		HTTPClient: s.client,
		// webpush-go puts "mailto:" before a subject not starting with
		// "https:".
		Subscriber:      strings.TrimPrefix(s.opts.Subject, "mailto:"),
		Topic:           topic,
		TTL:             int(s.opts.TTL / time.Second),
		Urgency:         Urgency,
		VAPIDPublicKey:  s.opts.VAPIDPublicKey,
		VAPIDPrivateKey: s.opts.VAPIDPrivateKey,
	}
	wsub := &webpush.Subscription{Endpoint: sub.Endpoint, Keys: webpush.Keys{P256dh: sub.Keys.P256dh, Auth: sub.Keys.Auth}}
	var last string
	for attempt := 1; ; attempt++ {
		resp, err := webpush.SendNotificationWithContext(ctx, payload, wsub, opts)
		var wait time.Duration
		status := 0
		switch {
		case err != nil && ctx.Err() != nil:
			return "", fmt.Errorf("push to %s: %w", sub.ID(), ctx.Err())
		case err != nil && resp == nil && !isTransport(err):
			// Made no request: the message or the keys were refused.
			return Rejected, fmt.Errorf("push to %s: %w", sub.ID(), err)
		case err != nil:
			last = err.Error()
		default:
			status = resp.StatusCode
			body := readSome(resp.Body)
			switch {
			case status >= 200 && status < 300:
				return Sent, nil
			case status == http.StatusNotFound || status == http.StatusGone:
				return Gone, fmt.Errorf("push to %s: the push service answered %d: %s", sub.ID(), status, body)
			case status == http.StatusTooManyRequests || status >= 500:
				last = fmt.Sprintf("the push service answered %d: %s", status, body)
				wait = retryAfter(resp.Header)
			default:
				return Rejected, fmt.Errorf("push to %s: the push service answered %d: %s", sub.ID(), status, body)
			}
		}
		if attempt >= s.opts.MaxAttempts {
			return Failed, fmt.Errorf("push to %s: gave up after %d attempts: %s", sub.ID(), attempt, last)
		}
		if wait == 0 {
			wait = s.opts.RetryBase << (attempt - 1)
			wait = wait/2 + rand.N(wait/2+1)
		}
		wait = min(wait, s.opts.RetryMax)
		if s.OnRetry != nil {
			s.OnRetry(status, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return "", fmt.Errorf("push to %s: %w (after %d attempts: %s)", sub.ID(), ctx.Err(), attempt, last)
		}
	}
}

// isTransport reports whether err came from the HTTP round trip (no
// answer, a timeout) rather than from making the message.
func isTransport(err error) bool {
	var ue *url.Error
	return errors.As(err, &ue)
}

// readSome reads and closes a response body, returning its first 200
// bytes for a log line.
func readSome(body io.ReadCloser) string {
	defer body.Close()
	b, _ := io.ReadAll(io.LimitReader(body, 200))
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	return string(bytes.TrimSpace(b))
}

// retryAfter reads Retry-After in seconds or as an HTTP date; 0 when absent.
func retryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// CheckVAPID checks a VAPID key pair, base64url with or without padding:
// the public key an uncompressed point of P-256 (65 bytes), the private
// key its 32-byte scalar. pubErr says what is wrong with the public key,
// privErr with the private key, or that it is not the public key's.
func CheckVAPID(public, private string) (pubErr, privErr error) {
	pub, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(public, "="))
	if err == nil {
		_, err = ecdh.P256().NewPublicKey(pub)
	}
	if err != nil {
		pubErr = errors.New("want the base64url of an uncompressed P-256 public key (65 bytes), as eventbus vapid prints")
	}
	priv, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(private, "="))
	var key *ecdh.PrivateKey
	if err == nil {
		key, err = ecdh.P256().NewPrivateKey(priv)
	}
	switch {
	case err != nil:
		privErr = errors.New("want the base64url of a P-256 private key (32 bytes), as eventbus vapid prints")
	case pubErr == nil && !bytes.Equal(key.PublicKey().Bytes(), pub):
		privErr = errors.New("not the private key of NOTIFY_VAPID_PUBLIC_KEY")
	}
	return pubErr, privErr
}
