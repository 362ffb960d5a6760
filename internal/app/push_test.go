package app_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app"
	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/config"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/push/pushtest"
)

// pushEnv is an instance whose FCM and APNs are local fakes that the real
// SDKs talk to.
type pushEnv struct {
	*apptest.Env
	fcm  *pushtest.FCM
	apns *pushtest.APNs
}

func startPush(t *testing.T, dialect string, opts ...apptest.Option) *pushEnv {
	t.Helper()
	f := pushtest.NewFCM()
	t.Cleanup(f.Close)
	a, err := pushtest.NewAPNs()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	keyPath, keyID, err := a.NewKey(t.TempDir(), "TEAM123456")
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]apptest.Option{
		apptest.WithEnv("APPROVALD_FCM_ENDPOINT", f.Endpoint()),
		apptest.WithEnv("APPROVALD_FCM_PROJECT_ID", "ctp-test"),
		apptest.WithEnv("APPROVALD_APNS_KEY_FILE", keyPath),
		apptest.WithEnv("APPROVALD_APNS_KEY_ID", keyID),
		apptest.WithEnv("APPROVALD_APNS_TEAM_ID", "TEAM123456"),
		apptest.WithEnv("APPROVALD_APNS_TOPIC", "com.clicktopurchase.app"),
		apptest.WithEnv("APPROVALD_APNS_ENDPOINT", a.URL()),
	}, opts...)
	return &pushEnv{Env: apptest.Start(t, dialect, opts...), fcm: f, apns: a}
}

func (e *pushEnv) link(t *testing.T, user, provider, token string) *deviceclient.Client {
	t.Helper()
	code := e.Enroll(user, nil).Str("code")
	d := e.NewDevice()
	platform := map[string]string{"fcm": "android", "apns": "ios"}[provider]
	if err := d.Enroll(context.Background(), code, "Phone", platform, deviceclient.Push{Provider: provider, Token: token}); err != nil {
		t.Fatal(err)
	}
	return d
}

func delivery(r *apptest.Response) map[string]any {
	d, _ := r.JSON()["delivery"].(map[string]any)
	return d
}

// stepUp has d approve a link_device challenge for user and returns its id.
func (e *pushEnv) stepUp(t *testing.T, d *deviceclient.Client, user string) string {
	t.Helper()
	ch := e.Challenge(user, "link_device", nil)
	if _, err := d.Decide(context.Background(), ch.Str("id"), deviceclient.Decision{Approve: true, Number: ch.Str("number")}); err != nil {
		t.Fatalf("step-up: %v", err)
	}
	return ch.Str("id")
}

func (e *pushEnv) linkWith(t *testing.T, user, provider, token, authorizedBy string) *deviceclient.Client {
	t.Helper()
	code := e.Enroll(user, map[string]any{"authorized_by": authorizedBy}).Str("code")
	d := e.NewDevice()
	if err := d.Enroll(context.Background(), code, "Phone 2", "ios", deviceclient.Push{Provider: provider, Token: token}); err != nil {
		t.Fatal(err)
	}
	return d
}

func fcmFor(msgs []pushtest.FCMMessage, token, typ string) []pushtest.FCMMessage {
	var out []pushtest.FCMMessage
	for _, m := range msgs {
		if m.Token == token && m.Data["type"] == typ {
			out = append(out, m)
		}
	}
	return out
}

func apnsFor(msgs []pushtest.APNsMessage, token, typ string) []pushtest.APNsMessage {
	var out []pushtest.APNsMessage
	for _, m := range msgs {
		t, _ := m.Payload["type"].(string)
		if t == "" {
			t = "challenge"
		}
		if m.Token == token && t == typ {
			out = append(out, m)
		}
	}
	return out
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A user with an Android phone (FCM) and an iPhone (APNs) gets the
// challenge on both, with the protocol's payloads and no context values;
// the decision sends the silent resolved push to both.
func TestPushToBothProviders(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		e := startPush(t, dialect, apptest.WithEnv("APPROVALD_MAX_DEVICES_PER_USER", "2"))
		android := e.link(t, "u-push", "fcm", "fcm-token-1")
		e.linkWith(t, "u-push", "apns", "apns-token-1", e.stepUp(t, android, "u-push"))

		e.fcm.Reset()
		e.apns.Reset()
		ch := e.Challenge("u-push", "submit_offer", map[string]any{
			"context": json.RawMessage(`{"Property":"12 High St, Leeds","Offer":"£350,000"}`)})
		id := ch.Str("id")
		if d := delivery(ch); d["push"] != "sent" || d["devices"] != float64(2) {
			t.Fatalf("delivery: %v", d)
		}
		waitUntil(t, "both pushes", func() bool {
			return len(fcmFor(e.fcm.Messages(), "fcm-token-1", "challenge")) == 1 && len(apnsFor(e.apns.Messages(), "apns-token-1", "challenge")) == 1
		})
		fm := fcmFor(e.fcm.Messages(), "fcm-token-1", "challenge")[0]
		if fm.Data["expires_at"] != ch.Str("expires_at") {
			t.Fatalf("FCM expires_at %q, the challenge's %q", fm.Data["expires_at"], ch.Str("expires_at"))
		}
		if fm.Data["challenge_id"] != id || fm.Data["action"] != "submit_offer" || fm.Data["title"] != "Approve your offer?" || fm.Data["number_matching"] != "false" {
			t.Fatalf("FCM data: %v", fm.Data)
		}
		if _, ok := fm.Message["notification"]; ok {
			t.Fatalf("FCM message has a notification block: %s", fm.Raw)
		}
		am := apnsFor(e.apns.Messages(), "apns-token-1", "challenge")[0]
		if am.Header.Get("apns-push-type") != "alert" || am.Header.Get("apns-priority") != "10" || am.Header.Get("apns-collapse-id") != id || am.Header.Get("apns-topic") != "com.clicktopurchase.app" || am.Auth != "token" {
			t.Fatalf("APNs headers: %v (auth %q)", am.Header, am.Auth)
		}
		aps, _ := am.Payload["aps"].(map[string]any)
		if aps["category"] != "APPROVAL_REQUEST" || aps["mutable-content"] != float64(1) || am.Payload["challenge_id"] != id || am.Payload["number_matching"] != false {
			t.Fatalf("APNs payload: %s", am.Raw)
		}
		for _, raw := range []string{string(fm.Raw), string(am.Raw)} {
			if strings.Contains(raw, "High St") || strings.Contains(raw, "350,000") {
				t.Fatalf("a push carries context values by default: %s", raw)
			}
		}

		if _, err := android.Decide(context.Background(), id, deviceclient.Decision{Approve: true}); err != nil {
			t.Fatal(err)
		}
		fcmResolved := func() (out []pushtest.FCMMessage) {
			for _, m := range fcmFor(e.fcm.Messages(), "fcm-token-1", "resolved") {
				if m.Data["challenge_id"] == id {
					out = append(out, m)
				}
			}
			return out
		}
		apnsResolved := func() (out []pushtest.APNsMessage) {
			for _, m := range apnsFor(e.apns.Messages(), "apns-token-1", "resolved") {
				if m.Payload["challenge_id"] == id {
					out = append(out, m)
				}
			}
			return out
		}
		waitUntil(t, "resolved pushes", func() bool { return len(fcmResolved()) == 1 && len(apnsResolved()) == 1 })
		r := apnsResolved()[0]
		aps, _ = r.Payload["aps"].(map[string]any)
		if r.Header.Get("apns-push-type") != "background" || r.Header.Get("apns-priority") != "5" || aps["content-available"] != float64(1) || aps["alert"] != nil || r.Payload["challenge_id"] != id {
			t.Fatalf("APNs resolved: %v %s", r.Header, r.Raw)
		}
	})
}

// With APPROVALD_PUSH_CONTEXT=full the push text carries the context.
func TestPushFullContext(t *testing.T) {
	e := startPush(t, "sqlite", apptest.WithEnv("APPROVALD_PUSH_CONTEXT", "full"),
		apptest.WithEnv("APPROVALD_PUSH_TITLES", "submit_offer=Send this offer?"))
	e.link(t, "u-full", "fcm", "fcm-full")
	e.Challenge("u-full", "submit_offer", map[string]any{"context": json.RawMessage(`{"Property":"12 High St","Offer":"£1"}`)})
	waitUntil(t, "push", func() bool { return len(fcmFor(e.fcm.Messages(), "fcm-full", "challenge")) == 1 })
	d := fcmFor(e.fcm.Messages(), "fcm-full", "challenge")[0].Data
	if d["title"] != "Send this offer?" || d["body"] != "Property: 12 High St · Offer: £1" {
		t.Fatalf("push text: %v", d)
	}
}

// A dead token is marked invalid (and audited) and not used again until
// the app sends a new one; the challenge reports delivery failed at once.
func TestDeadTokenIsInvalidated(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		e := startPush(t, dialect)
		d := e.link(t, "u-dead", "fcm", "fcm-dead")
		e.fcm.FailToken("fcm-dead", 0, "UNREGISTERED")
		ch := e.Challenge("u-dead", "login", nil)
		if got := delivery(ch)["push"]; got != "failed" {
			t.Fatalf("delivery with a dead token: %v", got)
		}
		log, err := e.Store.AuditLog(context.Background(), d.DeviceID)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, a := range log {
			found = found || a.Event == "device.push_token_invalid"
		}
		if !found {
			t.Fatalf("no audit record of the invalidation: %+v", log)
		}
		before := e.fcm.Count()
		if got := delivery(e.Challenge("u-dead", "login", map[string]any{"ip": "192.0.2.1"}))["push"]; got != "failed" {
			t.Fatalf("second challenge: %v", got)
		}
		if e.fcm.Count() != before {
			t.Fatal("the dead token was used again")
		}
		if err := d.SetPush(context.Background(), deviceclient.Push{Provider: "fcm", Token: "fcm-fresh"}); err != nil {
			t.Fatal(err)
		}
		if got := delivery(e.Challenge("u-dead", "login", map[string]any{"ip": "192.0.2.2"}))["push"]; got != "sent" {
			t.Fatalf("after a new token: %v", got)
		}
		waitUntil(t, "push to the new token", func() bool { return len(fcmFor(e.fcm.Messages(), "fcm-fresh", "challenge")) == 1 })
	})
}

// 429 is retried (honouring Retry-After) until the provider accepts.
func TestPushRetriesThenSucceeds(t *testing.T) {
	e := startPush(t, "sqlite")
	e.link(t, "u-429", "apns", "apns-429")
	e.apns.FailNext(2, 429, "TooManyRequests", "1")
	ch := e.Challenge("u-429", "login", nil)
	if got := delivery(ch)["push"]; got != "sent" {
		t.Fatalf("delivery while retrying: %v", got)
	}
	waitUntil(t, "the third attempt", func() bool { return len(apnsFor(e.apns.Messages(), "apns-429", "challenge")) == 3 })
	msgs := apnsFor(e.apns.Messages(), "apns-429", "challenge")
	if msgs[0].Status != 429 || msgs[1].Status != 429 || msgs[2].Status != 200 {
		t.Fatalf("statuses: %d %d %d", msgs[0].Status, msgs[1].Status, msgs[2].Status)
	}
	if gap := msgs[2].Received.Sub(msgs[1].Received); gap < 900*time.Millisecond {
		t.Fatalf("Retry-After: 1 was not honoured (retried after %v)", gap)
	}
}

// 5xx is retried until the challenge ends, then given up; with every
// device refused, watchers learn delivery failed.
func TestPushGivesUpAtExpiry(t *testing.T) {
	e := startPush(t, "sqlite")
	e.link(t, "u-5xx", "fcm", "fcm-5xx")
	e.fcm.FailNext(1000, 503, "UNAVAILABLE", "")
	ch := e.Challenge("u-5xx", "login", map[string]any{"ttl_seconds": 30})
	if got := delivery(ch)["push"]; got != "sent" {
		t.Fatalf("delivery while retrying: %v", got)
	}
	waitUntil(t, "a retry", func() bool { return len(fcmFor(e.fcm.Messages(), "fcm-5xx", "challenge")) >= 2 })
	e.Advance(31 * time.Second)
	time.Sleep(2 * time.Second) // longer than the backoff so far
	attempts := func() int { return len(fcmFor(e.fcm.Messages(), "fcm-5xx", "challenge")) }
	n := attempts()
	time.Sleep(3 * time.Second)
	if attempts() != n {
		t.Fatalf("still pushing the challenge after it ended: %d -> %d", n, attempts())
	}
}

// A provider that hangs does not hold the create call past its budget.
func TestHangingProviderDoesNotDelayCreate(t *testing.T) {
	e := startPush(t, "sqlite")
	e.link(t, "u-hang", "fcm", "fcm-hang")
	e.fcm.Hang(8 * time.Second)
	start := time.Now()
	ch := e.Challenge("u-hang", "login", nil)
	took := time.Since(start)
	if got := delivery(ch)["push"]; got != "sent" {
		t.Fatalf("delivery: %v", got)
	}
	if took >= 8*time.Second {
		t.Fatalf("the create call waited for the hanging provider (%v)", took)
	}
	if m := fcmFor(e.fcm.Messages(), "fcm-hang", "challenge"); len(m) != 1 || m[0].Status != 0 {
		t.Fatalf("the provider should still be hanging when create answered: %+v", m)
	}
	e.fcm.Hang(0)
}

// A device whose provider is not configured is reported failed, not a crash.
func TestUnconfiguredProviderFails(t *testing.T) {
	env := apptest.Start(t, "sqlite")
	code := env.Enroll("u-nofcm", nil).Str("code")
	d := env.NewDevice()
	if err := d.Enroll(context.Background(), code, "P", "android", deviceclient.Push{Provider: "fcm", Token: "t"}); err != nil {
		t.Fatal(err)
	}
	if got := delivery(env.Challenge("u-nofcm", "login", nil))["push"]; got != "failed" {
		t.Fatalf("delivery without FCM configured: %v", got)
	}
}

// Linking a new device retires the old one, which is told so by a push.
func TestRetiredPush(t *testing.T) {
	e := startPush(t, "sqlite")
	old := e.link(t, "u-ret", "fcm", "fcm-old")
	e.linkWith(t, "u-ret", "apns", "apns-new", e.stepUp(t, old, "u-ret"))
	waitUntil(t, "the retired push", func() bool { return len(fcmFor(e.fcm.Messages(), "fcm-old", "retired")) == 1 })
}

// Start-up with a malformed credentials file or key names the setting.
func TestBadPushCredentials(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"type":"service_account","private_key":"nope"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	badP8 := filepath.Join(dir, "bad.p8")
	if err := os.WriteFile(badP8, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, vars := range map[string]map[string]string{
		"APPROVALD_FCM_CREDENTIALS_FILE": {"APPROVALD_FCM_CREDENTIALS_FILE": bad},
		"APPROVALD_APNS_KEY_FILE":        {"APPROVALD_APNS_KEY_FILE": badP8, "APPROVALD_APNS_KEY_ID": "ABC", "APPROVALD_APNS_TEAM_ID": "T", "APPROVALD_APNS_TOPIC": "x"},
	} {
		vars["APPROVALD_DATABASE_URL"] = "sqlite:" + filepath.Join(t.TempDir(), "a.db")
		cfg, err := config.Load(func(k string) string { return vars[k] })
		if err != nil {
			t.Fatal(err)
		}
		a, err := app.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err == nil {
			a.Close()
			t.Fatalf("%s: start-up accepted a malformed file", name)
		}
		if !strings.Contains(err.Error(), name) {
			t.Fatalf("%s: error does not name the setting: %v", name, err)
		}
	}
}
