// Package deadletter keeps the emails that finally failed, which are only
// emails that were never sent, and sends them again safely: a retry takes
// the same claim as a first send, so it never sends an email that went or
// that another sender is sending, however many retries run at once, and it
// removes a dead letter only once its email went, so none is lost.
package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/eventbus-suite/eventbus/services/notification/internal/claims"
	"github.com/eventbus-suite/eventbus/services/notification/internal/mailer"
)

// Letter is an email that finally failed, with everything needed to send
// it again exactly as it was first tried.
type Letter struct {
	// ID names the dead letter; it is Key, so every dead letter of one
	// email has the same ID.
	ID      string `json:"id"`
	EventID string `json:"event_id"`
	Type    string `json:"type"`
	Name    string `json:"notification"`
	UserID  string `json:"user_id"`
	To      string `json:"to"`
	ToName  string `json:"to_name"`
	Subject string `json:"subject"`
	Text    string `json:"text,omitempty"`
	HTML    string `json:"html,omitempty"`
	// Key is "<event id>/<notification>", the custom_args.eventbus_key
	// the email carries on every attempt.
	Key string `json:"key"`
	// Attempts counts the times the email finally failed: 1 when it was
	// dead-lettered, one more for each failed retry.
	Attempts int       `json:"attempts"`
	Reason   string    `json:"reason"`
	FailedAt time.Time `json:"failed_at"`
}

// EmailKey is the key of notification name of event eventID, which names
// its email for good.
func EmailKey(eventID, name string) string { return eventID + "/" + name }

// decode reads a dead letter from the list. One written before dead
// letters had an id is given the id it would have had.
func decode(raw string) (Letter, error) {
	var l Letter
	if err := json.Unmarshal([]byte(raw), &l); err != nil {
		return Letter{}, err
	}
	if l.Key == "" {
		l.Key = EmailKey(l.EventID, l.Name)
	}
	if l.ID == "" {
		l.ID = l.Key
	}
	return l, nil
}

// ListKey is the Redis list of dead letters under prefix, newest first,
// each a JSON Letter.
func ListKey(prefix string) string { return prefix + "notification:dead_letters" }

// MaxPerCall bounds the dead letters one List returns and one Retry
// handles, and the ids one Retry takes.
const MaxPerCall = 1000

// workers are the emails one Retry sends at once.
const workers = 4

// Options configure a Store.
type Options struct {
	Redis redis.UniversalClient
	// Prefix is put before every Redis key, like the bus's channel prefix.
	Prefix string
	// Claims are the ones a first send takes. A retry holds the email's
	// lease as a first send does, kept alive by whoever extends the
	// store's leases (the notifier's heartbeat, Claims.ExtendHeld).
	Claims *claims.Store
	Mailer mailer.Mailer
	// SendTimeout bounds one email's send, retries included.
	SendTimeout time.Duration
	// ClaimTTL is how long a sent or dead-lettered email is remembered.
	ClaimTTL time.Duration
	Logger   *slog.Logger
}

// Store is the list of dead letters. It is safe for concurrent use, and
// any number of Stores (replicas) may work on one list at once.
type Store struct {
	Options
	key     string
	retries *prometheus.CounterVec
}

// Results of a retry, as reported and counted.
const (
	ResultSent        = "sent"
	ResultSentAlready = "sent_already" // the email went already; the dead letter is removed
	ResultInProgress  = "in_progress"  // another sender holds its claim; the dead letter stays
	ResultNotTried    = "not_tried"    // the call stopped before it (SendGrid still failing, or the caller left)
	ResultNotFound    = "not_found"    // no dead letter has the id
	ResultFailed      = "failed"       // the send failed again; the dead letter stays, attempts counted
)

// New returns the dead letters of opts.Prefix, registering the retry
// counter on reg.
func New(opts Options, reg prometheus.Registerer) *Store {
	s := &Store{
		Options: opts, key: ListKey(opts.Prefix),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventbus_notification_dead_letter_retries_total",
			Help: "Dead letters retried, by result: sent, sent_already, in_progress, not_tried, not_found, failed."},
			[]string{"result"}),
	}
	for _, r := range []string{ResultSent, ResultSentAlready, ResultInProgress, ResultNotTried, ResultNotFound, ResultFailed} {
		s.retries.WithLabelValues(r)
	}
	reg.MustRegister(s.retries)
	return s
}

// Push adds l to the dead letters, for a sender that holds the lease on
// its email (claims Take of l.EventID and l.Name): in one step it pushes l
// and records the claim as dead-lettered, so that a redelivery of the event
// does not send the email, and no other sender dead-letters it again; only
// Retry sends it. When Push fails, l is not kept; its error wraps
// claims.ErrLost when the lease had run out (another sender may hold the
// email now), else Redis failed and the lease is still the caller's for a
// while.
func (s *Store) Push(ctx context.Context, l Letter) error {
	raw, err := json.Marshal(l)
	if err != nil {
		return err
	}
	if err := s.Claims.DeadLetter(ctx, l.EventID, l.Name, s.ClaimTTL, s.key, string(raw), ""); err != nil {
		return fmt.Errorf("write dead letter %s: %w", l.ID, err)
	}
	return nil
}

// List returns the newest n dead letters (at most MaxPerCall), newest
// first, without their bodies, and how many there are in all. An entry
// that is not a dead letter is logged and left out.
func (s *Store) List(ctx context.Context, n int) ([]Letter, int64, error) {
	n = min(max(n, 0), MaxPerCall)
	var lr *redis.StringSliceCmd
	var ll *redis.IntCmd
	_, err := s.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		lr = p.LRange(ctx, s.key, 0, int64(n)-1)
		ll = p.LLen(ctx, s.key)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read dead letters: %w", err)
	}
	out := make([]Letter, 0, len(lr.Val()))
	for _, raw := range lr.Val() {
		l, err := decode(raw)
		if err != nil {
			s.Logger.Warn("dead-letter list holds an entry that is not a dead letter; left alone", "error", err, "entry", truncate(raw))
			continue
		}
		l.Text, l.HTML = "", ""
		out = append(out, l)
	}
	return out, ll.Val(), nil
}

// Outcome is what a retry did with one dead letter.
type Outcome struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Summary is what one Retry did.
type Summary struct {
	// Sent counts the emails SendGrid accepted.
	Sent int `json:"sent"`
	// Skipped were not sent and need not or cannot be now: sent_already
	// (removed), in_progress and not_tried (kept).
	Skipped []Outcome `json:"skipped"`
	// Failed were tried and failed again (the reason is SendGrid's, and
	// the dead letter is kept with attempts counted), could not be tried
	// (no_body, unavailable), or were not found (not_found).
	Failed []Outcome `json:"failed"`
	// Remaining is how many dead letters the list holds afterwards.
	Remaining int64 `json:"remaining"`
}

// entry is a dead letter as read from the list: raw is its exact JSON,
// which removing it needs.
type entry struct {
	raw    string
	letter Letter
}

// Retry sends again the dead letters whose ids are given, or with none
// the oldest MaxPerCall, and reports what it did with each.
//
// For each dead letter it takes the email's claim, as a first send does:
// if the claim says sent, the email went already and the dead letter is
// removed; if another sender holds it, the dead letter is left; else the
// email is sent with its key, recorded as sent, and then the dead letter
// removed, or, should the send fail, the dead letter is replaced by one
// with attempts+1 and the new reason, and the claim set back to
// dead-lettered, in one script. Sends run a few at a time; once one fails for a reason
// SendGrid may cure (429, 5xx, no answer), no more are started, as SendGrid
// is still failing: the rest are reported not_tried and kept. Sends under
// way outlive ctx (by SendTimeout at most), so that a caller leaving
// mid-send cannot turn an email SendGrid accepted into a failure; the
// ones not started when ctx ends are not_tried.
//
// It returns an error, having changed nothing, only when the list cannot
// be read.
func (s *Store) Retry(ctx context.Context, ids []string) (Summary, error) {
	var entries []entry
	var missing []string
	var err error
	if len(ids) == 0 {
		entries, err = s.oldest(ctx)
	} else {
		entries, missing, err = s.find(ctx, ids)
	}
	if err != nil {
		return Summary{}, err
	}
	sum := Summary{Skipped: []Outcome{}, Failed: []Outcome{}}
	for _, id := range missing {
		sum.Failed = append(sum.Failed, Outcome{ID: id, Reason: ResultNotFound})
		s.retries.WithLabelValues(ResultNotFound).Inc()
	}

	// One job per id, so that dead letters of one email are tried one
	// after another, not against each other's claim.
	var order []string
	jobs := map[string][]entry{}
	for _, e := range entries {
		if _, ok := jobs[e.letter.ID]; !ok {
			order = append(order, e.letter.ID)
		}
		jobs[e.letter.ID] = append(jobs[e.letter.ID], e)
	}
	var (
		mu      sync.Mutex
		stopped atomic.Bool // SendGrid is still failing
		next    = make(chan []entry)
		wg      sync.WaitGroup
	)
	report := func(id, result, reason string) {
		s.retries.WithLabelValues(result).Inc()
		mu.Lock()
		defer mu.Unlock()
		switch result {
		case ResultSent:
			sum.Sent++
		case ResultSentAlready, ResultInProgress, ResultNotTried:
			sum.Skipped = append(sum.Skipped, Outcome{ID: id, Reason: result})
		default:
			sum.Failed = append(sum.Failed, Outcome{ID: id, Reason: reason})
		}
	}
	for range min(workers, len(order)) {
		wg.Go(func() {
			for job := range next {
				for _, e := range job {
					if stopped.Load() || ctx.Err() != nil {
						report(e.letter.ID, ResultNotTried, "")
						continue
					}
					result, reason, curable := s.retry(ctx, e)
					if curable {
						stopped.Store(true)
					}
					report(e.letter.ID, result, reason)
				}
			}
		})
	}
	for _, id := range order {
		next <- jobs[id]
	}
	close(next)
	wg.Wait()

	slices.SortFunc(sum.Skipped, byID)
	slices.SortFunc(sum.Failed, byID)
	n, err := s.Redis.LLen(context.WithoutCancel(ctx), s.key).Result()
	if err != nil {
		s.Logger.Warn("count dead letters", "error", err)
		n = -1
	}
	sum.Remaining = n
	return sum, nil
}

func byID(a, b Outcome) int {
	if a.ID < b.ID {
		return -1
	} else if a.ID > b.ID {
		return 1
	}
	return 0
}

// oldest reads the oldest MaxPerCall dead letters, oldest first. Failed
// retries go back to the head of the list, so calling Retry again moves on
// to the next ones.
func (s *Store) oldest(ctx context.Context) ([]entry, error) {
	raws, err := s.Redis.LRange(ctx, s.key, -MaxPerCall, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	slices.Reverse(raws)
	return s.decodeAll(raws, nil), nil
}

// find reads the dead letters with the given ids, scanning the list a page
// at a time, and returns the ids none has. A dead letter another retry
// removes during the scan may make the scan miss one next to it, which is
// then reported not_found: retried again, it is found.
func (s *Store) find(ctx context.Context, ids []string) ([]entry, []string, error) {
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	found := map[string]bool{}
	kept := map[string]bool{} // raw entries kept: dead letters pushed meanwhile shift the pages
	var out []entry
	const page = 1000
	for start := int64(0); len(out) < MaxPerCall; start += page {
		raws, err := s.Redis.LRange(ctx, s.key, start, start+page-1).Result()
		if err != nil {
			return nil, nil, fmt.Errorf("read dead letters: %w", err)
		}
		for _, e := range s.decodeAll(raws, want) {
			if len(out) == MaxPerCall {
				break
			}
			if !kept[e.raw] {
				kept[e.raw] = true
				found[e.letter.ID] = true
				out = append(out, e)
			}
		}
		if len(raws) < page {
			break
		}
	}
	var missing []string
	for _, id := range ids {
		if !found[id] {
			missing = append(missing, id)
		}
	}
	return out, missing, nil
}

// decodeAll decodes raws, keeping those whose id is in want (every one if
// want is nil); entries that are not dead letters are logged and skipped.
func (s *Store) decodeAll(raws []string, want map[string]bool) []entry {
	var out []entry
	for _, raw := range raws {
		l, err := decode(raw)
		if err != nil {
			s.Logger.Warn("dead-letter list holds an entry that is not a dead letter; left alone", "error", err, "entry", truncate(raw))
			continue
		}
		if want == nil || want[l.ID] {
			out = append(out, entry{raw: raw, letter: l})
		}
	}
	return out
}

// retry handles one dead letter and says what came of it; curable is true
// when its send failed for a reason that may pass (SendGrid still down).
func (s *Store) retry(ctx context.Context, e entry) (result, reason string, curable bool) {
	l := e.letter
	log := s.Logger.With("dead_letter", l.ID, "to", l.To)
	if l.To == "" || l.Text == "" && l.HTML == "" {
		return ResultFailed, "no_body: this dead letter does not hold the email's body (it predates retries); it cannot be sent as first tried", false
	}
	// Claims, sends and their records outlive the caller: once a claim is
	// taken, what follows must be done whether the caller waits or not.
	ctx = context.WithoutCancel(ctx)
	state, holder, err := s.Claims.TakeDeadLetter(ctx, l.EventID, l.Name)
	if err != nil {
		log.Error("retry dead letter: take the claim", "error", err)
		return ResultFailed, "unavailable: the claim could not be read; try again", false
	}
	switch state {
	case claims.Sent:
		// The email went, e.g. its event was delivered again and sent.
		if err := s.Redis.LRem(ctx, s.key, 1, e.raw).Err(); err != nil {
			log.Warn("remove a dead letter sent already; the next retry removes it", "error", err)
		}
		log.Info("dead letter sent already; removed")
		return ResultSentAlready, "", false
	case claims.Held:
		log.Info("dead letter in progress elsewhere; left", "claim", holder)
		return ResultInProgress, "", false
	}

	sendCtx, cancel := context.WithTimeout(ctx, s.SendTimeout)
	sendErr := s.Mailer.Send(sendCtx, mailer.Email{
		ToEmail: l.To, ToName: l.ToName, Subject: l.Subject, Text: l.Text, HTML: l.HTML, Key: l.Key,
	})
	cancel()
	if sendErr == nil {
		// Sent first, then removed: a retry in between finds sent and
		// removes it too. Should both writes fail, the lease runs out with
		// the dead letter kept, and a retry would send the email again.
		markErr := s.Claims.MarkSent(ctx, l.EventID, l.Name, s.ClaimTTL)
		remErr := s.Redis.LRem(ctx, s.key, 1, e.raw).Err()
		if markErr != nil && remErr != nil {
			log.Error("dead letter sent but neither recorded as sent nor removed: retrying it sends it again",
				"error", errors.Join(markErr, remErr))
			return ResultFailed, "sent_unrecorded: SendGrid accepted the email but Redis did not record it; retrying it sends it again", false
		}
		if err := errors.Join(markErr, remErr); err != nil {
			log.Warn("dead letter sent; one of its records failed", "error", err)
		}
		log.Info("dead letter sent", "key", l.Key)
		return ResultSent, "", false
	}

	l.Attempts++
	l.Reason = sendErr.Error()
	l.FailedAt = time.Now().UTC()
	updated, err := json.Marshal(l)
	if err == nil {
		// The updated dead letter takes the old one's place, and the claim
		// goes back to dead-lettered, in one step: never neither, never
		// both.
		err = s.Claims.DeadLetter(ctx, l.EventID, l.Name, s.ClaimTTL, s.key, string(updated), e.raw)
	}
	if err != nil {
		// The old one stays; the lease runs out, and a later retry takes it.
		log.Error("retry dead letter: replace it after a failed send; the old one stays", "error", err)
	}
	log.Warn("dead letter failed again", "attempts", l.Attempts, "error", sendErr)
	return ResultFailed, l.Reason, !errors.Is(sendErr, mailer.ErrRejected)
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}
