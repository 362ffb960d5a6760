// Package webhook delivers the events of the outbox that the store fills in
// the transactions of the changes they report (store.EnableWebhooks): each
// instance runs one Dispatcher, and any number may share a database.
//
// Every PollInterval a dispatcher claims the due events with one
// conditional update that leases them for Lease (so no two instances send
// the same event at once), builds each body from the current state, and
// POSTs it signed afresh (Approvald-Signature, t = the wall-clock time of the
// attempt). A 2xx answer within Timeout is a delivery. Anything else (an
// error, a timeout, a redirect, another status) is retried with exponential
// backoff and jitter until MaxAge after the event was created, then the
// event is marked failed. The outbox is in the database, so delivery
// survives restarts; it is at least once, and receivers dedupe on the id.
package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/store"
)

// Options configure a Dispatcher. Zero durations and counts take the
// defaults in brackets.
type Options struct {
	URL    string // the receiver (validated by config)
	Secret []byte // the HMAC key; never logged
	Log    *slog.Logger
	// Now is the clock that schedules attempts (time.Now; tests travel in
	// time with it). Signatures always carry the wall-clock time.
	Now    func() time.Time
	Client *http.Client // [a client that follows no redirects]

	PollInterval time.Duration // how often due events are claimed [500 ms]
	Timeout      time.Duration // an attempt's limit, answer included [10 s]
	Lease        time.Duration // how long a claim holds an event; raised to at least 2×Timeout+5 s [30 s]
	Backoff      time.Duration // the wait after the first failed attempt, doubling after each [5 s]
	MaxBackoff   time.Duration // the longest wait between attempts [1 h]
	MaxAge       time.Duration // attempts stop this long after the event was created [24 h]
	Retention    time.Duration // delivered and failed events are deleted after this [7 days]
	Concurrency  int           // attempts in flight at once, fixed at New [4]
	Batch        int           // the most events claimed at once [50]
}

func (o *Options) defaults() {
	defD := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	defD(&o.PollInterval, 500*time.Millisecond)
	defD(&o.Timeout, 10*time.Second)
	defD(&o.Lease, 30*time.Second)
	defD(&o.Backoff, 5*time.Second)
	defD(&o.MaxBackoff, time.Hour)
	defD(&o.MaxAge, 24*time.Hour)
	defD(&o.Retention, 7*24*time.Hour)
	// The lease outlives any attempt by a wide margin: an event is never
	// claimed again while an attempt may still be in flight.
	o.Lease = max(o.Lease, 2*o.Timeout+5*time.Second)
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.Batch <= 0 {
		o.Batch = 50
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// Stats are counters since the dispatcher started (for metrics).
type Stats struct {
	Delivered uint64 // events delivered
	Retried   uint64 // failed attempts that will be retried
	Failed    uint64 // events given up after MaxAge
}

// Dispatcher sends the outbox's events. Run it once per instance.
type Dispatcher struct {
	store *store.Store
	sem   chan struct{} // one token per attempt in flight
	wake  chan struct{}

	mu   sync.Mutex
	opts Options

	delivered, retried, failed atomic.Uint64
}

// New builds a dispatcher that sends to o.URL.
func New(st *store.Store, o Options) (*Dispatcher, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errors.New("webhook: the URL must be an absolute http(s) URL")
	}
	if len(o.Secret) == 0 {
		return nil, errors.New("webhook: a secret is required")
	}
	o.defaults()
	if o.Client == nil {
		o.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &Dispatcher{store: st, opts: o, sem: make(chan struct{}, o.Concurrency), wake: make(chan struct{}, 1)}, nil
}

// Tune changes the options while running (tests shorten the waits); the
// URL, the secret and Concurrency stay as they were.
func (d *Dispatcher) Tune(f func(*Options)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	o := d.opts
	f(&o)
	o.URL, o.Secret, o.Concurrency = d.opts.URL, d.opts.Secret, d.opts.Concurrency
	o.defaults()
	d.opts = o
}

func (d *Dispatcher) options() Options {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.opts
}

// Stats returns the counters.
func (d *Dispatcher) Stats() Stats {
	return Stats{Delivered: d.delivered.Load(), Retried: d.retried.Load(), Failed: d.failed.Load()}
}

// Run claims and sends due events until ctx ends. Then it stops claiming,
// cuts the attempts in flight short, gives their events back (another
// instance, or the next start, sends them) and returns.
func (d *Dispatcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	o := d.options()
	if u, err := url.Parse(o.URL); err == nil {
		o.Log.Info("webhooks on", "host", u.Host)
	}
	lastPurge := time.Time{}
	for {
		o = d.options()
		if full := d.claim(ctx, o, &wg); full {
			d.poke() // there may be more: claim again as attempts finish
		}
		if now := o.Now(); now.Sub(lastPurge) > time.Hour {
			lastPurge = now
			if n, err := d.store.PurgeWebhookEvents(ctx, now.Add(-o.Retention)); err != nil && ctx.Err() == nil {
				o.Log.Error("webhook purge", "err", err)
			} else if n > 0 {
				o.Log.Debug("webhook purge", "deleted", n)
			}
		}
		t := time.NewTimer(o.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-d.wake:
			t.Stop()
			// Wait for a free slot before claiming again.
			select {
			case d.sem <- struct{}{}:
				<-d.sem
			case <-ctx.Done():
				return
			}
		}
	}
}

func (d *Dispatcher) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// claim leases as many due events as there are free slots and starts an
// attempt for each; full reports that it got as many as it asked for.
func (d *Dispatcher) claim(ctx context.Context, o Options, wg *sync.WaitGroup) (full bool) {
	free := min(cap(d.sem)-len(d.sem), o.Batch) // only Run takes slots: they stay free
	if free <= 0 {
		return false
	}
	evs, err := d.store.ClaimWebhookEvents(ctx, o.Now(), o.Lease, free)
	if err != nil {
		if ctx.Err() == nil {
			o.Log.Error("webhook claim", "err", err)
		}
		return false
	}
	for _, ev := range evs {
		d.sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-d.sem }()
			d.attempt(ctx, o, ev)
		}()
	}
	return len(evs) == free
}

// attempt sends ev once and records the outcome.
func (d *Dispatcher) attempt(ctx context.Context, o Options, ev store.WebhookEvent) {
	log := o.Log.With("event", ev.ID, "type", ev.Type, "attempt", ev.Attempts)
	// The outcome is recorded even when shutdown starts meanwhile.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()

	body, err := d.body(ctx, ev)
	if errors.Is(err, approval.ErrNotFound) {
		// The object is gone for good: nothing could ever be sent.
		log.Error("webhook event dropped: its object does not exist", "object", ev.ObjectID)
		if _, err := d.store.WebhookFailed(rctx, ev.ID, ev.Attempts, o.Now(), "object not found"); err != nil {
			log.Error("webhook record failure", "err", err)
		}
		d.failed.Add(1)
		return
	}
	if err != nil {
		if ctx.Err() != nil {
			d.release(rctx, log, ev)
			return
		}
		log.Error("webhook body", "err", err)
		d.retry(rctx, o, log, ev, "body error")
		return
	}

	status, ok := d.post(ctx, o, body)
	if !ok && ctx.Err() != nil {
		// Cut short by shutdown: not the receiver's failure.
		d.release(rctx, log, ev)
		return
	}
	if ok {
		d.delivered.Add(1)
		if _, err := d.store.WebhookDelivered(rctx, ev.ID, o.Now(), status); err != nil {
			log.Error("webhook record delivery", "err", err)
		}
		log.Debug("webhook delivered", "status", status)
		return
	}
	d.retry(rctx, o, log, ev, status)
}

// post makes one signed POST of body; ok is a 2xx answer within Timeout.
// status is the answer's code, or "timeout" or "error".
func (d *Dispatcher) post(ctx context.Context, o Options, body []byte) (status string, ok bool) {
	actx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, o.URL, bytes.NewReader(body))
	if err != nil {
		return "error", false
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "approvald-webhook/1")
	req.Header.Set(Header, Sign(o.Secret, time.Now(), body))
	resp, err := o.Client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(actx.Err(), context.DeadlineExceeded) {
			return "timeout", false
		}
		return "error", false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return strconv.Itoa(resp.StatusCode), resp.StatusCode >= 200 && resp.StatusCode < 300
}

// retry schedules ev's next attempt after a failed one, or gives up when
// MaxAge has passed since it was created.
func (d *Dispatcher) retry(ctx context.Context, o Options, log *slog.Logger, ev store.WebhookEvent, status string) {
	now := o.Now()
	deadline := ev.CreatedAt.Add(o.MaxAge)
	if !now.Before(deadline) {
		held, err := d.store.WebhookFailed(ctx, ev.ID, ev.Attempts, now, status)
		if err != nil {
			log.Error("webhook record failure", "err", err)
			return
		}
		if held {
			d.failed.Add(1)
			log.Warn("webhook event failed: no successful attempt in time, giving up", "status", status, "max_age", o.MaxAge.String())
		}
		return
	}
	next := now.Add(Backoff(o.Backoff, o.MaxBackoff, ev.Attempts))
	if next.After(deadline) {
		next = deadline // one last attempt when the time is up
	}
	d.retried.Add(1)
	if _, err := d.store.WebhookRetry(ctx, ev.ID, ev.Attempts, next, status); err != nil {
		log.Error("webhook record retry", "err", err)
		return
	}
	log.Warn("webhook attempt failed, will retry", "status", status, "next_attempt_at", approval.RFC3339(next))
}

func (d *Dispatcher) release(ctx context.Context, log *slog.Logger, ev store.WebhookEvent) {
	if _, err := d.store.WebhookRelease(ctx, ev.ID, ev.Attempts); err != nil {
		log.Error("webhook release", "err", err)
	}
}

// Backoff is the wait after failed attempt number attempt (1 for the
// first): base doubled attempt-1 times, at most maxWait, less a random part of
// up to half (so that retries of many events spread out).
func Backoff(base, maxWait time.Duration, attempt int) time.Duration {
	d := base
	for i := 1; i < attempt && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	half := d / 2
	if d-half <= 0 {
		return d
	}
	return half + rand.N(d-half+1)
}

// String describes the options without the URL (which may carry
// credentials) or the secret, so that printing them cannot leak either.
func (o Options) String() string {
	return fmt.Sprintf("webhook.Options{timeout %v, backoff %v..%v, max age %v, concurrency %d}",
		o.Timeout, o.Backoff, o.MaxBackoff, o.MaxAge, o.Concurrency)
}
