// Package token issues and verifies the JWTs that browsers present to the
// edge, with the user id in "sub", an expiry in "exp" and the patterns the
// user may subscribe to in "channels": HS256 ones signed with a secret
// (Issue signs those), and an identity provider's RS256, ES256 and EdDSA
// ones signed with the keys of its JWKS.
package token

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	// Publish are the patterns of the channels the holder may publish to
	// (MQTT PUBLISH); none without it.
	Publish []string `json:"publish,omitempty"`
	// Except are patterns whose channels the holder is never given, though
	// a pattern of Channels covers them: a subscription they cover whole
	// is refused, and a wider one is not given their events. The holder's
	// own notify:user:<sub> is never excepted. The demo's tokens grant "*"
	// except "notify:*", so that no visitor sees another's notifications.
	Except []string `json:"except,omitempty"`
	jwt.RegisteredClaims
}

// MaxBytes is the longest token verified: longer ones are refused before
// any parsing (a token of a few grants is well under 1 KiB).
const MaxBytes = 8 << 10

// ErrTooLong is wrapped, with ErrInvalid, by Verify's error for a token
// longer than MaxBytes.
var ErrTooLong = errors.New("longer than 8 KiB")

// Own is the channel of the user's own notifications, which every token
// grants its subject.
func Own(sub string) string { return "notify:user:" + sub }

// Withholds reports whether an event on ch is kept from a holder of c
// although a pattern of c's Channels covers it: ch matches one of
// c.Except and is not the holder's own notifications.
func (c *Claims) Withholds(ch string) bool {
	return Withheld(c.Subject, c.Except, ch)
}

// Withheld is Claims.Withholds for a subject and its Except patterns, for
// callers that keep only those.
func Withheld(sub string, except []string, ch string) bool {
	if len(except) == 0 || ch == Own(sub) {
		return false
	}
	for _, p := range except {
		if channel.Match(p, ch) {
			return true
		}
	}
	return false
}

// MinSecretBytes is the shortest HS256 secret the edge accepts, and so the
// shortest Issue signs with.
const MinSecretBytes = 16

// Issue signs a token for user sub, allowed channels, valid for ttl from
// now, with a random id (jti) it can be revoked by.
func Issue(secret []byte, sub string, channels []string, ttl time.Duration, now time.Time) (string, error) {
	return IssueClaims(secret, Claims{Channels: channels, RegisteredClaims: jwt.RegisteredClaims{Subject: sub}}, ttl, now)
}

// IssueClaims is Issue for claims of any kind: c's subject, channels and
// publish patterns, with its id, issue time and expiry set here.
func IssueClaims(secret []byte, c Claims, ttl time.Duration, now time.Time) (string, error) {
	if len(secret) < MinSecretBytes {
		return "", fmt.Errorf("issue token: the secret has %d bytes; the edge accepts %d or more", len(secret), MinSecretBytes)
	}
	for _, p := range slices.Concat(c.Channels, c.Publish, c.Except) {
		if err := channel.ValidatePattern(p); err != nil {
			return "", fmt.Errorf("issue token: %w", err)
		}
	}
	c.ID = rand.Text()
	c.IssuedAt = jwt.NewNumericDate(now)
	c.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// Verifier checks client tokens: HS256 ones signed with a secret, and an
// identity provider's RS256, ES256 and EdDSA ones signed with keys from its
// JWKS, either or both. The algorithm a token names decides which keys
// check it, never the other: HS256 only the secret, the others only the
// JWKS; "none" and any other algorithm nothing. A Verifier is safe for
// concurrent use.
type Verifier struct {
	secret []byte
	jwks   *jwks
	parser *jwt.Parser

	issuer, audience, channelsClaim string // of JWKS tokens
}

// Options configure a Verifier; Secret, JWKS or both are set.
type Options struct {
	// Secret verifies HS256 tokens in eventbus's own form, as Issue signs
	// them: their patterns in "channels", no iss or aud checked. Nil
	// refuses HS256 tokens.
	Secret []byte
	// JWKS verifies the tokens of an identity provider. Nil refuses RS256,
	// ES256 and EdDSA tokens.
	JWKS *JWKSOptions
	// Logger hears about JWKS fetches that failed; nil discards.
	Logger *slog.Logger
	// Now is the clock of expiry checks and of JWKS fetch limits; nil is
	// time.Now.
	Now func() time.Time
}

// NewVerifier returns a Verifier for HS256 tokens signed with secret.
func NewVerifier(secret []byte) *Verifier {
	v, _ := newVerifier(secret, nil, time.Now)
	return v
}

// New returns a Verifier as o says. With a JWKS it fetches the JWKS before
// it returns, and again every o.JWKS.Refresh until ctx ends; a JWKS that
// cannot be fetched is not an error (see JWKSOptions): New fails only on
// options that can never work.
func New(ctx context.Context, o Options) (*Verifier, error) {
	if o.Secret == nil && o.JWKS == nil {
		return nil, errors.New("token verifier: neither a secret nor a JWKS to check tokens with")
	}
	if o.Secret != nil && len(o.Secret) < MinSecretBytes {
		return nil, fmt.Errorf("token verifier: the secret has %d bytes, want %d or more", len(o.Secret), MinSecretBytes)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var j *jwks
	if o.JWKS != nil {
		if o.JWKS.ChannelsClaim == "" {
			o.JWKS.ChannelsClaim = DefaultChannelsClaim
		}
		if err := CheckChannelsClaim(o.JWKS.ChannelsClaim); err != nil {
			return nil, fmt.Errorf("token verifier: channels claim: %w", err)
		}
		var err error
		if j, err = newJWKS(ctx, *o.JWKS, o.Now, o.Logger); err != nil {
			return nil, fmt.Errorf("token verifier: %w", err)
		}
	}
	v, methods := newVerifier(o.Secret, j, o.Now)
	if o.JWKS != nil {
		v.issuer, v.audience, v.channelsClaim = o.JWKS.Issuer, o.JWKS.Audience, o.JWKS.ChannelsClaim
	}
	o.Logger.Debug("token verifier", "algorithms", methods)
	return v, nil
}

func newVerifier(secret []byte, j *jwks, now func() time.Time) (*Verifier, []string) {
	var methods []string
	if secret != nil {
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if j != nil {
		methods = append(methods, jwksAlgorithms...)
	}
	return &Verifier{
		secret: secret,
		jwks:   j,
		parser: jwt.NewParser(jwt.WithValidMethods(methods), jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(), jwt.WithLeeway(5*time.Second), jwt.WithTimeFunc(now)),
		channelsClaim: DefaultChannelsClaim,
	}, methods
}

// key picks the key set by the algorithm t names; the parser has already
// refused algorithms that have no key set here.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	switch alg := t.Method.Alg(); {
	case alg == jwt.SigningMethodHS256.Alg() && v.secret != nil:
		return v.secret, nil
	case slices.Contains(jwksAlgorithms, alg) && v.jwks != nil:
		return v.jwks.key(t)
	default:
		return nil, fmt.Errorf("algorithm %s is not accepted", alg)
	}
}

// Verify checks tok and returns its claims. Errors wrap ErrInvalid with
// the reason in words a client can act on. Verifying a token whose kid
// the JWKS does not hold may fetch the JWKS, for JWKSOptions.Timeout at
// most.
func (v *Verifier) Verify(tok string) (*Claims, error) {
	if len(tok) > MaxBytes {
		return nil, fmt.Errorf("%w: %w (%d bytes, at most %d)", ErrInvalid, ErrTooLong, len(tok), MaxBytes)
	}
	var c Claims
	t, err := v.parser.ParseWithClaims(tok, &c.RegisteredClaims, v.key)
	switch {
	case err == nil:
	case errors.Is(err, errNoKeyID), errors.Is(err, errUnknownKey), errors.Is(err, errNoKeys):
		return nil, fmt.Errorf("%w: %w", ErrInvalid, keyError(err))
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
	fromJWKS := t.Method.Alg() != jwt.SigningMethodHS256.Alg()
	claim := DefaultChannelsClaim
	if fromJWKS {
		claim = v.channelsClaim
	}
	names := []string{claim, PublishClaim, ExceptClaim}
	lists, err := payloadClaims(tok, names...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	c.Channels, c.Publish, c.Except = lists[0], lists[1], lists[2]
	if c.Subject == "" {
		return nil, fmt.Errorf("%w: no subject (sub)", ErrInvalid)
	}
	if channel.Validate(c.Subject) != nil || strings.ContainsRune(c.Subject, ':') {
		return nil, fmt.Errorf("%w: subject %q is not one channel token ([a-z0-9_-]+)", ErrInvalid, c.Subject)
	}
	if fromJWKS && v.issuer != "" && c.Issuer != v.issuer {
		return nil, fmt.Errorf("%w: wrong issuer (iss)", ErrInvalid)
	}
	if fromJWKS && v.audience != "" && !slices.Contains(c.Audience, v.audience) {
		return nil, fmt.Errorf("%w: wrong audience (aud)", ErrInvalid)
	}
	for i, ps := range lists {
		for _, p := range ps {
			if err := channel.ValidatePattern(p); err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, names[i], err)
			}
		}
	}
	return &c, nil
}

// keyError returns the sentinel of jwks.key that err carries.
func keyError(err error) error {
	for _, e := range []error{errNoKeyID, errUnknownKey, errNoKeys} {
		if errors.Is(err, e) {
			return e
		}
	}
	return err
}

// PublishClaim names the claim holding the patterns a token may publish
// to, in eventbus's tokens and the identity provider's alike.
const PublishClaim = "publish"

// ExceptClaim names the claim holding the patterns a token's channels
// leave out (Claims.Except).
const ExceptClaim = "except"

// payloadClaims reads the claims of tok, already verified, that the JWT
// library reads leniently or not at all. The time claims must be JSON
// numbers, as RFC 7519 says: the library also takes a number in a string
// ("exp":"9999999999"), which other verifiers refuse. It returns the
// patterns of each claim named in lists, a JSON array of strings or one
// space-separated string; null or absent is none.
func payloadClaims(tok string, lists ...string) ([][]string, error) {
	parts := strings.Split(tok, ".")
	payload, err := jwt.NewParser().DecodeSegment(parts[1])
	if err != nil {
		return nil, errors.New("malformed")
	}
	var claims map[string]json.RawMessage
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, errors.New("malformed")
	}
	for _, name := range []string{"exp", "iat", "nbf"} {
		v, ok := claims[name]
		if ok && (len(v) == 0 || v[0] != '-' && (v[0] < '0' || v[0] > '9')) {
			return nil, fmt.Errorf("%s is %s, want a number of seconds", name, v)
		}
	}
	out := make([][]string, len(lists))
	for i, name := range lists {
		raw, ok := claims[name]
		if !ok || string(raw) == "null" {
			continue
		}
		var list []string
		if err := json.Unmarshal(raw, &list); err == nil {
			out[i] = list
			continue
		}
		var spaced string
		if err := json.Unmarshal(raw, &spaced); err != nil {
			return nil, fmt.Errorf("%s: want an array of strings or one space-separated string", name)
		}
		out[i] = strings.Fields(spaced)
	}
	return out, nil
}

// FromAuthorization returns the token of an Authorization header value
// "Bearer <token>", the scheme in any case (RFC 9110 §11.1: auth schemes
// are case-insensitive), and false for any other scheme or an empty token.
func FromAuthorization(v string) (string, bool) {
	scheme, tok, ok := strings.Cut(v, " ")
	tok = strings.TrimLeft(tok, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return tok, true
}
