package apns_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/push"
	"github.com/clicktopurchase/approvald/push/apns"
	"github.com/clicktopurchase/approvald/push/pushtest"
)

// TestMain trusts the fakes' authority through the system roots, as
// APPROVALD_APNS_ENDPOINT pointing at a fake needs (crypto/x509 reads
// SSL_CERT_FILE once, so it is set before any TLS).
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "apns-test-ca")
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

const (
	team  = "TEAM123456"
	topic = "com.clicktopurchase.approve"
)

func newFake(t testing.TB) *pushtest.APNs {
	t.Helper()
	a, err := pushtest.NewAPNs()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

func newTokenSender(t testing.TB, a *pushtest.APNs) *apns.Sender {
	t.Helper()
	path, kid, err := a.NewKey(t.TempDir(), team)
	if err != nil {
		t.Fatal(err)
	}
	s, err := apns.New(apns.Config{KeyFile: path, KeyID: kid, TeamID: team, Topic: topic, Endpoint: a.URL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.CloseIdleConnections)
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

func challenge() push.Message {
	return push.Message{
		Kind: push.KindChallenge, ChallengeID: "ch_8f3a", Action: "login",
		Title: "Approve sign-in?", Body: "Someone is signing in to clicktopurchase.",
		ExpiresAt: time.Now().Add(3 * time.Minute).Truncate(time.Second), NumberMatching: true,
	}
}

func TestChallengeHeadersAndPayload(t *testing.T) {
	a := newFake(t)
	s := newTokenSender(t, a)
	m := challenge()
	if r := s.Send(context.Background(), "a1b2c3", m); r.Outcome != push.Delivered {
		t.Fatalf("Send = %+v", r)
	}
	got := a.Messages()
	if len(got) != 1 {
		t.Fatalf("fake got %d requests", len(got))
	}
	g := got[0]
	if g.Token != "a1b2c3" || g.Auth != "token" || g.TeamID != team || g.Status != 200 {
		t.Errorf("token %q auth %q team %q status %d", g.Token, g.Auth, g.TeamID, g.Status)
	}
	for h, want := range map[string]string{
		"apns-push-type":   "alert",
		"apns-priority":    "10",
		"apns-expiration":  strconv.FormatInt(m.ExpiresAt.Unix(), 10),
		"apns-collapse-id": "ch_8f3a",
		"apns-topic":       topic,
	} {
		if v := g.Header.Get(h); v != want {
			t.Errorf("%s = %q, want %q", h, v, want)
		}
	}
	if !strings.HasPrefix(g.Header.Get("authorization"), "bearer ") {
		t.Errorf("authorization = %q", g.Header.Get("authorization"))
	}
	want := decode(t, []byte(`{
		"aps": {
			"alert": {"title": "Approve sign-in?", "body": "Someone is signing in to clicktopurchase."},
			"category": "APPROVAL_REQUEST",
			"mutable-content": 1
		},
		"challenge_id": "ch_8f3a",
		"action": "login",
		"number_matching": true
	}`))
	if !reflect.DeepEqual(g.Payload, want) {
		t.Errorf("payload %s", g.Raw)
	}

	m.NumberMatching = false
	s.Send(context.Background(), "a1b2c3", m)
	if nm, ok := a.Messages()[1].Payload["number_matching"].(bool); !ok || nm {
		t.Errorf("number_matching = %v, want JSON false", a.Messages()[1].Payload["number_matching"])
	}
}

func TestSilentPushes(t *testing.T) {
	a := newFake(t)
	s := newTokenSender(t, a)
	ctx := context.Background()
	before := time.Now()
	if r := s.Send(ctx, "tok", push.Message{Kind: push.KindResolved, ChallengeID: "ch_8f3a"}); r.Outcome != push.Delivered {
		t.Fatalf("resolved: %+v", r)
	}
	if r := s.Send(ctx, "tok", push.Message{Kind: push.KindRetired}); r.Outcome != push.Delivered {
		t.Fatalf("retired: %+v", r)
	}
	got := a.Messages()
	for i, want := range []string{
		`{"aps": {"content-available": 1}, "type": "resolved", "challenge_id": "ch_8f3a"}`,
		`{"aps": {"content-available": 1}, "type": "retired"}`,
	} {
		g := got[i]
		if !reflect.DeepEqual(g.Payload, decode(t, []byte(want))) {
			t.Errorf("payload %s, want %s", g.Raw, want)
		}
		if g.Header.Get("apns-push-type") != "background" || g.Header.Get("apns-priority") != "5" {
			t.Errorf("push type %q priority %q", g.Header.Get("apns-push-type"), g.Header.Get("apns-priority"))
		}
		if g.Header.Get("apns-collapse-id") != "" {
			t.Errorf("silent push has apns-collapse-id %q", g.Header.Get("apns-collapse-id"))
		}
		exp, _ := strconv.ParseInt(g.Header.Get("apns-expiration"), 10, 64)
		if d := time.Unix(exp, 0).Sub(before); d < push.DefaultSilentTTL-2*time.Second || d > push.DefaultSilentTTL+2*time.Second {
			t.Errorf("apns-expiration %d is %v away, want about %v", exp, d, push.DefaultSilentTTL)
		}
	}
}

func TestWrongKey(t *testing.T) {
	a := newFake(t)
	path, kid, _, err := pushtest.GenerateP8(t.TempDir()) // never given to the fake
	if err != nil {
		t.Fatal(err)
	}
	s, err := apns.New(apns.Config{KeyFile: path, KeyID: kid, TeamID: team, Topic: topic, Endpoint: a.URL()})
	if err != nil {
		t.Fatal(err)
	}
	r := s.Send(context.Background(), "tok", challenge())
	if r.Outcome != push.Failed || r.Reason != "InvalidProviderToken" {
		t.Errorf("unknown key: %+v", r)
	}

	// A known key id signed by another key, and a known key under another team.
	_, otherKid, err := a.NewKey(t.TempDir(), "OTHERTEAM1")
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []apns.Config{
		{KeyFile: path, KeyID: otherKid, TeamID: "OTHERTEAM1"},
		{KeyFile: path, KeyID: kid, TeamID: team},
	} {
		cfg.Topic, cfg.Endpoint = topic, a.URL()
		s, err := apns.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.Send(context.Background(), "tok", challenge()); r.Outcome != push.Failed || r.Reason != "InvalidProviderToken" {
			t.Errorf("%s/%s: %+v", cfg.TeamID, cfg.KeyID, r)
		}
	}
	if st := a.Messages()[0].Status; st != 403 {
		t.Errorf("fake answered %d, want 403", st)
	}
}

func TestReasons(t *testing.T) {
	a := newFake(t)
	s := newTokenSender(t, a)
	for _, tc := range []struct {
		reason  string
		outcome push.Outcome
	}{
		{"Unregistered", push.TokenInvalid},
		{"ExpiredToken", push.TokenInvalid},
		{"BadDeviceToken", push.TokenInvalid},
		{"DeviceTokenNotForTopic", push.TokenInvalid},
		{"TooManyRequests", push.Retry},
		{"InternalServerError", push.Retry},
		{"ServiceUnavailable", push.Retry},
		{"Shutdown", push.Retry},
		{"BadTopic", push.Failed},
		{"BadCollapseId", push.Failed},
		{"PayloadTooLarge", push.Failed},
		{"ExpiredProviderToken", push.Failed},
		{"TopicDisallowed", push.Failed},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			before := a.Count()
			a.FailNext(1, 0, tc.reason, "")
			r := s.Send(context.Background(), "tok", challenge())
			if r.Outcome != tc.outcome || r.Reason != tc.reason {
				t.Errorf("got %v/%s, want %v/%s", r.Outcome, r.Reason, tc.outcome, tc.reason)
			}
			if n := a.Count() - before; n != 1 {
				t.Errorf("%d requests for one Send", n)
			}
		})
	}
	a.FailNext(1, 429, "TooManyRequests", "12")
	if r := s.Send(context.Background(), "tok", challenge()); r.Outcome != push.Retry || r.RetryAfter != 12*time.Second {
		t.Errorf("429 with Retry-After: %+v", r)
	}
	a.FailToken("dead", 0, "Unregistered")
	if r := s.Send(context.Background(), "dead", challenge()); r.Outcome != push.TokenInvalid {
		t.Errorf("dead token: %+v", r)
	}
	if r := s.Send(context.Background(), "alive", challenge()); r.Outcome != push.Delivered {
		t.Errorf("other token: %+v", r)
	}
	c := s.Counts()
	if c["token_invalid/Unregistered"] != 2 || c["retry/TooManyRequests"] != 2 || c["delivered"] != 1 {
		t.Errorf("Counts = %v", c)
	}
}

func TestHangAndNetwork(t *testing.T) {
	a := newFake(t)
	s := newTokenSender(t, a)
	a.Hang(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if r := s.Send(ctx, "tok", challenge()); r.Outcome != push.Retry || r.Reason != "timeout" {
		t.Errorf("hanging provider: %+v", r)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Send took %v with a 200ms context", d)
	}
	a.Close()
	s.CloseIdleConnections()
	if r := s.Send(context.Background(), "tok", challenge()); r.Outcome != push.Retry || r.Reason != "network" {
		t.Errorf("closed provider: %+v", r)
	}
}

func TestCertificateAuth(t *testing.T) {
	a := newFake(t)
	dir := t.TempDir()
	cert, err := pushtest.IssueClientCert(dir, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	s, err := apns.New(apns.Config{CertFile: cert, Topic: topic, Endpoint: a.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.CloseIdleConnections()
	if s.Auth() != "certificate" {
		t.Errorf("Auth = %q", s.Auth())
	}
	if r := s.Send(context.Background(), "tok", challenge()); r.Outcome != push.Delivered {
		t.Fatalf("Send = %+v", r)
	}
	g := a.Messages()[0]
	if g.Auth != "certificate" || !strings.Contains(g.CertSubject, topic) || g.Header.Get("authorization") != "" {
		t.Errorf("auth %q subject %q authorization %q", g.Auth, g.CertSubject, g.Header.Get("authorization"))
	}

	// A certificate for another app: APNs refuses the topic.
	other, err := pushtest.IssueClientCert(dir, "com.example.other", 0)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := apns.New(apns.Config{CertFile: other, Topic: topic, Endpoint: a.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.CloseIdleConnections()
	if r := s2.Send(context.Background(), "tok", challenge()); r.Outcome != push.Failed || r.Reason != "TopicDisallowed" {
		t.Errorf("other app's certificate: %+v", r)
	}
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
	p8, kid, _, err := pushtest.GenerateP8(dir)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	rsaP8 := write("rsa.p8", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	cert, err := pushtest.IssueClientCert(dir, topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := pushtest.IssueClientCert(dir, topic, -time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _ := os.ReadFile(cert)
	certOnly := write("cert-only.pem", string(certPEM[:strings.Index(string(certPEM), "-----BEGIN PRIVATE KEY")]))
	mismatch := write("mismatch.pem", string(certPEM[:strings.Index(string(certPEM), "-----BEGIN PRIVATE KEY")])+
		string(mustRead(t, p8)))

	tok := func(c apns.Config) apns.Config {
		if c.KeyFile == "" {
			c.KeyFile = p8
		}
		if c.KeyID == "" {
			c.KeyID = kid
		}
		if c.TeamID == "" {
			c.TeamID = team
		}
		if c.Topic == "" {
			c.Topic = topic
		}
		return c
	}
	for _, tc := range []struct {
		name string
		cfg  apns.Config
		want string
	}{
		{"p8 garbage", tok(apns.Config{KeyFile: write("junk.p8", "not a key")}), apns.SettingKeyFile},
		{"p8 bad der", tok(apns.Config{KeyFile: write("bad.p8", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")}), apns.SettingKeyFile},
		{"p8 rsa", tok(apns.Config{KeyFile: rsaP8}), apns.SettingKeyFile},
		{"p8 missing", tok(apns.Config{KeyFile: filepath.Join(dir, "nope.p8")}), apns.SettingKeyFile},
		{"no key id", apns.Config{KeyFile: p8, TeamID: team, Topic: topic}, apns.SettingKeyID},
		{"no team", apns.Config{KeyFile: p8, KeyID: kid, Topic: topic}, apns.SettingTeamID},
		{"no topic", apns.Config{KeyFile: p8, KeyID: kid, TeamID: team}, apns.SettingTopic},
		{"nothing", apns.Config{Topic: topic}, apns.SettingKeyFile},
		{"both", tok(apns.Config{CertFile: cert}), apns.SettingCertFile},
		{"cert garbage", apns.Config{CertFile: write("junk.pem", "junk"), Topic: topic}, apns.SettingCertFile},
		{"cert without key", apns.Config{CertFile: certOnly, Topic: topic}, apns.SettingCertFile},
		{"cert key mismatch", apns.Config{CertFile: mismatch, Topic: topic}, apns.SettingCertFile},
		{"cert expired", apns.Config{CertFile: expired, Topic: topic}, apns.SettingCertFile},
		{"endpoint http", tok(apns.Config{Endpoint: "http://127.0.0.1:1"}), apns.SettingEndpoint},
		{"endpoint word", tok(apns.Config{Endpoint: "staging"}), apns.SettingEndpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := apns.New(tc.cfg)
			t.Log(err)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New error %v, want one naming %s", err, tc.want)
			}
		})
	}
	for _, ep := range []string{"", "production", "development", "https://127.0.0.1:8443/"} {
		if _, err := apns.New(tok(apns.Config{Endpoint: ep})); err != nil {
			t.Errorf("endpoint %q: %v", ep, err)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConcurrentSendsReuseConnection(t *testing.T) {
	a := newFake(t)
	s := newTokenSender(t, a)
	// Warm up one connection, then send concurrently over it.
	if r := s.Send(context.Background(), "warm", challenge()); r.Outcome != push.Delivered {
		t.Fatal(r)
	}
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := s.Send(context.Background(), "tok-"+strconv.Itoa(i), challenge()); r.Outcome != push.Delivered {
				t.Errorf("send %d: %+v", i, r)
			}
		}()
	}
	wg.Wait()
	if a.Count() != 101 || a.Connections() != 1 {
		t.Errorf("requests %d over %d connections, want 101 over 1", a.Count(), a.Connections())
	}
}
