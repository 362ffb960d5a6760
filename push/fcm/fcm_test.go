package fcm_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/push"
	"github.com/clicktopurchase/approvald/push/fcm"
	"github.com/clicktopurchase/approvald/push/pushtest"
)

func TestMain(m *testing.M) {
	// The TLS fake (benchmarks) is trusted through the system roots.
	dir, err := os.MkdirTemp("", "fcm-test-ca")
	if err != nil {
		panic(err)
	}
	path, err := pushtest.WriteCA(dir)
	if err != nil {
		panic(err)
	}
	os.Setenv("SSL_CERT_FILE", path)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const project = "approvald-test"

func newSender(t testing.TB, f *pushtest.FCM) *fcm.Sender {
	t.Helper()
	s, err := fcm.New(context.Background(), fcm.Config{ProjectID: project, Endpoint: f.Endpoint()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func decode(t *testing.T, raw []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return m
}

func challenge(ttl time.Duration) push.Message {
	return push.Message{
		Kind: push.KindChallenge, ChallengeID: "ch_8f3a", Action: "submit_offer",
		Title: "Approve your offer?", Body: "clicktopurchase wants to submit your offer.",
		ExpiresAt: time.Now().Add(ttl), NumberMatching: true,
	}
}

func TestChallengeMessageJSON(t *testing.T) {
	f := pushtest.NewFCM()
	defer f.Close()
	s := newSender(t, f)

	m := challenge(180*time.Second + 500*time.Millisecond) // TTL rounds down to 180s
	if r := s.Send(context.Background(), "reg-token-1", m); r.Outcome != push.Delivered {
		t.Fatalf("Send = %+v", r)
	}
	got := f.Messages()
	if len(got) != 1 {
		t.Fatalf("fake got %d requests", len(got))
	}
	g := got[0]
	if g.Project != project || g.Token != "reg-token-1" || g.ValidateOnly {
		t.Errorf("project %q token %q validate_only %v", g.Project, g.Token, g.ValidateOnly)
	}
	want := decode(t, []byte(fmt.Sprintf(`{
		"token": "reg-token-1",
		"data": {
			"type": "challenge",
			"challenge_id": "ch_8f3a",
			"action": "submit_offer",
			"title": "Approve your offer?",
			"body": "clicktopurchase wants to submit your offer.",
			"expires_at": %q,
			"number_matching": "true"
		},
		"android": {"collapse_key": "ch_8f3a", "priority": "high", "ttl": "180s"}
	}`, m.ExpiresAt.UTC().Format("2006-01-02T15:04:05.999Z07:00"))))
	msg := decode(t, g.Raw)
	// The TTL is the remaining life in whole seconds: 180s, or 179s on a
	// machine slow enough to spend half a second before the send.
	if android, _ := msg["android"].(map[string]any); android["ttl"] == "179s" {
		android["ttl"] = "180s"
	}
	if !reflect.DeepEqual(msg, want) {
		t.Errorf("message JSON\n got %s\nwant %v", g.Raw, want)
	}
	if _, ok := g.Message["notification"]; ok {
		t.Error("a challenge must be data-only: it has a notification block")
	}
	if a := g.Header.Get("Authorization"); a != "" {
		t.Errorf("unauthenticated sender sent Authorization %q", a)
	}
	if v := g.Header.Get("X-Goog-Api-Format-Version"); v != "2" {
		t.Errorf("X-GOOG-API-FORMAT-VERSION = %q (not the Admin SDK?)", v)
	}

	// Number matching off is the string "false".
	m.NumberMatching = false
	s.Send(context.Background(), "reg-token-1", m)
	if nm := f.Messages()[1].Data["number_matching"]; nm != "false" {
		t.Errorf("number_matching = %q, want \"false\"", nm)
	}
}

func TestSilentMessagesJSON(t *testing.T) {
	f := pushtest.NewFCM()
	defer f.Close()
	s := newSender(t, f)
	ctx := context.Background()

	if r := s.Send(ctx, "tok", push.Message{Kind: push.KindResolved, ChallengeID: "ch_8f3a"}); r.Outcome != push.Delivered {
		t.Fatalf("resolved: %+v", r)
	}
	if r := s.Send(ctx, "tok", push.Message{Kind: push.KindRetired}); r.Outcome != push.Delivered {
		t.Fatalf("retired: %+v", r)
	}
	got := f.Messages()
	wantResolved := decode(t, []byte(`{
		"token": "tok",
		"data": {"type": "resolved", "challenge_id": "ch_8f3a"},
		"android": {"collapse_key": "ch_8f3a", "priority": "normal", "ttl": "3600s"}
	}`))
	wantRetired := decode(t, []byte(`{
		"token": "tok",
		"data": {"type": "retired"},
		"android": {"priority": "normal", "ttl": "3600s"}
	}`))
	if msg := decode(t, got[0].Raw); !reflect.DeepEqual(msg, wantResolved) {
		t.Errorf("resolved JSON %s", got[0].Raw)
	}
	if msg := decode(t, got[1].Raw); !reflect.DeepEqual(msg, wantRetired) {
		t.Errorf("retired JSON %s", got[1].Raw)
	}
}

func TestErrorOutcomes(t *testing.T) {
	f := pushtest.NewFCM()
	defer f.Close()
	s := newSender(t, f)
	m := challenge(time.Minute)

	for _, tc := range []struct {
		status  int
		code    string
		outcome push.Outcome
		reason  string
	}{
		{0, pushtest.FCMUnregistered, push.TokenInvalid, "UNREGISTERED"},
		{0, pushtest.FCMSenderIDMismatch, push.TokenInvalid, "SENDER_ID_MISMATCH"},
		{0, pushtest.FCMQuotaExceeded, push.Retry, "QUOTA_EXCEEDED"},
		{0, pushtest.FCMUnavailable, push.Retry, "UNAVAILABLE"},
		{0, pushtest.FCMInternal, push.Retry, "INTERNAL"},
		{0, pushtest.FCMInvalidArgument, push.Failed, "INVALID_ARGUMENT"},
		{0, pushtest.FCMThirdPartyAuthError, push.Failed, "THIRD_PARTY_AUTH_ERROR"},
		// Plain Google API errors, without FCM details.
		{401, "", push.Failed, "UNAUTHENTICATED"},
		{403, "", push.Failed, "PERMISSION_DENIED"},
		{404, "", push.Failed, "NOT_FOUND"},
		{429, "", push.Retry, "RESOURCE_EXHAUSTED"},
		{500, "", push.Retry, "INTERNAL"},
		{502, "", push.Retry, "UNKNOWN"},
		{503, "", push.Retry, "UNAVAILABLE"},
	} {
		t.Run(fmt.Sprintf("%d-%s", tc.status, tc.code), func(t *testing.T) {
			before := f.Count()
			f.FailNext(1, tc.status, tc.code, "")
			r := s.Send(context.Background(), "tok", m)
			if r.Outcome != tc.outcome || r.Reason != tc.reason {
				t.Errorf("got %v/%s, want %v/%s", r.Outcome, r.Reason, tc.outcome, tc.reason)
			}
			// One attempt per Send: the SDK's own retry loop (503) is off.
			if n := f.Count() - before; n != 1 {
				t.Errorf("the fake got %d requests for one Send", n)
			}
		})
	}
	if r := s.Send(context.Background(), "tok", m); r.Outcome != push.Delivered {
		t.Errorf("after the scripted failures: %+v", r)
	}
	counts := s.Counts()
	if counts["token_invalid/UNREGISTERED"] != 1 || counts["retry/UNAVAILABLE"] != 2 || counts["delivered"] != 1 {
		t.Errorf("Counts = %v", counts)
	}
}

func TestRetryAfter(t *testing.T) {
	f := pushtest.NewFCM()
	defer f.Close()
	s := newSender(t, f)
	m := challenge(time.Minute)

	f.FailNext(1, 429, pushtest.FCMQuotaExceeded, "30")
	r := s.Send(context.Background(), "tok", m)
	if r.Outcome != push.Retry || r.RetryAfter != 30*time.Second || r.Reason != "QUOTA_EXCEEDED" {
		t.Errorf("429: %+v", r)
	}
	// A 503's Retry-After reaches the caller too (and the SDK does not sleep on it).
	f.FailNext(1, 503, pushtest.FCMUnavailable, "7")
	start := time.Now()
	r = s.Send(context.Background(), "tok", m)
	if r.Outcome != push.Retry || r.RetryAfter != 7*time.Second {
		t.Errorf("503: %+v", r)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("503 Send took %v", d)
	}
	if r := s.Send(context.Background(), "tok", m); r.Outcome != push.Delivered {
		t.Errorf("then: %+v", r)
	}
}

func TestFailTokenAndHang(t *testing.T) {
	f := pushtest.NewFCM()
	defer f.Close()
	s := newSender(t, f)
	m := challenge(time.Minute)
	ctx := context.Background()

	f.FailToken("dead", 0, pushtest.FCMUnregistered)
	if r := s.Send(ctx, "dead", m); r.Outcome != push.TokenInvalid {
		t.Errorf("dead token: %+v", r)
	}
	if r := s.Send(ctx, "alive", m); r.Outcome != push.Delivered {
		t.Errorf("other token: %+v", r)
	}
	f.FailToken("dead", -1, "")
	if r := s.Send(ctx, "dead", m); r.Outcome != push.Delivered {
		t.Errorf("cleared token: %+v", r)
	}

	f.Hang(10 * time.Second)
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := s.Send(tctx, "tok", m)
	if r.Outcome != push.Retry || r.Reason != "timeout" {
		t.Errorf("hanging provider: %+v", r)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Send took %v with a 200ms context", d)
	}
}

func TestNetworkError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	s, err := fcm.New(context.Background(), fcm.Config{ProjectID: project, Endpoint: "http://" + addr + "/v1"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := s.Send(context.Background(), "tok", challenge(time.Minute))
	if r.Outcome != push.Retry || r.Reason != "network" {
		t.Errorf("connection refused: %+v", r)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Send took %v: the SDK's retry loop is not off", d)
	}
}

func TestAuthenticated(t *testing.T) {
	f := pushtest.NewFCM()
	defer f.Close()
	f.RequireAuth(true)
	dir := t.TempDir()
	path, err := f.WriteServiceAccount(dir, "proj-from-file")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := fcm.New(ctx, fcm.Config{CredentialsFile: path, Endpoint: f.Endpoint()})
	if err != nil {
		t.Fatal(err)
	}
	if s.ProjectID() != "proj-from-file" {
		t.Errorf("project = %q, want the file's", s.ProjectID())
	}
	for i := range 3 {
		if r := s.Send(ctx, "tok", challenge(time.Minute)); r.Outcome != push.Delivered {
			t.Fatalf("send %d: %+v", i, r)
		}
	}
	for _, g := range f.Messages() {
		if !g.Authenticated || !strings.HasPrefix(g.Header.Get("Authorization"), "Bearer ya29.") {
			t.Errorf("request not authenticated: Authorization %q", g.Header.Get("Authorization"))
		}
		if g.Project != "proj-from-file" {
			t.Errorf("project %q", g.Project)
		}
	}
	if n := f.TokenRequests(); n != 1 {
		t.Errorf("token endpoint hit %d times, want 1 (cached)", n)
	}

	// A config project id wins over the file's.
	s2, err := fcm.New(ctx, fcm.Config{CredentialsFile: path, ProjectID: "other", Endpoint: f.Endpoint()})
	if err != nil || s2.ProjectID() != "other" {
		t.Errorf("ProjectID override: %v %v", s2, err)
	}

	// Without credentials, the fake refuses: a permanent failure.
	anon := newSender(t, f)
	if r := anon.Send(ctx, "tok", challenge(time.Minute)); r.Outcome != push.Failed || r.Reason != "UNAUTHENTICATED" {
		t.Errorf("unauthenticated: %+v", r)
	}

	// A key the token endpoint does not know: the token request is refused.
	var sa map[string]any
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &sa); err != nil {
		t.Fatal(err)
	}
	sa["private_key"] = rsaPEM(t)
	bad := filepath.Join(dir, "unknown-key.json")
	b, _ = json.Marshal(sa)
	if err := os.WriteFile(bad, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s3, err := fcm.New(ctx, fcm.Config{CredentialsFile: bad, Endpoint: f.Endpoint()})
	if err != nil {
		t.Fatal(err)
	}
	if r := s3.Send(ctx, "tok", challenge(time.Minute)); r.Outcome != push.Failed || r.Reason != "auth" {
		t.Errorf("refused token request: %+v", r)
	}
}

func rsaPEM(t *testing.T) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := func(mut func(map[string]any)) string {
		sa := map[string]any{
			"type": "service_account", "project_id": "p", "client_email": "a@p.iam.gserviceaccount.com",
			"private_key": rsaPEM(t), "token_uri": "https://oauth2.googleapis.com/token",
		}
		mut(sa)
		b, _ := json.Marshal(sa)
		return write(fmt.Sprintf("sa-%d.json", time.Now().UnixNano()), string(b))
	}
	ok := good(func(map[string]any) {})
	for _, tc := range []struct {
		name string
		cfg  fcm.Config
		want string
	}{
		{"missing file", fcm.Config{CredentialsFile: filepath.Join(dir, "nope.json")}, fcm.SettingCredentialsFile},
		{"not json", fcm.Config{CredentialsFile: write("junk.json", "{not json")}, fcm.SettingCredentialsFile},
		{"wrong type", fcm.Config{CredentialsFile: good(func(m map[string]any) { m["type"] = "authorized_user" })}, fcm.SettingCredentialsFile},
		{"no email", fcm.Config{CredentialsFile: good(func(m map[string]any) { delete(m, "client_email") })}, fcm.SettingCredentialsFile},
		{"key not pem", fcm.Config{CredentialsFile: good(func(m map[string]any) { m["private_key"] = "MIIEv..." })}, fcm.SettingCredentialsFile},
		{"key garbage", fcm.Config{CredentialsFile: good(func(m map[string]any) {
			m["private_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
		})}, fcm.SettingCredentialsFile},
		{"bad token_uri", fcm.Config{CredentialsFile: good(func(m map[string]any) { m["token_uri"] = "ftp://x" })}, fcm.SettingCredentialsFile},
		{"no project", fcm.Config{CredentialsFile: good(func(m map[string]any) { delete(m, "project_id") })}, fcm.SettingProjectID},
		{"nothing", fcm.Config{ProjectID: "p"}, fcm.SettingCredentialsFile},
		{"bad endpoint", fcm.Config{CredentialsFile: ok, Endpoint: "127.0.0.1:9099"}, fcm.SettingEndpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fcm.New(context.Background(), tc.cfg)
			t.Log(err)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New error %v, want one naming %s", err, tc.want)
			}
		})
	}
	if _, err := fcm.New(context.Background(), fcm.Config{CredentialsFile: ok}); err != nil {
		t.Errorf("a valid file: %v", err)
	}
}

func TestInvalidMessages(t *testing.T) {
	f := pushtest.NewFCM()
	defer f.Close()
	s := newSender(t, f)
	for _, tc := range []struct {
		token string
		m     push.Message
	}{
		{"", challenge(time.Minute)},
		{"tok", push.Message{Kind: "nonsense"}},
		{"tok", push.Message{Kind: push.KindChallenge, ChallengeID: "c"}},
	} {
		if r := s.Send(context.Background(), tc.token, tc.m); r.Outcome != push.Failed {
			t.Errorf("Send(%q, %+v) = %+v, want Failed", tc.token, tc.m, r)
		}
	}
	if f.Count() != 0 {
		t.Errorf("invalid messages reached the provider")
	}
}

func TestConcurrentSends(t *testing.T) {
	f := pushtest.NewFCM()
	defer f.Close()
	s := newSender(t, f)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := s.Send(context.Background(), fmt.Sprintf("tok-%d", i), challenge(time.Minute)); r.Outcome != push.Delivered {
				t.Errorf("send %d: %+v", i, r)
			}
		}()
	}
	wg.Wait()
	if !f.WaitFor(50, time.Second) || s.Counts()["delivered"] != 50 {
		t.Errorf("count %d, Counts %v", f.Count(), s.Counts())
	}
}
