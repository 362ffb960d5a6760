package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/jws"
)

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func assertionClaims(d *deviceclient.Client, aud string, iat time.Time, life time.Duration) map[string]any {
	return map[string]any{"iss": d.DeviceID, "aud": aud, "iat": iat.Unix(), "exp": iat.Add(life).Unix(), "jti": fmt.Sprint(time.Now().UnixNano())}
}

func signWith(t *testing.T, key *ecdsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	s, err := jws.Sign(key, map[string]any{"kid": kid, "typ": "JWT"}, claims)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// unsigned builds a compact JWS with an arbitrary header and signature.
func unsigned(header, claims map[string]any, sig func(input string) []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	in := b64(h) + "." + b64(c)
	return in + "." + b64(sig(in))
}

type fixture struct {
	env          *apptest.Env
	alice, bob   *deviceclient.Client
	challenge    string
	enrollCode   string
	usedCode     string
	retiredPhone *deviceclient.Client
}

// snapshot is everything a bad request must leave alone.
func (f *fixture) snapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, p := range []string{"/v1/challenges/" + f.challenge, "/v1/users/alice/devices", "/v1/users/bob/devices", "/v1/users/carol/devices"} {
		r := f.env.RP("GET", p, nil)
		b.Write(r.Body)
	}
	for _, id := range []string{f.challenge, f.alice.DeviceID, f.bob.DeviceID} {
		log, err := f.env.Store.AuditLog(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "|audit %s: %d", id, len(log))
	}
	return b.String()
}

func newFixture(t *testing.T, dialect string) *fixture {
	env := apptest.Start(t, dialect)
	f := &fixture{env: env}
	f.alice = env.LinkDevice("alice")
	f.bob = env.LinkDevice("bob")
	f.challenge = env.Challenge("alice", "submit_offer", nil).Str("id")
	f.usedCode = env.Enroll("dave", nil).Str("code")
	if err := env.NewDevice().Enroll(context.Background(), f.usedCode, "d", "ios", deviceclient.Push{Provider: "none"}); err != nil {
		t.Fatal(err)
	}
	f.enrollCode = env.Enroll("carol", nil).Str("code")

	// erin's first phone is retired by a second one linked with step-up.
	old := env.LinkDevice("erin")
	link := env.Challenge("erin", "link_device", nil)
	if _, err := old.Decide(context.Background(), link.Str("id"), deviceclient.Decision{Approve: true, Number: link.Str("number")}); err != nil {
		t.Fatalf("step-up approval: %v", err)
	}
	code := env.Enroll("erin", map[string]any{"authorized_by": link.Str("id")}).Str("code")
	if err := env.NewDevice().Enroll(context.Background(), code, "new", "ios", deviceclient.Push{Provider: "none"}); err != nil {
		t.Fatalf("second device with step-up: %v", err)
	}
	f.retiredPhone = old
	return f
}

func TestBadInputChangesNothing(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		f := newFixture(t, dialect)
		env := f.env
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		now := time.Now()
		devGet := func(tok string) *apptest.Response { return env.Do("GET", "/v1/device/challenges", nil, tok) }
		decide := func(id, resp string) *apptest.Response {
			return env.Do("POST", "/v1/device/challenges/"+id+"/decision", map[string]string{"response": resp}, "")
		}
		decision := func(d *deviceclient.Client, id, dec string) map[string]any {
			c := assertionClaims(d, d.Audience, time.Now(), 60*time.Second)
			c["cid"], c["dec"] = id, dec
			return c
		}
		linkBody := func(code string) map[string]any {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			norm := strings.ToUpper(strings.ReplaceAll(code, "-", ""))
			proof, _ := jws.Sign(k, map[string]any{"typ": "JWT"}, map[string]any{"code": norm, "iat": time.Now().Unix()})
			return map[string]any{"code": code, "name": "Phone", "platform": "android",
				"public_key": jws.JWKFromPublicKey(&k.PublicKey), "push": map[string]string{"provider": "none"}, "proof": proof}
		}
		replayed, _ := f.alice.Assertion()
		if r := devGet(replayed); r.Status != http.StatusOK {
			t.Fatalf("first use of an assertion: %d %s", r.Status, r.Body)
		}
		decided := env.Challenge("alice", "login", nil).Str("id")
		if _, err := f.alice.Decide(context.Background(), decided, deviceclient.Decision{Approve: true}); err != nil {
			t.Fatal(err)
		}

		cases := []struct {
			name   string
			do     func() *apptest.Response
			status int
			code   string
		}{
			{"forged assertion", func() *apptest.Response {
				return devGet(signWith(t, other, f.alice.DeviceID, assertionClaims(f.alice, f.alice.Audience, now, time.Minute)))
			}, 401, "unauthorized"},
			{"alg none", func() *apptest.Response {
				return devGet(unsigned(map[string]any{"alg": "none", "kid": f.alice.DeviceID}, assertionClaims(f.alice, f.alice.Audience, now, time.Minute), func(string) []byte { return nil }))
			}, 401, "unauthorized"},
			{"HS256 with the public key", func() *apptest.Response {
				pub, _ := json.Marshal(jws.JWKFromPublicKey(&f.alice.Key.PublicKey))
				return devGet(unsigned(map[string]any{"alg": "HS256", "kid": f.alice.DeviceID}, assertionClaims(f.alice, f.alice.Audience, now, time.Minute), func(in string) []byte {
					m := hmac.New(sha256.New, pub)
					m.Write([]byte(in))
					return m.Sum(nil)
				}))
			}, 401, "unauthorized"},
			{"expired assertion", func() *apptest.Response {
				return devGet(signWith(t, f.alice.Key, f.alice.DeviceID, assertionClaims(f.alice, f.alice.Audience, now.Add(-5*time.Minute), 2*time.Minute)))
			}, 401, "unauthorized"},
			{"wrong audience", func() *apptest.Response {
				return devGet(signWith(t, f.alice.Key, f.alice.DeviceID, assertionClaims(f.alice, "https://evil.example", now, time.Minute)))
			}, 401, "unauthorized"},
			{"replayed assertion", func() *apptest.Response { return devGet(replayed) }, 401, "unauthorized"},
			{"no assertion", func() *apptest.Response { return devGet("") }, 401, "unauthorized"},
			{"API key as a device", func() *apptest.Response { return devGet(env.APIKey) }, 401, "unauthorized"},
			{"retired device", func() *apptest.Response {
				tok, _ := f.retiredPhone.Assertion()
				return devGet(tok)
			}, 401, "unauthorized"},
			{"another user's device decides", func() *apptest.Response {
				tok := signWith(t, f.bob.Key, f.bob.DeviceID, decision(f.bob, f.challenge, "approve"))
				return decide(f.challenge, tok)
			}, 403, "forbidden"},
			{"decision signed by another key", func() *apptest.Response {
				return decide(f.challenge, signWith(t, other, f.alice.DeviceID, decision(f.alice, f.challenge, "approve")))
			}, 401, "unauthorized"},
			{"decision for another challenge id", func() *apptest.Response {
				return decide(f.challenge, signWith(t, f.alice.Key, f.alice.DeviceID, decision(f.alice, decided, "approve")))
			}, 401, "unauthorized"},
			{"decision used as an assertion", func() *apptest.Response {
				return devGet(signWith(t, f.alice.Key, f.alice.DeviceID, decision(f.alice, f.challenge, "approve")))
			}, 401, "unauthorized"},
			{"decision on an unknown challenge", func() *apptest.Response {
				return decide("nope", signWith(t, f.alice.Key, f.alice.DeviceID, decision(f.alice, "nope", "approve")))
			}, 404, "not_found"},
			{"decision after a decision", func() *apptest.Response {
				return decide(decided, signWith(t, f.alice.Key, f.alice.DeviceID, decision(f.alice, decided, "deny")))
			}, 409, "not_pending"},
			{"wrong code", func() *apptest.Response { return env.Do("POST", "/v1/devices", linkBody("AAAA-AAAA"), "") }, 400, "invalid_code"},
			{"used code", func() *apptest.Response { return env.Do("POST", "/v1/devices", linkBody(f.usedCode), "") }, 400, "invalid_code"},
			{"code of the wrong shape", func() *apptest.Response { return env.Do("POST", "/v1/devices", linkBody("UUUU"), "") }, 400, "invalid_code"},
			{"proof for another code", func() *apptest.Response {
				b := linkBody("AAAA-AAAA")
				b["code"] = f.enrollCode
				return env.Do("POST", "/v1/devices", b, "")
			}, 400, "invalid_request"},
			{"second device without step-up", func() *apptest.Response {
				return env.RP("POST", "/v1/enrollments", map[string]any{"user_id": "alice"})
			}, 403, "step_up_required"},
			{"step-up with a challenge that is not approved", func() *apptest.Response {
				return env.RP("POST", "/v1/enrollments", map[string]any{"user_id": "alice", "authorized_by": f.challenge})
			}, 403, "step_up_required"},
			{"oversized body", func() *apptest.Response {
				return env.RP("POST", "/v1/challenges", `{"user_id":"alice","action":"login","user_agent":"`+strings.Repeat("a", 70<<10)+`"}`)
			}, 413, "payload_too_large"},
			{"malformed body", func() *apptest.Response { return env.RP("POST", "/v1/challenges", `{"user_id":`) }, 400, "invalid_request"},
			{"unknown member", func() *apptest.Response {
				return env.RP("POST", "/v1/challenges", `{"user_id":"alice","action":"login","ttl":60}`)
			}, 400, "invalid_request"},
			{"not JSON", func() *apptest.Response {
				return env.RP("POST", "/v1/challenges", `user_id=alice`, "Content-Type", "application/x-www-form-urlencoded")
			}, 415, "unsupported_media_type"},
			{"bad action", func() *apptest.Response {
				return env.RP("POST", "/v1/challenges", map[string]any{"user_id": "alice", "action": "Login!"})
			}, 400, "invalid_request"},
			{"context too large", func() *apptest.Response {
				ctx := map[string]string{}
				for i := range 21 {
					ctx[fmt.Sprint("k", i)] = "v"
				}
				return env.RP("POST", "/v1/challenges", map[string]any{"user_id": "alice", "action": "login", "context": ctx})
			}, 400, "invalid_request"},
			{"ttl out of range", func() *apptest.Response {
				return env.RP("POST", "/v1/challenges", map[string]any{"user_id": "alice", "action": "login", "ttl_seconds": 5})
			}, 400, "invalid_request"},
			{"bad ip", func() *apptest.Response {
				return env.RP("POST", "/v1/challenges", map[string]any{"user_id": "alice", "action": "login", "ip": "300.1.1.1"})
			}, 400, "invalid_request"},
			{"cancel with a member", func() *apptest.Response {
				return env.RP("POST", "/v1/challenges/"+f.challenge+"/cancel", `{"reason":"x"}`)
			}, 400, "invalid_request"},
			{"email to an address the caller chooses", func() *apptest.Response {
				return env.RP("POST", "/v1/challenges/"+f.challenge+"/email", `{"user_email":"evil@example.com"}`)
			}, 400, "invalid_request"},
			{"no API key", func() *apptest.Response { return env.Do("GET", "/v1/challenges/"+f.challenge, nil, "") }, 401, "unauthorized"},
			{"watch token as an API key", func() *apptest.Response {
				wt := env.Enroll("frank", nil).Str("watch_token")
				return env.Do("GET", "/v1/challenges/"+f.challenge, nil, wt)
			}, 401, "unauthorized"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				before := f.snapshot(t)
				r := c.do()
				if r.Status != c.status {
					t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Body)
				}
				if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
					t.Errorf("content type %q", ct)
				}
				if got := r.Str("code"); got != c.code {
					t.Errorf("code %q, want %q: %s", got, c.code, r.Body)
				}
				if int(r.JSON()["status"].(float64)) != c.status {
					t.Errorf("problem status member: %s", r.Body)
				}
				if after := f.snapshot(t); after != before {
					t.Errorf("state changed:\nbefore %s\nafter  %s", before, after)
				}
			})
		}
	})
}

// Expiry: a decision after expires_at gets 410 whether or not the sweeper
// has run; an expired enrollment code is refused like a wrong one.
func TestExpiry(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		phone := env.LinkDevice("u-exp")
		ch := env.Challenge("u-exp", "login", map[string]any{"ttl_seconds": 30})
		sock := env.MustWatch(ch.Str("watch_token"))
		apptest.Frame(t, sock, 5*time.Second)
		code := env.Enroll("u-exp2", nil).Str("code")
		env.Advance(11 * time.Minute)
		later := func() time.Time { return time.Now().Add(11 * time.Minute) }
		phone.Now = later

		_, err := phone.Decide(context.Background(), ch.Str("id"), deviceclient.Decision{Approve: true})
		var p *deviceclient.Problem
		if !errors.As(err, &p) || p.Status != 410 || p.Code != "expired" {
			t.Fatalf("decision after expiry: %v", err)
		}
		f, _ := apptest.Frame(t, sock, 5*time.Second)
		if f["status"] != "expired" {
			t.Fatalf("watcher after expiry: %v", f)
		}
		claims := env.VerifyResultToken(f["result_token"].(string))
		if claims["st"] != "expired" {
			t.Fatalf("result token of an expired challenge: %v", claims)
		}
		if r := env.RP("POST", "/v1/challenges/"+ch.Str("id")+"/cancel", nil); r.Status != 409 || r.Str("current_status") != "expired" {
			t.Fatalf("cancel after expiry: %d %s", r.Status, r.Body)
		}
		late := env.NewDevice()
		late.Now = later
		err = late.Enroll(context.Background(), code, "late", "ios", deviceclient.Push{Provider: "none"})
		if !errors.As(err, &p) || p.Status != 400 || p.Code != "invalid_code" {
			t.Fatalf("expired code: %v", err)
		}
	})
}
