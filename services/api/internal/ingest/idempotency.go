package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Errors of Idempotency.Do that the caller reports to its client.
var (
	// ErrInProgress: a request with the same key is still running.
	ErrInProgress = errors.New("a request with this idempotency key is in progress")
	// ErrKeyReused: the key was first used for a different request.
	ErrKeyReused = errors.New("this idempotency key was used for a different request")
)

// MaxKeyLen is the longest idempotency key accepted.
const MaxKeyLen = 255

// Idempotency remembers replies by key in Redis, so that a retried request
// publishes nothing twice.
type Idempotency struct {
	rdb     redis.UniversalClient
	prefix  string
	ttl     time.Duration
	pending time.Duration
	timeout time.Duration
}

// NewIdempotency keeps replies for ttl under keys starting with prefix,
// giving Redis at most timeout for each command.
func NewIdempotency(rdb redis.UniversalClient, prefix string, ttl, timeout time.Duration) *Idempotency {
	return &Idempotency{rdb: rdb, prefix: prefix + "idempotency:", ttl: ttl, pending: time.Minute, timeout: timeout}
}

type record struct {
	Done        bool   `json:"done"`
	Fingerprint []byte `json:"fp"`
	Reply       []byte `json:"reply,omitempty"`
}

// ValidKey reports what is wrong with key, or nil.
func ValidKey(key string) error {
	if len(key) == 0 || len(key) > MaxKeyLen {
		return fmt.Errorf("idempotency key: want 1 to %d characters, got %d", MaxKeyLen, len(key))
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return fmt.Errorf("idempotency key: want printable ASCII without spaces, got byte %#x at %d", key[i], i)
		}
	}
	return nil
}

// Do runs fn once per key within the retention time. The first call claims
// the key, runs fn and stores its reply; a later call with the same key and
// request returns that reply with replayed true and runs nothing. request
// identifies what was asked (e.g. method, path and body): the same key with
// another request is ErrKeyReused, and a call while the first still runs is
// ErrInProgress.
//
// Once the key is claimed, Do runs to its end whatever becomes of ctx (each
// Redis command bounded by the timeout): a caller that hangs up mid-request
// used to leave its event published and its key released, so that the
// retry published it again. When fn fails, the claim is released so a retry
// can run, unless the error wraps ErrOutcomeUnknown: then the event may
// have gone out, and the claim stays until it expires (a minute), answering
// retries with ErrInProgress rather than publishing twice.
func (i *Idempotency) Do(ctx context.Context, key string, request []byte, fn func() ([]byte, error)) (reply []byte, replayed bool, err error) {
	if err := ValidKey(key); err != nil {
		return nil, false, err
	}
	if ctx.Err() != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrCallerGone, context.Cause(ctx))
	}
	ctx = context.WithoutCancel(ctx)
	fp := sha256.Sum256(request)
	k := i.prefix + key
	claim, err := json.Marshal(record{Fingerprint: fp[:]})
	if err != nil {
		return nil, false, err
	}
	cctx, cancel := context.WithTimeout(ctx, i.timeout)
	ok, err := i.rdb.SetNX(cctx, k, claim, i.pending).Result()
	cancel()
	if err != nil {
		return nil, false, fmt.Errorf("%w: claim idempotency key: %w", ErrUnavailable, err)
	}
	if !ok {
		return i.replay(ctx, k, fp[:])
	}
	reply, err = fn()
	if err != nil {
		if !errors.Is(err, ErrOutcomeUnknown) {
			// Release the claim so the client's retry can run. If the
			// delete fails, the claim expires after i.pending.
			cctx, cancel := context.WithTimeout(ctx, i.timeout)
			_ = i.rdb.Del(cctx, k).Err()
			cancel()
		}
		return nil, false, err
	}
	// The event is out whether or not remembering the reply works. If the
	// write fails, the claim still refuses retries until it expires, so
	// nothing is published twice within that time.
	done, _ := json.Marshal(record{Done: true, Fingerprint: fp[:], Reply: reply})
	cctx, cancel = context.WithTimeout(ctx, i.timeout)
	_ = i.rdb.Set(cctx, k, done, i.ttl).Err()
	cancel()
	return reply, false, nil
}

func (i *Idempotency) replay(ctx context.Context, k string, fp []byte) ([]byte, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, i.timeout)
	defer cancel()
	raw, err := i.rdb.Get(ctx, k).Bytes()
	if errors.Is(err, redis.Nil) {
		// The first request failed and released its claim between our
		// SETNX and GET: the client raced its own retry.
		return nil, false, ErrInProgress
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: read idempotency key: %w", ErrUnavailable, err)
	}
	var rec record
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, false, fmt.Errorf("decode idempotency record: %w", err)
	}
	if !bytes.Equal(rec.Fingerprint, fp) {
		return nil, false, ErrKeyReused
	}
	if !rec.Done {
		return nil, false, ErrInProgress
	}
	return rec.Reply, true, nil
}
