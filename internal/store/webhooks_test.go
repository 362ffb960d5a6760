package store_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/store"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
)

func webhookEvents(t *testing.T, st *store.Store, objectID string) []store.WebhookEvent {
	t.Helper()
	evs, err := st.WebhookEvents(t.Context(), objectID)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// Webhook events are enqueued by the change's own transaction, only while
// webhooks are on, and only for the webhook types.
func TestWebhookEnqueue(t *testing.T) {
	for _, dialect := range storetest.Dialects() {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, dialect)
			ctx := t.Context()
			dev := approval.AuditEntry{ActorType: approval.ActorDevice, Actor: "dev-1", Event: "challenge.approved"}

			mustCreate(t, st, newChallenge("off", "u1", t0))
			if _, err := st.Decide(ctx, approval.Decision{ID: "off", Status: approval.StatusApproved, Method: "push", At: t0.Add(time.Second), Audit: dev}); err != nil {
				t.Fatal(err)
			}
			if evs := webhookEvents(t, st, "off"); len(evs) != 0 {
				t.Fatalf("webhooks off, yet enqueued: %+v", evs)
			}

			st.EnableWebhooks()
			mustCreate(t, st, newChallenge("on", "u1", t0))
			if evs := webhookEvents(t, st, "on"); len(evs) != 0 {
				t.Fatalf("challenge.created is no webhook event: %+v", evs)
			}
			at := t0.Add(2 * time.Second)
			if _, err := st.Decide(ctx, approval.Decision{ID: "on", Status: approval.StatusApproved, Method: "push", At: at, Audit: dev}); err != nil {
				t.Fatal(err)
			}
			// The losing decision writes nothing, its event included.
			dev.Event = "challenge.denied"
			if _, err := st.Decide(ctx, approval.Decision{ID: "on", Status: approval.StatusDenied, Method: "push", At: at, Audit: dev}); !errors.Is(err, approval.ErrLost) {
				t.Fatalf("second decision: %v", err)
			}
			evs := webhookEvents(t, st, "on")
			if len(evs) != 1 {
				t.Fatalf("want one event, got %+v", evs)
			}
			e := evs[0]
			if e.Type != "challenge.approved" || e.UserID != "u1" || e.ActorType != approval.ActorDevice || e.Actor != "dev-1" ||
				!e.CreatedAt.Equal(at) || !e.NextAttemptAt.Equal(at) || e.Attempts != 0 || e.LeaseUntil != nil || e.DeliveredAt != nil || e.FailedAt != nil {
				t.Fatalf("event: %+v", e)
			}
			if len(e.ID) < 22 {
				t.Fatalf("event id %q has fewer than 128 bits", e.ID)
			}

			// Store.Audit (fraud.reported) goes through the same path; a
			// non-webhook event does not enqueue.
			if err := st.Audit(ctx, approval.AuditEntry{At: at, ActorType: approval.ActorLink, Event: "fraud.reported", ObjectType: "user", ObjectID: "on", UserID: "u1"}); err != nil {
				t.Fatal(err)
			}
			if err := st.Audit(ctx, approval.AuditEntry{At: at, ActorType: approval.ActorSystem, Event: "challenge.email_requested", ObjectID: "on", UserID: "u1"}); err != nil {
				t.Fatal(err)
			}
			evs = webhookEvents(t, st, "on")
			if len(evs) != 2 || evs[0].ID == evs[1].ID || evs[0].Type == evs[1].Type ||
				(evs[0].Type != "fraud.reported" && evs[1].Type != "fraud.reported") {
				t.Fatalf("events: %+v", evs)
			}
		})
	}
}

// A claim leases an event; the lease keeps it from every other claim until
// it ends; attempts fence the outcome of a stale claim.
func TestWebhookLease(t *testing.T) {
	for _, dialect := range storetest.Dialects() {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, dialect)
			st.EnableWebhooks()
			ctx := t.Context()
			for i := range 3 {
				if err := st.Audit(ctx, approval.AuditEntry{At: t0.Add(time.Duration(i) * time.Millisecond), ActorType: approval.ActorDevice,
					Event: "fraud.reported", ObjectID: fmt.Sprintf("obj%d", i), UserID: "u1"}); err != nil {
					t.Fatal(err)
				}
			}
			lease := 30 * time.Second
			got, err := st.ClaimWebhookEvents(ctx, t0.Add(-time.Second), lease, 10)
			if err != nil || len(got) != 0 {
				t.Fatalf("claimed events not yet due: %+v %v", got, err)
			}
			got, err = st.ClaimWebhookEvents(ctx, t0.Add(time.Second), lease, 2)
			if err != nil || len(got) != 2 || got[0].ObjectID != "obj0" || got[1].ObjectID != "obj1" || got[0].Attempts != 1 {
				t.Fatalf("first claim (oldest two): %+v %v", got, err)
			}
			if got[0].LeaseUntil == nil || !got[0].LeaseUntil.Equal(t0.Add(time.Second).Add(lease)) {
				t.Fatalf("lease: %+v", got[0])
			}
			a, b := got[0], got[1]
			got, err = st.ClaimWebhookEvents(ctx, t0.Add(2*time.Second), lease, 10)
			if err != nil || len(got) != 1 || got[0].ObjectID != "obj2" {
				t.Fatalf("leased events claimed again: %+v %v", got, err)
			}
			c := got[0]

			// a: delivered. b: its lease runs out, another claim takes it,
			// and the first claim's late failure changes nothing.
			if ok, err := st.WebhookDelivered(ctx, a.ID, t0.Add(3*time.Second), "200"); !ok || err != nil {
				t.Fatalf("delivered: %v %v", ok, err)
			}
			if ok, _ := st.WebhookDelivered(ctx, a.ID, t0.Add(3*time.Second), "200"); ok {
				t.Fatal("delivered twice")
			}
			got, err = st.ClaimWebhookEvents(ctx, t0.Add(time.Second).Add(lease), lease, 10)
			if err != nil || len(got) != 1 || got[0].ID != b.ID || got[0].Attempts != 2 {
				t.Fatalf("claim after the lease: %+v %v", got, err)
			}
			if ok, err := st.WebhookRetry(ctx, b.ID, 1, t0.Add(time.Hour), "500"); ok || err != nil {
				t.Fatalf("a stale claim rescheduled the event: %v %v", ok, err)
			}
			next := t0.Add(time.Minute)
			if ok, err := st.WebhookRetry(ctx, b.ID, 2, next, "500"); !ok || err != nil {
				t.Fatalf("retry: %v %v", ok, err)
			}
			got, err = st.ClaimWebhookEvents(ctx, next.Add(-time.Millisecond), lease, 10)
			if err != nil || len(got) != 1 || got[0].ID != c.ID || got[0].Attempts != 2 {
				t.Fatalf("claimed before next_attempt_at (only c's lease ran out): %+v %v", got, err)
			}
			c = got[0]
			got, err = st.ClaimWebhookEvents(ctx, next, lease, 10)
			if err != nil || len(got) != 1 || got[0].ID != b.ID || got[0].Attempts != 3 || got[0].LastStatus != "500" {
				t.Fatalf("claim at next_attempt_at: %+v %v", got, err)
			}
			if ok, err := st.WebhookFailed(ctx, b.ID, 3, next, "timeout"); !ok || err != nil {
				t.Fatalf("failed: %v %v", ok, err)
			}

			// c: released (shutdown) is due again at once, for anyone.
			if ok, err := st.WebhookRelease(ctx, c.ID, c.Attempts); !ok || err != nil {
				t.Fatalf("release: %v %v", ok, err)
			}
			got, err = st.ClaimWebhookEvents(ctx, next, lease, 10)
			if err != nil || len(got) != 1 || got[0].ID != c.ID {
				t.Fatalf("claim after release: %+v %v", got, err)
			}
			if got, _ := st.ClaimWebhookEvents(ctx, t0.Add(24*time.Hour), lease, 10); len(got) != 1 || got[0].ID != c.ID || got[0].Attempts != 4 {
				t.Fatalf("delivered or failed events claimed: %+v", got)
			}

			fa, _ := st.GetWebhookEvent(ctx, a.ID)
			fb, _ := st.GetWebhookEvent(ctx, b.ID)
			if fa.DeliveredAt == nil || fa.LastStatus != "200" || fb.FailedAt == nil || fb.LastStatus != "timeout" || fb.DeliveredAt != nil {
				t.Fatalf("outcomes: %+v %+v", fa, fb)
			}
			if n, err := st.PurgeWebhookEvents(ctx, t0.Add(time.Hour)); n != 2 || err != nil {
				t.Fatalf("purge: %d %v", n, err)
			}
			if _, err := st.GetWebhookEvent(ctx, c.ID); err != nil {
				t.Fatalf("purge deleted an undelivered event: %v", err)
			}
		})
	}
}

// Many claimers on two pools (two instances) at once: every event is
// claimed exactly once while its lease lasts.
func TestWebhookClaimConcurrent(t *testing.T) {
	for _, dialect := range storetest.Dialects() {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			url := storetest.URL(t, dialect)
			a := storetest.OpenURL(t, url)
			if err := a.Migrate(t.Context()); err != nil {
				t.Fatal(err)
			}
			b := storetest.OpenURL(t, url)
			a.EnableWebhooks()
			const n = 120
			for i := range n {
				if err := a.Audit(t.Context(), approval.AuditEntry{At: t0, ActorType: approval.ActorSystem,
					Event: "challenge.expired", ObjectID: fmt.Sprintf("c%d", i), UserID: "u"}); err != nil {
					t.Fatal(err)
				}
			}
			var (
				mu     sync.Mutex
				claims = map[string]int{}
				wg     sync.WaitGroup
			)
			for w := range 8 {
				st := a
				if w%2 == 1 {
					st = b
				}
				wg.Go(func() {
					for {
						got, err := st.ClaimWebhookEvents(t.Context(), t0.Add(time.Second), time.Minute, 3)
						if err != nil {
							t.Error(err)
							return
						}
						if len(got) == 0 {
							return
						}
						mu.Lock()
						total := 0
						for _, e := range got {
							claims[e.ID]++
						}
						for _, k := range claims {
							total += k
						}
						mu.Unlock()
						if total > 2*n {
							t.Error("leased events are claimed again and again")
							return
						}
					}
				})
			}
			wg.Wait()
			if len(claims) != n {
				t.Fatalf("%d events claimed, want %d", len(claims), n)
			}
			for id, k := range claims {
				if k != 1 {
					t.Errorf("event %s claimed %d times under one lease", id, k)
				}
			}
		})
	}
}
