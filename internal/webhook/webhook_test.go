package webhook_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/store"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
	"github.com/clicktopurchase/approvald/internal/webhook"
	wt "github.com/clicktopurchase/approvald/internal/webhook/webhooktest"
)

var secret = []byte("unit-test-webhook-secret-0123456789")

func TestSignVerify(t *testing.T) {
	body := []byte(`{"id":"e1","type":"challenge.approved","created_at":"2030-01-02T03:04:05Z","data":{}}`)
	at := time.Unix(1700000000, 0)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("1700000000." + string(body)))
	want := "t=1700000000,v1=" + hex.EncodeToString(m.Sum(nil))
	sig := webhook.Sign(secret, at, body)
	if sig != want {
		t.Fatalf("Sign = %s, want %s", sig, want)
	}
	if ts, err := webhook.Verify(secret, sig, body, at.Add(4*time.Minute), 5*time.Minute); err != nil || !ts.Equal(at) {
		t.Fatalf("Verify: %v %v", ts, err)
	}
	other := webhook.Sign([]byte("another-secret-of-16+"), at, body)
	_, v1, _ := strings.Cut(sig, ",")
	_, v1other, _ := strings.Cut(other, ",")
	if _, err := webhook.Verify(secret, "t=1700000000,"+v1other+","+v1, body, at, 5*time.Minute); err != nil {
		t.Fatalf("a header with two v1 (one right) refused: %v", err)
	}
	for _, tc := range []struct {
		what   string
		header string
		body   []byte
		now    time.Time
		want   error
	}{
		{"tampered body", sig, []byte(strings.Replace(string(body), "{}", `{"status":"approved"}`, 1)), at, webhook.ErrMismatch},
		{"wrong secret", other, body, at, webhook.ErrMismatch},
		{"too old", sig, body, at.Add(5*time.Minute + time.Second), webhook.ErrStale},
		{"from the future", sig, body, at.Add(-6 * time.Minute), webhook.ErrStale},
		{"no t", v1, body, at, webhook.ErrMalformed},
		{"no v1", "t=1700000000", body, at, webhook.ErrMalformed},
		{"bad hex", "t=1700000000,v1=zz", body, at, webhook.ErrMalformed},
		{"empty", "", body, at, webhook.ErrMalformed},
		{"t twice", "t=1,t=1700000000," + v1, body, at, webhook.ErrMalformed},
		{"another t", strings.Replace(sig, "t=1700000000", "t=1700000001", 1), body, at, webhook.ErrMismatch},
	} {
		if _, err := webhook.Verify(secret, tc.header, tc.body, tc.now, 5*time.Minute); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.what, err, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	base, maxWait := 5*time.Second, time.Hour
	for attempt := 1; attempt <= 30; attempt++ {
		full := min(base<<min(attempt-1, 20), maxWait)
		for range 50 {
			d := webhook.Backoff(base, maxWait, attempt)
			if d < full/2 || d > full {
				t.Fatalf("attempt %d: %v, want within [%v, %v]", attempt, d, full/2, full)
			}
		}
	}
}

// fixture is a store with webhooks on, a challenge, a receiver and a
// dispatcher whose clock the test moves.
type fixture struct {
	st   *store.Store
	rcv  *wt.Receiver
	d    *webhook.Dispatcher
	skew atomic.Int64
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newFixture(t *testing.T, dialect string, answer wt.Answer, tune func(*webhook.Options)) *fixture {
	t.Helper()
	f := &fixture{st: storetest.Open(t, dialect), rcv: wt.Start(t, secret, answer), logs: &syncBuffer{}}
	f.st.EnableWebhooks()
	o := webhook.Options{
		URL: f.rcv.URL, Secret: secret,
		Log:          slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:          func() time.Time { return time.Now().Add(time.Duration(f.skew.Load())) },
		PollInterval: 10 * time.Millisecond, Backoff: 50 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
	if tune != nil {
		tune(&o)
	}
	d, err := webhook.New(f.st, o)
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	return f
}

// run runs the dispatcher until the test ends or stop is called.
func (f *fixture) run(t *testing.T) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.d.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// cancelled makes a cancelled challenge, and so one challenge.cancelled event.
func (f *fixture) cancelled(t *testing.T, id string) store.WebhookEvent {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Millisecond)
	c := &approval.Challenge{ID: id, UserID: "u1", Action: "login", RequesterKey: "u1", Methods: "push,email",
		Status: approval.StatusPending, CreatedAt: now, ExpiresAt: now.Add(3 * time.Minute), APIKeyName: "rp"}
	ctx := t.Context()
	if _, _, err := f.st.CreateChallenge(ctx, approval.NewChallenge{Challenge: c, Since: now.Add(-time.Hour),
		Check: func(approval.ChallengeCounts) error { return nil }, Audit: approval.AuditEntry{ActorType: approval.ActorAPIKey, Actor: "rp", Event: "challenge.created"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Decide(ctx, approval.Decision{ID: id, Status: approval.StatusCancelled, At: now,
		Audit: approval.AuditEntry{ActorType: approval.ActorAPIKey, Actor: "rp", Event: "challenge.cancelled"}}); err != nil {
		t.Fatal(err)
	}
	evs, err := f.st.WebhookEvents(ctx, id)
	if err != nil || len(evs) != 1 {
		t.Fatalf("outbox: %+v %v", evs, err)
	}
	return evs[0]
}

func (f *fixture) waitEvent(t *testing.T, id string, ok func(*store.WebhookEvent) bool) *store.WebhookEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev, err := f.st.GetWebhookEvent(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ok(ev) {
			return ev
		}
		if time.Now().After(deadline) {
			t.Fatalf("event: %+v", ev)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func forEachDialect(t *testing.T, f func(t *testing.T, dialect string)) {
	for _, d := range storetest.Dialects() {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			f(t, d)
		})
	}
}

// After MaxAge of failures an event is given up: marked failed, counted,
// logged, and never sent again. Neither the secret nor a signature is ever
// logged.
func TestGiveUpAfterMaxAge(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		f := newFixture(t, dialect, func(string, int) (int, time.Duration) { return http.StatusServiceUnavailable, 0 },
			func(o *webhook.Options) { o.MaxAge = time.Hour })
		ev := f.cancelled(t, "c-giveup")
		f.run(t)
		f.waitEvent(t, ev.ID, func(e *store.WebhookEvent) bool { return e.Attempts >= 2 && e.LastStatus == "503" })
		if e, _ := f.st.GetWebhookEvent(t.Context(), ev.ID); e.FailedAt != nil {
			t.Fatal("failed before MaxAge")
		}
		f.skew.Store(int64(time.Hour))
		failed := f.waitEvent(t, ev.ID, func(e *store.WebhookEvent) bool { return e.FailedAt != nil })
		if failed.DeliveredAt != nil || failed.LastStatus != "503" {
			t.Fatalf("failed event: %+v", failed)
		}
		n := len(f.rcv.Deliveries())
		time.Sleep(200 * time.Millisecond)
		if m := len(f.rcv.Deliveries()); m != n {
			t.Fatalf("%d more attempts after giving up", m-n)
		}
		for deadline := time.Now().Add(5 * time.Second); f.d.Stats().Failed == 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond) // counted just after the failure is recorded
		}
		if s := f.d.Stats(); s.Failed != 1 || s.Delivered != 0 || s.Retried < 1 {
			t.Fatalf("stats: %+v", s)
		}
		logs := f.logs.String()
		if !strings.Contains(logs, "giving up") || !strings.Contains(logs, ev.ID) {
			t.Errorf("the give-up is not logged:\n%s", logs)
		}
		for _, d := range f.rcv.Deliveries() {
			if strings.Contains(logs, d.Signature) {
				t.Fatal("a signature was logged")
			}
		}
		if strings.Contains(logs, string(secret)) || strings.Contains(logs, "v1=") {
			t.Fatalf("the secret or a signature was logged:\n%s", logs)
		}
	})
}

// An event whose object does not exist can never be sent: it fails at once.
func TestMissingObjectFails(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		f := newFixture(t, dialect, nil, nil)
		if err := f.st.Audit(t.Context(), approval.AuditEntry{ActorType: approval.ActorSystem, Event: "challenge.expired", ObjectID: "no-such", UserID: "u"}); err != nil {
			t.Fatal(err)
		}
		evs, _ := f.st.WebhookEvents(t.Context(), "no-such")
		if len(evs) != 1 {
			t.Fatalf("outbox: %+v", evs)
		}
		f.run(t)
		e := f.waitEvent(t, evs[0].ID, func(e *store.WebhookEvent) bool { return e.FailedAt != nil })
		if e.LastStatus != "object not found" || len(f.rcv.Deliveries()) != 0 {
			t.Fatalf("event %+v, %d requests", e, len(f.rcv.Deliveries()))
		}
	})
}

// Shutdown cuts an attempt short and gives the event back at once (not
// counted as the receiver's failure), for another instance to send.
func TestShutdownReleases(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		f := newFixture(t, dialect, func(string, int) (int, time.Duration) { return http.StatusOK, time.Minute },
			func(o *webhook.Options) { o.Timeout = 5 * time.Second })
		ev := f.cancelled(t, "c-shutdown")
		stop := f.run(t)
		f.waitEvent(t, ev.ID, func(e *store.WebhookEvent) bool { return e.LeaseUntil != nil })
		time.Sleep(100 * time.Millisecond) // the request is on its way
		start := time.Now()
		stop()
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Run took %v to stop", d)
		}
		e, err := f.st.GetWebhookEvent(t.Context(), ev.ID)
		if err != nil || e.LeaseUntil != nil || e.DeliveredAt != nil || e.FailedAt != nil || e.Attempts != 1 || !e.NextAttemptAt.Equal(ev.NextAttemptAt) {
			t.Fatalf("after shutdown: %+v %v", e, err)
		}
		if s := f.d.Stats(); s.Retried != 0 {
			t.Fatalf("stats: %+v", s)
		}
	})
}

// The body: the envelope and the challenge's RP view.
func TestBody(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		f := newFixture(t, dialect, nil, nil)
		ev := f.cancelled(t, "c-body")
		f.run(t)
		d := f.rcv.Wait(t, "challenge.cancelled", wt.ChallengeID("c-body"), 10*time.Second)[0]
		c, err := f.st.GetChallenge(t.Context(), "c-body")
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(webhook.Event{ID: ev.ID, Type: "challenge.cancelled", CreatedAt: approval.RFC3339(ev.CreatedAt), Data: c.View()})
		if string(d.Body) != string(want) {
			t.Fatalf("body:\n%s\nwant\n%s", d.Body, want)
		}
	})
}
