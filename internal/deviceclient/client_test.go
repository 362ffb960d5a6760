package deviceclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/jws"
)

func TestNormalizeCode(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"K7QD-9XMW", "K7QD9XMW"},
		{"k7qd9xmw", "K7QD9XMW"},
		{" k7qd - 9xmw ", "K7QD9XMW"},
		{"oOiIlL-1234", "0011111234"},
		{"ABCD EFGH", "ABCDEFGH"},
		{"", ""},
	} {
		if got := NormalizeCode(tc.in); got != tc.want {
			t.Errorf("NormalizeCode(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// enrolled returns a client with a fresh key and enrollment state.
func enrolled(t *testing.T, server string) *Client {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return &Client{Server: server, Key: k, DeviceID: "dev-123", Audience: "https://approve.example.com", UserID: "u-42"}
}

// parseVerified parses tok, verifies it with c's key and returns the header
// and the claims, member by member.
func parseVerified(t *testing.T, c *Client, tok string) (map[string]json.RawMessage, map[string]json.RawMessage) {
	t.Helper()
	p, err := jws.Parse(tok)
	if err != nil {
		t.Fatalf("jws.Parse: %v", err)
	}
	if err := p.VerifyES256(&c.Key.PublicKey); err != nil {
		t.Fatalf("VerifyES256: %v", err)
	}
	var claims map[string]json.RawMessage
	if err := json.Unmarshal(p.Payload, &claims); err != nil {
		t.Fatal(err)
	}
	return p.Header, claims
}

func keys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func wantMembers(t *testing.T, what string, m map[string]json.RawMessage, want ...string) {
	t.Helper()
	sort.Strings(want)
	if got := keys(m); !reflect.DeepEqual(got, want) {
		t.Errorf("%s members = %v, want %v", what, got, want)
	}
}

func str(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("%s is not a string", raw)
	}
	return s
}

func num(t *testing.T, raw json.RawMessage) int64 {
	t.Helper()
	var n int64
	if err := json.Unmarshal(raw, &n); err != nil {
		t.Fatalf("%s is not an integer", raw)
	}
	return n
}

// checkBase checks iss, aud, iat, exp and jti.
func checkBase(t *testing.T, c *Client, claims map[string]json.RawMessage, now time.Time) {
	t.Helper()
	if got := str(t, claims["iss"]); got != c.DeviceID {
		t.Errorf("iss = %q, want %q", got, c.DeviceID)
	}
	if got := str(t, claims["aud"]); got != c.Audience {
		t.Errorf("aud = %q, want %q", got, c.Audience)
	}
	iat, exp := num(t, claims["iat"]), num(t, claims["exp"])
	if iat != now.Unix() {
		t.Errorf("iat = %d, want %d", iat, now.Unix())
	}
	if exp-iat != 120 {
		t.Errorf("exp - iat = %d, want 120", exp-iat)
	}
	jti, err := base64.RawURLEncoding.DecodeString(str(t, claims["jti"]))
	if err != nil || len(jti) != 16 {
		t.Errorf("jti %s is not 16 bytes of base64url (%v)", claims["jti"], err)
	}
}

func TestAssertionShape(t *testing.T) {
	c := enrolled(t, "http://unused")
	now := time.Unix(1_700_000_000, 0)
	c.Now = func() time.Time { return now }
	tok, err := c.Assertion()
	if err != nil {
		t.Fatal(err)
	}
	hdr, claims := parseVerified(t, c, tok)
	wantMembers(t, "header", hdr, "alg", "kid", "typ")
	if str(t, hdr["alg"]) != "ES256" || str(t, hdr["kid"]) != c.DeviceID || str(t, hdr["typ"]) != "JWT" {
		t.Errorf("header = %v", hdr)
	}
	wantMembers(t, "claims", claims, "iss", "aud", "iat", "exp", "jti")
	checkBase(t, c, claims, now)

	tok2, err := c.Assertion()
	if err != nil {
		t.Fatal(err)
	}
	_, claims2 := parseVerified(t, c, tok2)
	if string(claims["jti"]) == string(claims2["jti"]) {
		t.Error("two assertions share a jti")
	}
}

func TestAssertionNeedsEnrollment(t *testing.T) {
	k, _ := NewKey()
	c := &Client{Server: "http://unused", Key: k}
	if _, err := c.Assertion(); err == nil {
		t.Fatal("Assertion without device id: no error")
	}
	if _, err := (&Client{DeviceID: "d", Audience: "a"}).Assertion(); err == nil {
		t.Fatal("Assertion without key: no error")
	}
}

func TestDecideShapes(t *testing.T) {
	for _, tc := range []struct {
		name       string
		d          Decision
		wantDec    string
		wantNum    string
		wantFraud  bool
		wantClaims []string
	}{
		{"approve", Decision{Approve: true}, "approve", "", false,
			[]string{"iss", "aud", "iat", "exp", "jti", "cid", "dec"}},
		{"approve with number", Decision{Approve: true, Number: "042"}, "approve", "042", false,
			[]string{"iss", "aud", "iat", "exp", "jti", "cid", "dec", "num"}},
		{"deny", Decision{}, "deny", "", false,
			[]string{"iss", "aud", "iat", "exp", "jti", "cid", "dec"}},
		{"deny fraud", Decision{Fraud: true}, "deny", "", true,
			[]string{"iss", "aud", "iat", "exp", "jti", "cid", "dec", "fraud"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got struct {
				method, path, auth, ctype string
				body                      []byte
			}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got.method, got.path = r.Method, r.URL.EscapedPath()
				got.auth, got.ctype = r.Header.Get("Authorization"), r.Header.Get("Content-Type")
				got.body, _ = io.ReadAll(r.Body)
				w.Header().Set("Content-Type", "application/json")
				st := "denied"
				if tc.d.Approve {
					st = "approved"
				}
				_, _ = io.WriteString(w, `{"id":"ch/1","status":"`+st+`","extra":1}`)
			}))
			defer srv.Close()
			c := enrolled(t, srv.URL+"/")
			now := time.Unix(1_700_000_100, 0)
			c.Now = func() time.Time { return now }

			status, err := c.Decide(context.Background(), "ch/1", tc.d)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{true: "approved", false: "denied"}[tc.d.Approve]; status != want {
				t.Errorf("status = %q, want %q", status, want)
			}
			if got.method != http.MethodPost || got.path != "/v1/device/challenges/ch%2F1/decision" {
				t.Errorf("request = %s %s", got.method, got.path)
			}
			if got.auth != "" {
				t.Errorf("Authorization = %q, want none", got.auth)
			}
			if got.ctype != "application/json" {
				t.Errorf("Content-Type = %q", got.ctype)
			}
			var body map[string]json.RawMessage
			if err := json.Unmarshal(got.body, &body); err != nil {
				t.Fatal(err)
			}
			wantMembers(t, "body", body, "response")
			hdr, claims := parseVerified(t, c, str(t, body["response"]))
			wantMembers(t, "header", hdr, "alg", "kid")
			if str(t, hdr["alg"]) != "ES256" || str(t, hdr["kid"]) != c.DeviceID {
				t.Errorf("header = %v", hdr)
			}
			wantMembers(t, "claims", claims, tc.wantClaims...)
			checkBase(t, c, claims, now)
			if got := str(t, claims["cid"]); got != "ch/1" {
				t.Errorf("cid = %q", got)
			}
			if got := str(t, claims["dec"]); got != tc.wantDec {
				t.Errorf("dec = %q, want %q", got, tc.wantDec)
			}
			if tc.wantNum != "" && str(t, claims["num"]) != tc.wantNum {
				t.Errorf("num = %s, want %q", claims["num"], tc.wantNum)
			}
			if tc.wantFraud && string(claims["fraud"]) != "true" {
				t.Errorf("fraud = %s, want true", claims["fraud"])
			}
		})
	}
}

func TestSignedDecisionOverlay(t *testing.T) {
	c := enrolled(t, "http://unused")
	tok, err := c.SignedDecision("ch1",
		map[string]any{"jti": nil, "dec": "approve", "exp": int64(5), "aud": "https://other"},
		map[string]any{"kid": nil, "cty": "x", "alg": "none"})
	if err != nil {
		t.Fatal(err)
	}
	hdr, claims := parseVerified(t, c, tok) // alg is forced to ES256
	wantMembers(t, "header", hdr, "alg", "cty")
	wantMembers(t, "claims", claims, "iss", "aud", "iat", "exp", "cid", "dec")
	if num(t, claims["exp"]) != 5 || str(t, claims["aud"]) != "https://other" || str(t, claims["cid"]) != "ch1" {
		t.Errorf("claims = %s", claims)
	}
}

func TestEnroll(t *testing.T) {
	var body map[string]json.RawMessage
	var method, path string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method, path = r.Method, r.URL.Path
		if r.Header.Get("Authorization") != "" {
			t.Error("enrollment sent an Authorization header")
		}
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &body); err != nil {
			t.Error(err)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"device_id":"dev-9","user_id":"u-42","audience":"https://approve.example.com"}`)
	}))
	defer srv.Close()
	now := time.Unix(1_700_000_200, 0)
	c := &Client{Server: srv.URL, Now: func() time.Time { return now }}
	if err := c.Enroll(context.Background(), "k7qd-9xmo", "Pixel 8", PlatformOther, Push{Provider: ProviderNone}); err != nil {
		t.Fatal(err)
	}
	if c.DeviceID != "dev-9" || c.UserID != "u-42" || c.Audience != "https://approve.example.com" || c.Key == nil {
		t.Errorf("client after Enroll = %+v", c)
	}
	if method != http.MethodPost || path != "/v1/devices" {
		t.Errorf("request = %s %s", method, path)
	}
	wantMembers(t, "body", body, "code", "name", "platform", "public_key", "push", "proof")
	if str(t, body["code"]) != "k7qd-9xmo" || str(t, body["name"]) != "Pixel 8" || str(t, body["platform"]) != "other" {
		t.Errorf("body = %s", body)
	}
	if string(body["push"]) != `{"provider":"none"}` {
		t.Errorf("push = %s", body["push"])
	}
	var jwk jws.JWK
	if err := json.Unmarshal(body["public_key"], &jwk); err != nil {
		t.Fatal(err)
	}
	var jwkMembers map[string]json.RawMessage
	_ = json.Unmarshal(body["public_key"], &jwkMembers)
	wantMembers(t, "public_key", jwkMembers, "kty", "crv", "x", "y")
	pub, err := jws.PublicKeyFromJWK(jwk)
	if err != nil || !pub.Equal(&c.Key.PublicKey) {
		t.Fatalf("public_key is not the client's key: %v", err)
	}
	p, err := jws.Parse(str(t, body["proof"]))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.VerifyES256(pub); err != nil {
		t.Fatal(err)
	}
	wantMembers(t, "proof header", p.Header, "alg", "typ")
	if p.Alg != "ES256" || str(t, p.Header["typ"]) != "JWT" {
		t.Errorf("proof header = %v", p.Header)
	}
	var claims map[string]json.RawMessage
	_ = json.Unmarshal(p.Payload, &claims)
	wantMembers(t, "proof claims", claims, "code", "iat")
	if str(t, claims["code"]) != "K7QD9XM0" || num(t, claims["iat"]) != now.Unix() {
		t.Errorf("proof claims = %s", claims)
	}
}

func TestPendingSetPushUnlink(t *testing.T) {
	type req struct{ method, uri, auth, body string }
	var reqs []req
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		reqs = append(reqs, req{r.Method, r.URL.RequestURI(), r.Header.Get("Authorization"), string(b)})
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"challenges":[{"id":"c1","action":"submit_offer",
				"context":{"Property":"12 High St","Offer":"£350,000","A":"z"},
				"created_at":"2025-01-02T03:04:05Z","expires_at":"2025-01-02T03:07:05Z",
				"number_matching":true,"requester":{"ip":"203.0.113.9","user_agent":"Mozilla/5.0"}}]}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	c := enrolled(t, srv.URL)
	ctx := context.Background()

	list, err := c.Pending(ctx, 25*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pending(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.SetPush(ctx, Push{Provider: ProviderFCM, Token: "tok"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Unlink(ctx); err != nil {
		t.Fatal(err)
	}

	if len(list) != 1 {
		t.Fatalf("Pending = %+v", list)
	}
	ch := list[0]
	if ch.ID != "c1" || ch.Action != "submit_offer" || !ch.NumberMatching ||
		ch.Requester.IP != "203.0.113.9" || ch.Requester.UserAgent != "Mozilla/5.0" ||
		!ch.CreatedAt.Equal(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)) ||
		!ch.ExpiresAt.Equal(time.Date(2025, 1, 2, 3, 7, 5, 0, time.UTC)) {
		t.Errorf("challenge = %+v", ch)
	}
	members, err := ch.ContextMembers()
	if err != nil {
		t.Fatal(err)
	}
	if want := []ContextMember{{"Property", "12 High St"}, {"Offer", "£350,000"}, {"A", "z"}}; !reflect.DeepEqual(members, want) {
		t.Errorf("ContextMembers = %v, want %v (in order)", members, want)
	}

	want := []req{
		{"GET", "/v1/device/challenges?wait=25", "", ""},
		{"GET", "/v1/device/challenges", "", ""},
		{"PUT", "/v1/device/push", "", `{"provider":"fcm","token":"tok"}`},
		{"DELETE", "/v1/device", "", ""},
	}
	if len(reqs) != len(want) {
		t.Fatalf("requests = %+v", reqs)
	}
	for i, r := range reqs {
		a, ok := strings.CutPrefix(r.auth, "Bearer ")
		if !ok {
			t.Errorf("request %d: Authorization = %q", i, r.auth)
			continue
		}
		hdr, claims := parseVerified(t, c, a)
		wantMembers(t, "assertion header", hdr, "alg", "kid", "typ")
		wantMembers(t, "assertion claims", claims, "iss", "aud", "iat", "exp", "jti")
		r.auth = ""
		if r != want[i] {
			t.Errorf("request %d = %+v, want %+v", i, r, want[i])
		}
	}
}

func TestProblem(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/device/challenges/c1/decision":
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusConflict)
			_, _ = io.WriteString(w, `{"type":"https://approvald.dev/problems/not_pending","title":"Conflict",
				"status":409,"detail":"the challenge is already decided","code":"not_pending","current_status":"approved"}`)
		case "/v1/device/challenges":
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("Retry-After", "17")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"type":"x","title":"Too Many Requests","status":429,"code":"rate_limited"}`)
		default:
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "<html>bad gateway</html>")
		}
	}))
	defer srv.Close()
	c := enrolled(t, srv.URL)
	ctx := context.Background()

	_, err := c.Decide(ctx, "c1", Decision{Approve: true})
	var p *Problem
	if !errors.As(err, &p) {
		t.Fatalf("Decide error %v is not a *Problem", err)
	}
	want := Problem{Status: 409, Type: "https://approvald.dev/problems/not_pending", Title: "Conflict",
		Detail: "the challenge is already decided", Code: "not_pending", CurrentStatus: "approved"}
	if *p != want {
		t.Errorf("problem = %+v, want %+v", *p, want)
	}
	if s := err.Error(); !strings.Contains(s, "not_pending") || !strings.Contains(s, "already decided") {
		t.Errorf("Error() = %q", s)
	}

	_, err = c.Pending(ctx, 0)
	if !errors.As(err, &p) || p.Code != "rate_limited" || p.Status != 429 || p.RetryAfter != 17*time.Second {
		t.Errorf("Pending error = %#v", err)
	}

	err = c.Unlink(ctx)
	if !errors.As(err, &p) || p.Status != 502 || p.Code != "" || p.Title != "Bad Gateway" {
		t.Errorf("Unlink error = %#v", err)
	}
}

func TestDoRawBody(t *testing.T) {
	var got []byte
	var ctype, auth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(r.Body)
		ctype, auth = r.Header.Get("Content-Type"), r.Header.Get("Authorization")
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, "short and stout")
	}))
	defer srv.Close()
	c := &Client{Server: srv.URL}
	resp, body, err := c.Do(context.Background(), "POST", "/x", []byte(`{"code":`), "tok")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusTeapot || string(body) != "short and stout" {
		t.Errorf("answer = %d %q", resp.StatusCode, body)
	}
	if string(got) != `{"code":` || ctype != "application/json" || auth != "Bearer tok" {
		t.Errorf("request body %q, Content-Type %q, Authorization %q", got, ctype, auth)
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	// An existing, world-readable file is replaced by a 0600 one.
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := enrolled(t, "https://approve.example.com")
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the state file", len(entries))
	}
	raw, _ := os.ReadFile(path)
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		t.Fatal(err)
	}
	wantMembers(t, "state", members, "server", "device_id", "audience", "user_id", "private_key")
	if !strings.HasPrefix(str(t, members["private_key"]), "-----BEGIN PRIVATE KEY-----\n") {
		t.Errorf("private_key is not PKCS#8 PEM: %s", members["private_key"])
	}

	l, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if l.Server != c.Server || l.DeviceID != c.DeviceID || l.Audience != c.Audience || l.UserID != c.UserID {
		t.Errorf("loaded %+v, saved %+v", l, c)
	}
	if !l.Key.Equal(c.Key) {
		t.Error("loaded key differs")
	}

	if _, err := Load(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
	if err := os.WriteFile(path, []byte(`{"server":"x","private_key":"nope"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil {
		t.Error("Load of a bad key: no error")
	}
}
