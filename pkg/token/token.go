// Package token issues and verifies the JWTs that browsers present to the
// edge: HS256, with the user id in "sub", an expiry in "exp" and the
// patterns the user may subscribe to in "channels".
package token

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// ErrInvalid is wrapped by every verification failure; the message says
// which (expired, malformed, bad signature, missing claim).
var ErrInvalid = errors.New("invalid token")

// Claims are what a token grants.
type Claims struct {
	// Channels are the patterns the holder may subscribe to, besides its
	// own notify:user:<sub>.
	Channels []string `json:"channels,omitempty"`
	jwt.RegisteredClaims
}

// MinSecretBytes is the shortest HS256 secret the edge accepts, and so the
// shortest Issue signs with.
const MinSecretBytes = 16

// Issue signs a token for user sub, allowed channels, valid for ttl from
// now, with a random id (jti) it can be revoked by.
func Issue(secret []byte, sub string, channels []string, ttl time.Duration, now time.Time) (string, error) {
	if len(secret) < MinSecretBytes {
		return "", fmt.Errorf("issue token: the secret has %d bytes; the edge accepts %d or more", len(secret), MinSecretBytes)
	}
	for _, p := range channels {
		if err := channel.ValidatePattern(p); err != nil {
			return "", fmt.Errorf("issue token: %w", err)
		}
	}
	c := Claims{
		Channels: channels,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sub,
			ID:        rand.Text(),
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// Verifier checks tokens signed with one secret.
type Verifier struct {
	secret []byte
	parser *jwt.Parser
}

// NewVerifier returns a Verifier for HS256 tokens signed with secret. Only
// HS256 is accepted, so a token cannot pick a weaker algorithm ("none").
func NewVerifier(secret []byte) *Verifier {
	return &Verifier{
		secret: secret,
		parser: jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(), jwt.WithLeeway(5*time.Second)),
	}
}

// Verify checks tok and returns its claims. Errors wrap ErrInvalid with
// the reason in words a client can act on.
func (v *Verifier) Verify(tok string) (*Claims, error) {
	var c Claims
	_, err := v.parser.ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return v.secret, nil })
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, fmt.Errorf("%w: expired", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return nil, fmt.Errorf("%w: no expiry (exp)", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return nil, fmt.Errorf("%w: signature does not verify", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return nil, fmt.Errorf("%w: not valid yet", ErrInvalid)
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return nil, fmt.Errorf("%w: issued in the future (iat)", ErrInvalid)
	default:
		return nil, fmt.Errorf("%w: malformed", ErrInvalid)
	}
	if err := numericDates(tok); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if c.Subject == "" {
		return nil, fmt.Errorf("%w: no subject (sub)", ErrInvalid)
	}
	if channel.Validate(c.Subject) != nil || strings.ContainsRune(c.Subject, ':') {
		return nil, fmt.Errorf("%w: subject %q is not one channel token ([a-z0-9_-]+)", ErrInvalid, c.Subject)
	}
	for _, p := range c.Channels {
		if err := channel.ValidatePattern(p); err != nil {
			return nil, fmt.Errorf("%w: channels: %w", ErrInvalid, err)
		}
	}
	return &c, nil
}

// numericDates checks that the time claims of tok, already verified, are
// JSON numbers as RFC 7519 says: the JWT library also takes a number in a
// string ("exp":"9999999999"), which other verifiers refuse.
func numericDates(tok string) error {
	parts := strings.Split(tok, ".")
	payload, err := jwt.NewParser().DecodeSegment(parts[1])
	if err != nil {
		return errors.New("malformed")
	}
	var claims map[string]json.RawMessage
	if err := json.Unmarshal(payload, &claims); err != nil {
		return errors.New("malformed")
	}
	for _, name := range []string{"exp", "iat", "nbf"} {
		v, ok := claims[name]
		if ok && (len(v) == 0 || v[0] != '-' && (v[0] < '0' || v[0] > '9')) {
			return fmt.Errorf("%s is %s, want a number of seconds", name, v)
		}
	}
	return nil
}
