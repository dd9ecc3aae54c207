// Package mailer sends email through SendGrid's v3 mail send API with the
// official sendgrid-go client, or, without an API key, only logs it.
package mailer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sendgrid/sendgrid-go"
	"github.com/sendgrid/sendgrid-go/helpers/mail"
)

// Email is one message to one recipient.
type Email struct {
	ToEmail, ToName string
	Subject         string
	Text, HTML      string
	// Key names the email for good: the event and the notification it is
	// for. It travels with the email (SendGrid custom_args "eventbus_key"),
	// so a duplicate can be recognised downstream.
	Key string
}

// Mailer sends email.
type Mailer interface {
	// Send delivers e or says why not; it may retry before it returns.
	Send(ctx context.Context, e Email) error
}

// ErrRejected is wrapped by an error that retrying will not cure (a 4xx
// other than 429).
var ErrRejected = errors.New("rejected by sendgrid")

// SendGrid sends through the v3 API.
type SendGrid struct {
	apiKey      string
	baseURL     string
	from        *mail.Email
	maxAttempts int
	base, max   time.Duration
	// OnRetry is called before each retry, e.g. to count it.
	OnRetry func(status int, wait time.Duration)
}

// NewSendGrid returns a client of the API at baseURL (https://api.sendgrid.com
// in production) that tries each email up to maxAttempts times on 429 and
// 5xx, waiting as Retry-After says or base, 2·base, … up to max.
func NewSendGrid(apiKey, baseURL, fromEmail, fromName string, maxAttempts int, base, max time.Duration) *SendGrid {
	return &SendGrid{
		apiKey: apiKey, baseURL: strings.TrimSuffix(baseURL, "/"), from: mail.NewEmail(fromName, fromEmail),
		maxAttempts: maxAttempts, base: base, max: max, OnRetry: func(int, time.Duration) {},
	}
}

// Send implements Mailer.
func (s *SendGrid) Send(ctx context.Context, e Email) error {
	m := mail.NewSingleEmail(s.from, e.Subject, mail.NewEmail(e.ToName, e.ToEmail), e.Text, e.HTML)
	if e.Key != "" {
		m.SetCustomArg("eventbus_key", e.Key)
	}
	req := sendgrid.GetRequest(s.apiKey, "/v3/mail/send", s.baseURL)
	req.Method = http.MethodPost
	req.Body = mail.GetRequestBody(m)
	var last string
	for attempt := 1; ; attempt++ {
		resp, err := sendgrid.MakeRequestWithContext(ctx, req)
		var wait time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return fmt.Errorf("send email: %w", ctx.Err())
			}
			last = err.Error()
		case resp.StatusCode >= 200 && resp.StatusCode < 300:
			return nil
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
			last = fmt.Sprintf("sendgrid answered %d: %s", resp.StatusCode, trim(resp.Body))
			wait = retryAfter(resp.Headers)
		default:
			return fmt.Errorf("%w: %d: %s", ErrRejected, resp.StatusCode, trim(resp.Body))
		}
		if attempt >= s.maxAttempts {
			return fmt.Errorf("send email: gave up after %d attempts: %s", attempt, last)
		}
		if wait == 0 {
			// Exponential backoff with jitter, so replicas do not retry in step.
			wait = s.base << (attempt - 1)
			wait = wait/2 + rand.N(wait/2+1)
		}
		wait = min(wait, s.max)
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		s.OnRetry(status, wait)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return fmt.Errorf("send email: %w (after %d attempts: %s)", ctx.Err(), attempt, last)
		}
	}
}

// retryAfter reads Retry-After in seconds or as an HTTP date; 0 when absent.
func retryAfter(h map[string][]string) time.Duration {
	v := http.Header(h).Get("Retry-After")
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

func trim(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// DryRun shows every email instead of sending it: as a log record, or,
// for a person at a terminal, as the email would read.
type DryRun struct {
	Log *slog.Logger
	// Out, when not nil, takes each email as it would read (From, To,
	// Subject, then the text), in one Write, instead of a log record.
	Out io.Writer
	// FromEmail and FromName are the sender the email would have.
	FromEmail, FromName string
}

// Send implements Mailer.
func (d DryRun) Send(ctx context.Context, e Email) error {
	if d.Out == nil {
		d.Log.InfoContext(ctx, "dry-run: would send email", "to", e.ToEmail, "subject", e.Subject, "key", e.Key, "text", e.Text)
		return nil
	}
	var b strings.Builder
	b.WriteString("─── dry-run email, not sent (no SENDGRID_API_KEY) ───\n")
	fmt.Fprintf(&b, "From:    %s\n", address(d.FromName, d.FromEmail))
	fmt.Fprintf(&b, "To:      %s\n", address(e.ToName, e.ToEmail))
	fmt.Fprintf(&b, "Subject: %s\n\n", e.Subject)
	b.WriteString(strings.TrimRight(e.Text, "\n"))
	b.WriteString("\n")
	if e.HTML != "" {
		b.WriteString("(an HTML version goes with it)\n")
	}
	b.WriteString("───\n")
	if _, err := io.WriteString(d.Out, b.String()); err != nil {
		// The email is shown, not sent: failing to show it is no reason to
		// send it again.
		d.Log.WarnContext(ctx, "show dry-run email", "key", e.Key, "error", err)
	}
	return nil
}

// address is name <email>, or email alone without a name.
func address(name, email string) string {
	if name == "" {
		return email
	}
	return name + " <" + email + ">"
}
