package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/store"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
	"github.com/clicktopurchase/approvald/internal/webhook"
	wt "github.com/clicktopurchase/approvald/internal/webhook/webhooktest"
)

// Webhooks end to end: real instances, real databases, a real receiver on
// 127.0.0.1 that verifies every signature.

const hookSecret = "test-webhook-secret-0123456789"

func hookEnv(url string) []apptest.Option {
	return []apptest.Option{
		apptest.WithEnv("APPROVALD_WEBHOOK_URL", url),
		apptest.WithEnv("APPROVALD_WEBHOOK_SECRET", hookSecret),
	}
}

// fastHooks shortens the dispatcher's waits (before anything happens on env).
func fastHooks(t *testing.T, env *apptest.Env, f func(o *webhook.Options)) {
	t.Helper()
	if env.App.Webhooks == nil {
		t.Fatal("webhooks are not on")
	}
	env.App.Webhooks.Tune(func(o *webhook.Options) {
		o.PollInterval = 20 * time.Millisecond
		o.Backoff = 100 * time.Millisecond
		o.MaxBackoff = 400 * time.Millisecond
		if f != nil {
			f(o)
		}
	})
}

func startHooked(t *testing.T, dialect string, rcv *wt.Receiver) *apptest.Env {
	t.Helper()
	env := apptest.Start(t, dialect, hookEnv(rcv.URL)...)
	fastHooks(t, env, nil)
	return env
}

// apiKeyName is the name of env's API key.
func apiKeyName(t *testing.T, env *apptest.Env) string {
	t.Helper()
	keys, err := env.Store.ListAPIKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Hash == auth.HashSecret(env.APIKey) {
			return k.Name
		}
	}
	t.Fatal("the instance's API key is not stored")
	return ""
}

// sameJSON fails unless a and b are the same JSON value.
func sameJSON(t *testing.T, what string, a, b []byte) {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v: %s", what, err, a)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%s: %v: %s", what, err, b)
	}
	if !reflect.DeepEqual(x, y) {
		t.Fatalf("%s differ:\n%s\n%s", what, a, b)
	}
}

// checkChallengeEvent waits for the one typ event about challenge id and
// checks its data against GET /v1/challenges/{id} and its stored outbox row.
func checkChallengeEvent(t *testing.T, env *apptest.Env, rcv *wt.Receiver, typ, id string) wt.Delivery {
	t.Helper()
	d := rcv.Wait(t, typ, wt.ChallengeID(id), 10*time.Second)[0]
	get := wantStatus(t, "GET challenge", env.RP("GET", "/v1/challenges/"+id, nil), http.StatusOK)
	sameJSON(t, typ+" data and GET /v1/challenges/"+id, d.Data, get.Body)
	if len(d.ID) < 22 {
		t.Errorf("%s: event id %q is shorter than 128 bits", typ, d.ID)
	}
	if _, err := time.Parse(time.RFC3339, d.CreatedAt); err != nil {
		t.Errorf("%s: created_at %q: %v", typ, d.CreatedAt, err)
	}
	if dt := d.At.Sub(d.T); dt < -time.Second || dt > 2*time.Second {
		t.Errorf("%s: signed at %v, received at %v", typ, d.T, d.At)
	}
	evs, err := env.Store.WebhookEvents(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range evs {
		if e.ID == d.ID {
			found = e.Type == typ
		}
	}
	if !found {
		t.Errorf("%s: event %s is not in the outbox as such: %+v", typ, d.ID, evs)
	}
	return d
}

// onlyOnce waits a little (many polls) and checks that each (type, match)
// was received exactly once.
func onlyOnce(t *testing.T, rcv *wt.Receiver, checks map[string]func(wt.Delivery) bool) {
	t.Helper()
	time.Sleep(300 * time.Millisecond)
	for key, match := range checks {
		typ, _, _ := strings.Cut(key, " ")
		if got := rcv.Find(typ, match); len(got) != 1 {
			t.Errorf("%s: %d requests, want exactly 1", key, len(got))
		}
	}
}

// Every challenge.* event and fraud.reported: data is the challenge as the
// RP reads it.
func TestWebhookChallengeEvents(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		rcv := wt.Start(t, []byte(hookSecret), nil)
		env := startHooked(t, dialect, rcv)
		ctx := context.Background()
		phone := env.LinkDevice("u-wh")

		approved := env.Challenge("u-wh", "submit_offer", map[string]any{
			"context": json.RawMessage(`{"Property": "12 High St, Leeds", "Offer": "£350,000"}`), "ip": "203.0.113.9"}).Str("id")
		if st, err := phone.Decide(ctx, approved, deviceclient.Decision{Approve: true}); err != nil || st != "approved" {
			t.Fatalf("approve: %q %v", st, err)
		}
		d := checkChallengeEvent(t, env, rcv, "challenge.approved", approved)
		if data := d.DataMap(); data["status"] != "approved" || data["result_token"] == nil || d.CreatedAt != data["decided_at"] {
			t.Fatalf("approved data: %s (created_at %s)", d.Data, d.CreatedAt)
		}

		cancelled := env.Challenge("u-wh", "login", nil).Str("id")
		cancel(t, env, cancelled)
		checkChallengeEvent(t, env, rcv, "challenge.cancelled", cancelled)

		// A fraud deny: challenge.denied and fraud.reported, and the
		// user's other pending challenge is cancelled.
		other := env.Challenge("u-wh", "login", map[string]any{"ip": "198.51.100.7"}).Str("id")
		denied := env.Challenge("u-wh", "login", nil).Str("id")
		if st, err := phone.Decide(ctx, denied, deviceclient.Decision{Fraud: true}); err != nil || st != "denied" {
			t.Fatalf("deny: %q %v", st, err)
		}
		checkChallengeEvent(t, env, rcv, "challenge.denied", denied)
		fraud := checkChallengeEvent(t, env, rcv, "fraud.reported", denied)
		if fraud.DataMap()["fraud_reported"] != true {
			t.Fatalf("fraud.reported data: %s", fraud.Data)
		}
		checkChallengeEvent(t, env, rcv, "challenge.cancelled", other)

		// Expiry, by the sweeper.
		expired := env.Challenge("u-exp", "login", map[string]any{"ttl_seconds": 30}).Str("id")
		env.Advance(31 * time.Second)
		checkChallengeEvent(t, env, rcv, "challenge.expired", expired)

		onlyOnce(t, rcv, map[string]func(wt.Delivery) bool{
			"challenge.approved":             wt.ChallengeID(approved),
			"challenge.cancelled":            wt.ChallengeID(cancelled),
			"challenge.cancelled (by fraud)": wt.ChallengeID(other),
			"challenge.denied":               wt.ChallengeID(denied),
			"fraud.reported":                 wt.ChallengeID(denied),
			"challenge.expired":              wt.ChallengeID(expired),
		})
		ids := map[string]bool{}
		for _, d := range rcv.Deliveries() {
			if d.Attempt != 1 || ids[d.ID] {
				t.Errorf("event %s (%s) received more than once", d.ID, d.Type)
			}
			ids[d.ID] = true
		}
	})
}

// device.linked and device.removed: who did it (by) and the step-up.
func TestWebhookDeviceEvents(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		rcv := wt.Start(t, []byte(hookSecret), nil)
		env := startHooked(t, dialect, rcv)
		ctx := context.Background()
		key := apiKeyName(t, env)
		deviceEvent := func(typ, deviceID, user, by, stepUp string) map[string]any {
			t.Helper()
			d := rcv.Wait(t, typ, wt.DeviceID(deviceID), 10*time.Second)[0]
			data := d.DataMap()
			got, has := data["step_up_method"]
			if data["user_id"] != user || data["by"] != by || (stepUp == "" && has) || (stepUp != "" && got != stepUp) {
				t.Fatalf("%s of %s: %s; want user %s, by %q, step_up_method %q", typ, deviceID, d.Data, user, by, stepUp)
			}
			return data
		}
		deviceJSON := func(user string) []byte {
			t.Helper()
			var list struct {
				Devices []json.RawMessage `json:"devices"`
			}
			r := wantStatus(t, "devices", env.RP("GET", "/v1/users/"+user+"/devices", nil), http.StatusOK)
			if err := json.Unmarshal(r.Body, &list); err != nil || len(list.Devices) != 1 {
				t.Fatalf("devices of %s: %s", user, r.Body)
			}
			return list.Devices[0]
		}

		// A first device: by the key that made the enrollment, no step-up.
		first := env.LinkDevice("u-dev")
		data := deviceEvent("device.linked", first.DeviceID, "u-dev", key, "")
		got, _ := json.Marshal(data["device"])
		sameJSON(t, "device.linked device and GET /v1/users/u-dev/devices", got, deviceJSON("u-dev"))

		// A second device, authorised by the first one's approval.
		step := env.Challenge("u-dev", "link_device", nil)
		if st, err := first.Decide(ctx, step.Str("id"), deviceclient.Decision{Approve: true, Number: step.Str("number")}); err != nil || st != "approved" {
			t.Fatalf("step-up: %q %v", st, err)
		}
		second := env.NewDevice()
		if err := second.Enroll(ctx, env.Enroll("u-dev", map[string]any{"authorized_by": step.Str("id")}).Str("code"), "Second phone", "ios", deviceclient.Push{Provider: "none"}); err != nil {
			t.Fatal(err)
		}
		data = deviceEvent("device.linked", second.DeviceID, "u-dev", key, "push")
		if dev, _ := data["device"].(map[string]any); dev["name"] != "Second phone" || dev["platform"] != "ios" {
			t.Fatalf("device: %v", data["device"])
		}

		// The RP removes it at the user's request, with a step-up.
		step = env.Challenge("u-dev", "link_device", nil)
		if st, err := second.Decide(ctx, step.Str("id"), deviceclient.Decision{Approve: true, Number: step.Str("number")}); err != nil || st != "approved" {
			t.Fatalf("step-up: %q %v", st, err)
		}
		wantStatus(t, "remove", env.RP("DELETE", "/v1/users/u-dev/devices/"+second.DeviceID+"?authorized_by="+step.Str("id"), nil), http.StatusNoContent)
		deviceEvent("device.removed", second.DeviceID, "u-dev", key, "push")

		// The RP removes one without a step-up.
		third := env.LinkDevice("u-rm")
		wantStatus(t, "remove", env.RP("DELETE", "/v1/users/u-rm/devices/"+third.DeviceID, nil), http.StatusNoContent)
		deviceEvent("device.removed", third.DeviceID, "u-rm", key, "")

		// The app unlinks itself.
		self := env.LinkDevice("u-self")
		if err := self.Unlink(ctx); err != nil {
			t.Fatal(err)
		}
		deviceEvent("device.removed", self.DeviceID, "u-self", "device", "")

		// "This wasn't me" on the new-device notice: removed by the link,
		// and a fraud report about the device.
		undone := env.NewDevice()
		if err := undone.Enroll(ctx, env.Enroll("u-undo", map[string]any{"user_email": "undo@example.com"}).Str("code"), "Not mine", "android", deviceclient.Push{Provider: "none"}); err != nil {
			t.Fatal(err)
		}
		deviceEvent("device.linked", undone.DeviceID, "u-undo", key, "")
		tok := noticeToken(t, env, "undo@example.com")
		if p := postPage(t, env, tok, decide("deny")); p.Status != http.StatusOK || !strings.Contains(p.Body, "Device unlinked") {
			t.Fatalf("This wasn't me: %d %s", p.Status, p.Body)
		}
		deviceEvent("device.removed", undone.DeviceID, "u-undo", "link", "")
		data = deviceEvent("fraud.reported", undone.DeviceID, "u-undo", "link", "")
		if dev, _ := data["device"].(map[string]any); dev["name"] != "Not mine" {
			t.Fatalf("fraud.reported device: %v", data)
		}

		onlyOnce(t, rcv, map[string]func(wt.Delivery) bool{
			"device.linked first":   wt.DeviceID(first.DeviceID),
			"device.linked second":  wt.DeviceID(second.DeviceID),
			"device.removed second": wt.DeviceID(second.DeviceID),
			"device.removed third":  wt.DeviceID(third.DeviceID),
			"device.removed self":   wt.DeviceID(self.DeviceID),
			"device.removed undone": wt.DeviceID(undone.DeviceID),
			"fraud.reported undone": wt.DeviceID(undone.DeviceID),
		})
	})
}

// noticeToken waits for the new-device notice to addr in the development
// mailbox and returns its link token.
func noticeToken(t *testing.T, env *apptest.Env, addr string) string {
	t.Helper()
	re := regexp.MustCompile(regexp.QuoteMeta(env.URL+"/e/") + `([A-Za-z0-9_-]+)`)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range env.App.DevMail.Recent() {
			if strings.Contains(m.To, addr) {
				if sm := re.FindStringSubmatch(m.Text); sm != nil {
					return sm[1]
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no new-device notice to %s", addr)
	return ""
}

// A receiver that fails twice gets the event a third time: the same id and
// body, signed afresh each time.
func TestWebhookRetry(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		rcv := wt.Start(t, []byte(hookSecret), func(_ string, attempt int) (int, time.Duration) {
			if attempt <= 2 {
				return http.StatusInternalServerError, 0
			}
			return http.StatusOK, 0
		})
		env := apptest.Start(t, dialect, hookEnv(rcv.URL)...)
		// At least a second between attempts, so that each t differs.
		fastHooks(t, env, func(o *webhook.Options) { o.Backoff, o.MaxBackoff = 2200*time.Millisecond, 2200*time.Millisecond })
		id := env.Challenge("u-retry", "login", nil).Str("id")
		cancel(t, env, id)
		rcv.Wait(t, "challenge.cancelled", wt.ChallengeID(id), 20*time.Second)
		got := rcv.Find("challenge.cancelled", wt.ChallengeID(id))
		if len(got) != 3 {
			t.Fatalf("%d attempts, want 3", len(got))
		}
		for i, d := range got {
			if d.Attempt != i+1 || d.Status != []int{500, 500, 200}[i] || d.ID != got[0].ID || string(d.Body) != string(got[0].Body) {
				t.Fatalf("attempt %d: id %s, attempt %d, status %d; body %s", i+1, d.ID, d.Attempt, d.Status, d.Body)
			}
			if dt := d.At.Sub(d.T); dt < -time.Second || dt > 2*time.Second {
				t.Errorf("attempt %d signed at %v, sent at %v", i+1, d.T, d.At)
			}
			if i > 0 && (d.T.Equal(got[i-1].T) || d.Signature == got[i-1].Signature) {
				t.Errorf("attempt %d was not signed afresh: %s then %s", i+1, got[i-1].Signature, d.Signature)
			}
		}
		ev := waitDelivered(t, env.Store, got[0].ID)
		if ev.Attempts != 3 || ev.LastStatus != "200" {
			t.Fatalf("outbox: %+v", ev)
		}
		if s := env.App.Webhooks.Stats(); s.Retried < 2 || s.Delivered < 1 {
			t.Fatalf("stats: %+v", s)
		}
	})
}

// A receiver that hangs past the timeout gets the event again.
func TestWebhookTimeout(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		rcv := wt.Start(t, []byte(hookSecret), func(_ string, attempt int) (int, time.Duration) {
			if attempt == 1 {
				return http.StatusOK, 5 * time.Second // too late
			}
			return http.StatusOK, 0
		})
		env := apptest.Start(t, dialect, hookEnv(rcv.URL)...)
		fastHooks(t, env, func(o *webhook.Options) { o.Timeout = 300 * time.Millisecond; o.Backoff = 200 * time.Millisecond })
		id := env.Challenge("u-hang", "login", nil).Str("id")
		cancel(t, env, id)
		rcv.Wait(t, "challenge.cancelled", wt.ChallengeID(id), 10*time.Second)
		got := rcv.Find("challenge.cancelled", wt.ChallengeID(id))
		if len(got) != 2 || got[0].Status != 0 || got[1].Status != 200 || got[0].ID != got[1].ID {
			t.Fatalf("attempts: %+v", got)
		}
		if d := got[0].At; got[1].At.Sub(d) > 3*time.Second {
			t.Errorf("the retry came %v after the hung attempt", got[1].At.Sub(d))
		}
		if ev := waitDelivered(t, env.Store, got[0].ID); ev.Attempts != 2 || ev.LastStatus != "200" {
			t.Fatalf("outbox: %+v", ev)
		}
	})
}

// An event not yet delivered when its instance stops is delivered by
// another instance on the same database.
func TestWebhookSurvivesRestart(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		addr := wt.FreeAddr(t) // the receiver is down
		url := "http://" + addr + "/hooks/approvald"
		st := storetest.Open(t, dialect)
		first := apptest.StartOn(t, st, hookEnv(url)...)
		fastHooks(t, first, func(o *webhook.Options) { o.Backoff, o.MaxBackoff = 300*time.Millisecond, 300*time.Millisecond })
		id := first.Challenge("u-restart", "login", nil).Str("id")
		cancel(t, first, id)
		ev := waitOutbox(t, st, id, func(e store.WebhookEvent) bool { return e.Attempts >= 1 && e.LastStatus == "error" })
		if err := first.Stop(); err != nil {
			t.Fatal(err)
		}

		rcv := wt.StartOn(t, addr, []byte(hookSecret), nil)
		second := apptest.StartOn(t, st, hookEnv(url)...)
		fastHooks(t, second, nil)
		d := rcv.Wait(t, "challenge.cancelled", wt.ChallengeID(id), 10*time.Second)
		if len(d) != 1 || d[0].ID != ev.ID {
			t.Fatalf("after the restart: %+v, want event %s once", d, ev.ID)
		}
	})
}

// waitDelivered waits until the outbox records event id delivered (just
// after the receiver answered).
func waitDelivered(t *testing.T, st *store.Store, id string) *store.WebhookEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev, err := st.GetWebhookEvent(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ev.DeliveredAt != nil {
			return ev
		}
		if time.Now().After(deadline) {
			t.Fatalf("event not recorded delivered: %+v", ev)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitOutbox waits until the outbox's only event about objectID satisfies ok.
func waitOutbox(t *testing.T, st *store.Store, objectID string, ok func(store.WebhookEvent) bool) store.WebhookEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := st.WebhookEvents(context.Background(), objectID)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 1 && ok(evs[0]) {
			return evs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("outbox of %s: %+v", objectID, evs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Two instances on one database and one receiver: each event is sent once,
// never by both at the same time.
func TestWebhookTwoInstances(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		rcv := wt.Start(t, []byte(hookSecret), func(string, int) (int, time.Duration) {
			return http.StatusOK, 30 * time.Millisecond // a slow receiver widens any race
		})
		st := storetest.Open(t, dialect)
		envs := []*apptest.Env{apptest.StartOn(t, st, hookEnv(rcv.URL)...), apptest.StartOn(t, st, hookEnv(rcv.URL)...)}
		for _, e := range envs {
			fastHooks(t, e, func(o *webhook.Options) { o.PollInterval = 5 * time.Millisecond })
		}
		const n = 30
		var ids []string
		for i := range n {
			e := envs[i%2]
			id := e.Challenge(fmt.Sprintf("u-two-%d", i), "login", nil).Str("id")
			cancel(t, e, id)
			ids = append(ids, id)
		}
		for _, id := range ids {
			rcv.Wait(t, "challenge.cancelled", wt.ChallengeID(id), 20*time.Second)
		}
		time.Sleep(300 * time.Millisecond)
		seen := map[string]int{}
		for _, d := range rcv.Deliveries() {
			seen[d.ID]++
		}
		if len(seen) != n {
			t.Fatalf("%d events received, want %d", len(seen), n)
		}
		for id, k := range seen {
			if k != 1 {
				t.Errorf("event %s received %d times", id, k)
			}
		}
		for id := range seen {
			waitDelivered(t, st, id)
		}
		var sent uint64
		for _, e := range envs {
			sent += e.App.Webhooks.Stats().Delivered
		}
		if sent != n {
			t.Errorf("the instances delivered %d events, want %d", sent, n)
		}
	})
}
