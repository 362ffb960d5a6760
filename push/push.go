// Package push is the contract between approvald and the push providers: the
// message a phone receives, the three-valued result of sending it, and the
// Sender interface that push/fcm and push/apns implement.
//
// A Sender makes exactly one attempt per call. Retrying (with backoff, within
// the challenge's life) is the caller's job, guided by the Result.
//
// This package imports nothing from internal/.
package push

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Kind says what a push is about.
type Kind string

// The kinds of push approvald sends.
const (
	// KindChallenge asks the user to approve or deny a challenge (an alert).
	KindChallenge Kind = "challenge"
	// KindResolved is a silent push telling the app that a challenge reached a
	// final status, so it withdraws the notification.
	KindResolved Kind = "resolved"
	// KindRetired is a silent push telling the app that its device link was
	// retired.
	KindRetired Kind = "retired"
)

// DefaultSilentTTL is how long a provider keeps a resolved or retired push
// for an offline device when the message has no usable ExpiresAt.
const DefaultSilentTTL = time.Hour

// Message is one push to one device. It never carries a secret.
type Message struct {
	// Kind selects the payload shape.
	Kind Kind
	// ChallengeID is the challenge the push is about (challenge and resolved).
	ChallengeID string
	// Action is the challenge's action, e.g. "login" (challenge only).
	Action string
	// Title and Body are the alert text (challenge only).
	Title, Body string
	// ExpiresAt is the challenge's expiry for a challenge push: it sets the
	// provider's TTL (FCM) or apns-expiration (APNs). For resolved and retired
	// pushes it is optional: zero or past means DefaultSilentTTL from now.
	ExpiresAt time.Time
	// NumberMatching tells the app that approving needs the number shown in
	// the browser, so it offers no Approve outside the app.
	NumberMatching bool
}

// Validate reports whether m can be sent: a known Kind, and for a challenge a
// ChallengeID, an Action and an ExpiresAt; for resolved a ChallengeID.
func (m Message) Validate() error {
	switch m.Kind {
	case KindChallenge:
		if m.ChallengeID == "" || m.Action == "" {
			return errors.New("push: challenge message needs ChallengeID and Action")
		}
		if m.ExpiresAt.IsZero() {
			return errors.New("push: challenge message needs ExpiresAt")
		}
	case KindResolved:
		if m.ChallengeID == "" {
			return errors.New("push: resolved message needs ChallengeID")
		}
	case KindRetired:
	default:
		return errors.New("push: unknown message kind " + strconv.Quote(string(m.Kind)))
	}
	return nil
}

// Expiry is the moment after which a provider should drop m undelivered: the
// challenge's ExpiresAt for a challenge; for resolved and retired pushes
// ExpiresAt when it is still ahead of now, else now + DefaultSilentTTL.
func (m Message) Expiry(now time.Time) time.Time {
	if m.Kind == KindChallenge || m.ExpiresAt.After(now) {
		return m.ExpiresAt
	}
	return now.Add(DefaultSilentTTL)
}

// TTL is the time left until Expiry, in whole seconds (rounded down) and
// never negative.
func (m Message) TTL(now time.Time) time.Duration {
	d := m.Expiry(now).Sub(now).Truncate(time.Second)
	if d < 0 {
		return 0
	}
	return d
}

// Outcome is what became of one send. The zero value is not a valid outcome.
type Outcome int

// The outcomes of a send.
const (
	// Delivered: the provider accepted the message.
	Delivered Outcome = iota + 1
	// TokenInvalid: the provider says the token is dead; stop using it until
	// the app registers a new one.
	TokenInvalid
	// Retry: rate limited, provider error or network trouble; try again later
	// (after Result.RetryAfter when it is set).
	Retry
	// Failed: a permanent failure for this message (bad payload, bad
	// credentials or configuration); retrying the same send will not help.
	Failed
)

// String returns the outcome's name as used in counters and logs:
// "delivered", "token_invalid", "retry", "failed" ("unknown" otherwise).
func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case TokenInvalid:
		return "token_invalid"
	case Retry:
		return "retry"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Result is the outcome of one send.
type Result struct {
	// Outcome is what happened.
	Outcome Outcome
	// RetryAfter is the provider's Retry-After, when it sent one (else 0).
	RetryAfter time.Duration
	// Reason is the provider's reason or error code (e.g. "UNREGISTERED",
	// "BadDeviceToken"), or one of ours ("network", "timeout", "canceled",
	// "auth", "invalid_message"), for logs and metrics. Empty when delivered.
	Reason string
}

// Key is the counter key for r: the outcome, then "/" and the reason when
// there is one, e.g. "delivered" or "token_invalid/UNREGISTERED".
func (r Result) Key() string {
	if r.Reason == "" {
		return r.Outcome.String()
	}
	return r.Outcome.String() + "/" + r.Reason
}

// Sender sends one message to one device token. It never logs the token. ctx
// bounds the attempt. Implementations are safe for concurrent use.
type Sender interface {
	Send(ctx context.Context, token string, m Message) Result
}

// Redact returns a form of a push token safe for logs: its first 6 characters
// (fewer for a short token), "…", and its length, e.g. "dG9rZW…(152)".
func Redact(token string) string {
	if token == "" {
		return "(empty)"
	}
	n := utf8.RuneCountInString(token)
	keep := 6
	if n < 12 {
		keep = n / 2
	}
	var b strings.Builder
	for _, r := range token {
		if keep == 0 {
			break
		}
		b.WriteRune(r)
		keep--
	}
	b.WriteString("…(")
	b.WriteString(strconv.Itoa(len(token)))
	b.WriteString(")")
	return b.String()
}

// ParseRetryAfter reads an HTTP Retry-After value (delay-seconds or an
// HTTP-date) relative to now. It returns 0 for an empty, malformed or past
// value.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(24*time.Hour/time.Second) {
			secs = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := parseHTTPDate(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d.Round(time.Second)
		}
	}
	return 0
}

func parseHTTPDate(v string) (time.Time, error) {
	var err error
	for _, layout := range []string{time.RFC1123, time.RFC850, time.ANSIC} {
		var t time.Time
		if t, err = time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, err
}

// Tally counts results by Result.Key. The zero value is ready to use and it
// is safe for concurrent use; senders keep one for future metrics.
type Tally struct {
	m sync.Map // string -> *atomic.Uint64
}

// Add counts r.
func (t *Tally) Add(r Result) {
	k := r.Key()
	c, ok := t.m.Load(k)
	if !ok {
		c, _ = t.m.LoadOrStore(k, new(atomic.Uint64))
	}
	c.(*atomic.Uint64).Add(1)
}

// Snapshot returns the counts so far, keyed by Result.Key.
func (t *Tally) Snapshot() map[string]uint64 {
	out := make(map[string]uint64)
	t.m.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}
