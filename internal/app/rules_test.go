package app_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/jws"
	"github.com/gorilla/websocket"
)

// The protocol's rules as a client notices them: limits, idempotency,
// number matching, fraud locks, long polls, step-up, device management,
// cancel and the result token. Each runs over real HTTP on both dialects.

// clock moves an instance's clock and keeps its devices' clocks with it
// (their assertions and proofs would otherwise look stale).
type clock struct {
	env  *apptest.Env
	skew atomic.Int64
}

func newClock(env *apptest.Env) *clock { return &clock{env: env} }

func (c *clock) Advance(d time.Duration) {
	c.env.Advance(d)
	c.skew.Add(int64(d))
}

func (c *clock) Now() time.Time { return time.Now().Add(time.Duration(c.skew.Load())) }

// follow makes the devices sign with the instance's clock.
func (c *clock) follow(devs ...*deviceclient.Client) {
	for _, d := range devs {
		d.Now = c.Now
	}
}

// wantProblem checks a problem answer and returns its Retry-After in
// seconds (required, and positive, with 429).
func wantProblem(t *testing.T, what string, r *apptest.Response, status int, code string) int {
	t.Helper()
	if r.Status != status || r.Str("code") != code {
		t.Fatalf("%s: %d %s, want %d %s", what, r.Status, r.Body, status, code)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: content type %q", what, ct)
	}
	if status != http.StatusTooManyRequests {
		return 0
	}
	ra, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || ra <= 0 {
		t.Fatalf("%s: Retry-After %q, want a positive number of seconds", what, r.Header.Get("Retry-After"))
	}
	return ra
}

func wantStatus(t *testing.T, what string, r *apptest.Response, status int) *apptest.Response {
	t.Helper()
	if r.Status != status {
		t.Fatalf("%s: %d %s, want %d", what, r.Status, r.Body, status)
	}
	return r
}

// wantDeviceProblem checks the error of a deviceclient call.
func wantDeviceProblem(t *testing.T, what string, err error, status int, code string) *deviceclient.Problem {
	t.Helper()
	var p *deviceclient.Problem
	if !errors.As(err, &p) || p.Status != status || p.Code != code {
		t.Fatalf("%s: %v, want %d %s", what, err, status, code)
	}
	return p
}

// finalFrame reads watch frames until a final status, then expects the
// close with 1000.
func finalFrame(t *testing.T, c *websocket.Conn) map[string]any {
	t.Helper()
	for {
		f, code := apptest.Frame(t, c, 5*time.Second)
		if code != 0 {
			t.Fatalf("socket closed (%d) before a final frame", code)
		}
		if f["status"] != "pending" {
			if _, code := apptest.Frame(t, c, 5*time.Second); code != websocket.CloseNormalClosure {
				t.Fatalf("after the final frame %v: close %d, want 1000", f, code)
			}
			return f
		}
	}
}

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// randomCode is a well-formed enrollment code nobody was given.
func randomCode() string {
	b := make([]byte, 8)
	for i := range b {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(crockford))))
		b[i] = crockford[n.Int64()]
	}
	return string(b[:4]) + "-" + string(b[4:])
}

// linkBody is a complete POST /v1/devices body for code: a fresh key and a
// valid proof made at now.
func linkBody(t *testing.T, code string, now time.Time) map[string]any {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := jws.Sign(k, map[string]any{"typ": "JWT"}, map[string]any{"code": deviceclient.NormalizeCode(code), "iat": now.Unix()})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]any{"code": code, "name": "Phone", "platform": "android",
		"public_key": jws.JWKFromPublicKey(&k.PublicKey), "push": map[string]string{"provider": "none"}, "proof": proof}
}

// postDevice sends POST /v1/devices, with an X-Forwarded-For header unless xff is "".
func postDevice(env *apptest.Env, body map[string]any, xff string) *apptest.Response {
	if xff == "" {
		return env.Do("POST", "/v1/devices", body, "")
	}
	return env.Do("POST", "/v1/devices", body, "", "X-Forwarded-For", xff)
}

func createChallenge(env *apptest.Env, body map[string]any, hdr ...string) *apptest.Response {
	return env.RP("POST", "/v1/challenges", body, hdr...)
}

func cancel(t *testing.T, env *apptest.Env, id string) {
	t.Helper()
	wantStatus(t, "cancel "+id, env.RP("POST", "/v1/challenges/"+id+"/cancel", nil), http.StatusOK)
}

// 1. Idempotency-Key: a retry returns the same challenge with a fresh,
// working watch token; a different body is refused; retries do not count
// toward limits; keys are scoped to the API key.
func TestIdempotencyKey(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		env.LinkDevice("u-idem")
		body := map[string]any{"user_id": "u-idem", "action": "login", "ip": "203.0.113.1", "context": map[string]string{"Where": "Leeds"}}

		first := wantStatus(t, "first create", createChallenge(env, body, "Idempotency-Key", "key-1"), http.StatusCreated)
		retry := wantStatus(t, "retry", createChallenge(env, body, "Idempotency-Key", "key-1"), http.StatusCreated)
		a, b := first.JSON(), retry.JSON()
		if a["watch_token"] == "" || b["watch_token"] == "" || a["watch_token"] == b["watch_token"] {
			t.Fatalf("watch tokens: first %v, retry %v: want two different tokens", a["watch_token"], b["watch_token"])
		}
		delete(a, "watch_token")
		delete(b, "watch_token")
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("a retry changed the challenge:\nfirst %s\nretry %s", first.Body, retry.Body)
		}
		for _, tok := range []string{first.Str("watch_token"), retry.Str("watch_token")} {
			f, _ := apptest.Frame(t, env.MustWatch(tok), 5*time.Second)
			if f["id"] != first.Str("id") || f["status"] != "pending" {
				t.Fatalf("watch with a token of the retried create: %v", f)
			}
		}

		other := map[string]any{"user_id": "u-idem", "action": "submit_offer", "ip": "203.0.113.1"}
		wantProblem(t, "same key, other body", createChallenge(env, other, "Idempotency-Key", "key-1"), 400, "invalid_request")

		// Fill the requester's three pending places, then retry the first.
		wantStatus(t, "second pending", createChallenge(env, body, "Idempotency-Key", "key-2"), http.StatusCreated)
		wantStatus(t, "third pending", createChallenge(env, body), http.StatusCreated)
		wantProblem(t, "a fourth pending", createChallenge(env, body), 429, "rate_limited")
		again := wantStatus(t, "retry at the limit", createChallenge(env, body, "Idempotency-Key", "key-1"), http.StatusCreated)
		if again.Str("id") != first.Str("id") {
			t.Fatalf("retry at the limit made %s, want %s", again.Str("id"), first.Str("id"))
		}
		wantStatus(t, "retry of the second at the limit", createChallenge(env, body, "Idempotency-Key", "key-2"), http.StatusCreated)

		// Another API key has its own keys.
		key2 := env.NewAPIKey("rp-other")
		scoped := map[string]any{"user_id": "u-idem-scope", "action": "login"}
		x := wantStatus(t, "key A", createChallenge(env, scoped, "Idempotency-Key", "shared"), http.StatusCreated)
		y := wantStatus(t, "key B", env.Do("POST", "/v1/challenges", scoped, key2, "Idempotency-Key", "shared"), http.StatusCreated)
		if x.Str("id") == y.Str("id") {
			t.Fatalf("another API key's Idempotency-Key returned its challenge %s", x.Str("id"))
		}
		y2 := wantStatus(t, "key B retry", env.Do("POST", "/v1/challenges", scoped, key2, "Idempotency-Key", "shared"), http.StatusCreated)
		if y2.Str("id") != y.Str("id") {
			t.Fatalf("key B's retry made %s, want %s", y2.Str("id"), y.Str("id"))
		}
		// key-1 was used by key A with another body: for key B it is new.
		wantStatus(t, "key B reuses key A's key-1", env.Do("POST", "/v1/challenges",
			map[string]any{"user_id": "u-idem-scope2", "action": "login"}, key2, "Idempotency-Key", "key-1"), http.StatusCreated)

		// Keys are kept 24 hours.
		clk := newClock(env)
		clk.Advance(23 * time.Hour)
		if r := wantStatus(t, "retry 23 hours later", createChallenge(env, body, "Idempotency-Key", "key-1"), http.StatusCreated); r.Str("id") != first.Str("id") {
			t.Fatalf("retry 23 hours later made %s, want %s", r.Str("id"), first.Str("id"))
		}
		clk.Advance(2 * time.Hour)
		if r := wantStatus(t, "the key 25 hours later", createChallenge(env, other, "Idempotency-Key", "key-1"), http.StatusCreated); r.Str("id") == first.Str("id") {
			t.Fatalf("the key 25 hours later still returns %s", r.Str("id"))
		}
	})
}

// 2. Anti-fatigue limits per requester and per user, pending and recent.
func TestAntiFatigueLimits(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		c := func(user, ip string) *apptest.Response {
			b := map[string]any{"user_id": user, "action": "login"}
			if ip != "" {
				b["ip"] = ip
			}
			return createChallenge(env, b)
		}

		// Per requester (user_id, ip): 3 pending.
		for i := range 3 {
			wantStatus(t, fmt.Sprint("pending ", i+1), c("u-req", "203.0.113.1"), http.StatusCreated)
		}
		wantProblem(t, "a fourth pending for one requester", c("u-req", "203.0.113.1"), 429, "rate_limited")
		wantStatus(t, "same user, another ip", c("u-req", "203.0.113.2"), http.StatusCreated)
		// Without ip the requester is the user alone.
		for i := range 3 {
			wantStatus(t, fmt.Sprint("no ip ", i+1), c("u-noip", ""), http.StatusCreated)
		}
		wantProblem(t, "a fourth without ip", c("u-noip", ""), 429, "rate_limited")
		wantStatus(t, "with an ip after three without", c("u-noip", "203.0.113.3"), http.StatusCreated)

		// Per user: 10 pending across requesters.
		for i := range 10 {
			wantStatus(t, fmt.Sprint("user pending ", i+1), c("u-many", fmt.Sprintf("198.51.100.%d", i+1)), http.StatusCreated)
		}
		wantProblem(t, "an 11th pending for the user", c("u-many", "198.51.100.11"), 429, "rate_limited")

		// Per requester: 10 new in 10 minutes, pending or not.
		clk := newClock(env)
		for i := range 10 {
			r := wantStatus(t, fmt.Sprint("recent ", i+1), c("u-recent", "192.0.2.1"), http.StatusCreated)
			cancel(t, env, r.Str("id"))
		}
		wantProblem(t, "an 11th in 10 minutes for one requester", c("u-recent", "192.0.2.1"), 429, "rate_limited")
		wantStatus(t, "another requester of the same user", c("u-recent", "192.0.2.2"), http.StatusCreated)

		// Per user: 30 new in 10 minutes across requesters.
		for i := range 30 {
			r := wantStatus(t, fmt.Sprint("user recent ", i+1), c("u-burst", fmt.Sprintf("192.0.2.%d", 10+i)), http.StatusCreated)
			cancel(t, env, r.Str("id"))
		}
		wantProblem(t, "a 31st in 10 minutes for the user", c("u-burst", "192.0.2.99"), 429, "rate_limited")

		clk.Advance(11 * time.Minute)
		wantStatus(t, "requester after the window", c("u-recent", "192.0.2.1"), http.StatusCreated)
		wantStatus(t, "user after the window", c("u-burst", "192.0.2.99"), http.StatusCreated)
	})
}

// 3. Failed enrollment codes are limited per client IP (the connection's
// address unless it is a trusted proxy; IPv6 by /64) and overall.
func TestEnrollmentCodeFailures(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		t.Run("per IP, X-Forwarded-For not believed", func(t *testing.T) {
			env := apptest.Start(t, dialect)
			clk := newClock(env)
			code := env.Enroll("u-code", nil).Str("code")
			for i := range 20 {
				// A different X-Forwarded-For each time: not trusted, so
				// every failure counts against the connection's address.
				wantProblem(t, fmt.Sprint("wrong code ", i+1), postDevice(env, linkBody(t, randomCode(), clk.Now()), fmt.Sprintf("198.51.100.%d", i+1)), 400, "invalid_code")
			}
			wantProblem(t, "right code after 20 wrong", postDevice(env, linkBody(t, code, clk.Now()), "203.0.113.50"), 429, "rate_limited")
			wantProblem(t, "wrong code after 20 wrong", postDevice(env, linkBody(t, randomCode(), clk.Now()), ""), 429, "rate_limited")

			clk.Advance(11 * time.Minute)
			fresh := env.Enroll("u-code", nil).Str("code") // the first code has expired
			wantStatus(t, "right code after the window", postDevice(env, linkBody(t, fresh, clk.Now()), ""), http.StatusCreated)
		})

		t.Run("per forwarded client behind a trusted proxy", func(t *testing.T) {
			env := apptest.Start(t, dialect, apptest.WithEnv("APPROVALD_TRUSTED_PROXIES", "127.0.0.1"))
			now := time.Now
			for i := range 20 {
				wantProblem(t, fmt.Sprint("wrong code ", i+1), postDevice(env, linkBody(t, randomCode(), now()), "198.51.100.7"), 400, "invalid_code")
			}
			code := env.Enroll("u-fwd", nil).Str("code")
			wantProblem(t, "the 21st from the same client", postDevice(env, linkBody(t, code, now()), "198.51.100.7"), 429, "rate_limited")
			// Entries left of the client are its own words.
			wantProblem(t, "the same client, spoofing an address on the left", postDevice(env, linkBody(t, code, now()), "198.51.100.8, 198.51.100.7"), 429, "rate_limited")
			wantStatus(t, "another client with the right code", postDevice(env, linkBody(t, code, now()), "198.51.100.8"), http.StatusCreated)

			// IPv6 clients share a count per /64.
			for i := range 10 {
				wantProblem(t, fmt.Sprint("v6 ::1 wrong ", i+1), postDevice(env, linkBody(t, randomCode(), now()), "2001:db8::1"), 400, "invalid_code")
				wantProblem(t, fmt.Sprint("v6 ::2 wrong ", i+1), postDevice(env, linkBody(t, randomCode(), now()), "2001:db8::2"), 400, "invalid_code")
			}
			code = env.Enroll("u-fwd6", nil).Str("code")
			wantProblem(t, "another address of the same /64", postDevice(env, linkBody(t, code, now()), "2001:db8::3"), 429, "rate_limited")
			wantStatus(t, "another /64", postDevice(env, linkBody(t, code, now()), "2001:db8:0:1::1"), http.StatusCreated)
		})

		t.Run("all clients together", func(t *testing.T) {
			env := apptest.Start(t, dialect, apptest.WithEnv("APPROVALD_TRUSTED_PROXIES", "127.0.0.1"),
				apptest.WithEnv("APPROVALD_CODE_FAILURES_TOTAL", "5"))
			clk := newClock(env)
			code := env.Enroll("u-total", nil).Str("code")
			for i := range 6 {
				wantProblem(t, fmt.Sprint("wrong code ", i+1), postDevice(env, linkBody(t, randomCode(), clk.Now()), fmt.Sprintf("192.0.2.%d", i+1)), 400, "invalid_code")
			}
			wantProblem(t, "a right code from a new client", postDevice(env, linkBody(t, code, clk.Now()), "192.0.2.100"), 429, "rate_limited")
			wantProblem(t, "a wrong code from a new client", postDevice(env, linkBody(t, randomCode(), clk.Now()), "192.0.2.101"), 429, "rate_limited")
			clk.Advance(11 * time.Minute)
			code = env.Enroll("u-total", nil).Str("code")
			wantStatus(t, "after the window", postDevice(env, linkBody(t, code, clk.Now()), "192.0.2.100"), http.StatusCreated)
		})
	})
}

var threeDigits = regexp.MustCompile(`^[0-9]{3}$`)

// otherNumber is a number of the same length that is not n.
func otherNumber(n string) string {
	v, _ := strconv.Atoi(n)
	return fmt.Sprintf("%0*d", len(n), (v+1)%1000)
}

// 4. Number matching: when it is on, what the browser and the device see,
// and how wrong numbers count.
func TestNumberMatching(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect, apptest.WithEnv("APPROVALD_NUMBER_MATCHING", "login"))
		ctx := context.Background()
		phone := env.LinkDevice("u-nm")
		mk := func(action, ip string, nm *bool) *apptest.Response {
			b := map[string]any{"user_id": "u-nm", "action": action, "ip": ip}
			if nm != nil {
				b["number_matching"] = *nm
			}
			return wantStatus(t, action, createChallenge(env, b), http.StatusCreated)
		}
		yes, no := true, false
		cases := []struct {
			name   string
			r      *apptest.Response
			number bool
		}{
			{"link_device", mk("link_device", "203.0.113.1", nil), true},
			{"link_device, number_matching false", mk("link_device", "203.0.113.2", &no), true},
			{"login (configured), number_matching false", mk("login", "203.0.113.3", &no), true},
			{"submit_offer, number_matching true", mk("submit_offer", "203.0.113.4", &yes), true},
			{"submit_offer", mk("submit_offer", "203.0.113.5", nil), false},
		}
		numbers := map[string]string{} // challenge id -> number
		for _, c := range cases {
			m := c.r.JSON()
			n, has := m["number"].(string)
			switch {
			case c.number && !threeDigits.MatchString(n):
				t.Errorf("%s: number %v, want 3 digits: %s", c.name, m["number"], c.r.Body)
			case !c.number && m["number"] != nil:
				t.Errorf("%s: number %v without number matching", c.name, m["number"])
			}
			if has {
				numbers[c.r.Str("id")] = n
			}
			if got := env.RP("GET", "/v1/challenges/"+c.r.Str("id"), nil).JSON()["number"]; c.number && got != n {
				t.Errorf("%s: GET shows number %v, create said %q", c.name, got, n)
			}
		}

		// The device learns that a number is needed, never the number.
		list, err := phone.Pending(ctx, 0)
		if err != nil || len(list) != len(cases) {
			t.Fatalf("device list: %d challenges, %v", len(list), err)
		}
		for _, ch := range list {
			if _, want := numbers[ch.ID]; ch.NumberMatching != want {
				t.Errorf("device list: %s number_matching %v, want %v", ch.ID, ch.NumberMatching, want)
			}
		}
		tok, _ := phone.Assertion()
		raw := wantStatus(t, "device list", env.Do("GET", "/v1/device/challenges", nil, tok), http.StatusOK)
		var body any
		if err := json.Unmarshal(raw.Body, &body); err != nil {
			t.Fatal(err)
		}
		var walk func(path string, v any)
		walk = func(path string, v any) {
			switch v := v.(type) {
			case map[string]any:
				for k, x := range v {
					if k == "number" {
						t.Errorf("device view has a number member at %s: %s", path, raw.Body)
					}
					walk(path+"."+k, x)
				}
			case []any:
				for i, x := range v {
					walk(fmt.Sprintf("%s[%d]", path, i), x)
				}
			case string:
				for _, n := range numbers {
					if v == n {
						t.Errorf("device view shows the number %q at %s", n, path)
					}
				}
			}
		}
		walk("", body)
		for _, c := range cases {
			cancel(t, env, c.r.Str("id"))
		}

		// Wrong numbers: a missing one is not counted, the third wrong denies.
		ch := mk("login", "203.0.113.10", nil)
		id, num := ch.Str("id"), ch.Str("number")
		sock := env.MustWatch(ch.Str("watch_token"))
		apptest.Frame(t, sock, 5*time.Second)
		noNum, err := phone.SignedDecision(id, map[string]any{"dec": "approve"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = phone.SendDecision(ctx, id, noNum)
		wantDeviceProblem(t, "approve without num", err, 400, "invalid_request")
		for i := range 2 {
			_, err := phone.Decide(ctx, id, deviceclient.Decision{Approve: true, Number: otherNumber(num)})
			wantDeviceProblem(t, fmt.Sprint("wrong number ", i+1), err, 422, "number_mismatch")
			if st := env.RP("GET", "/v1/challenges/"+id, nil).Str("status"); st != "pending" {
				t.Fatalf("after wrong number %d (and a missing one): status %q, want pending", i+1, st)
			}
		}
		_, err = phone.Decide(ctx, id, deviceclient.Decision{Approve: true, Number: otherNumber(num)})
		wantDeviceProblem(t, "third wrong number", err, 422, "number_mismatch")
		if f := finalFrame(t, sock); f["status"] != "denied" {
			t.Fatalf("browser after the third wrong number: %v", f)
		}
		if st := env.RP("GET", "/v1/challenges/"+id, nil).Str("status"); st != "denied" {
			t.Fatalf("after the third wrong number: status %q, want denied", st)
		}
		_, err = phone.Decide(ctx, id, deviceclient.Decision{Approve: true, Number: num})
		if p := wantDeviceProblem(t, "right number after the denial", err, 409, "not_pending"); p.CurrentStatus != "denied" {
			t.Fatalf("current_status %q", p.CurrentStatus)
		}

		// The right number approves.
		ch = mk("login", "203.0.113.11", nil)
		if st, err := phone.Decide(ctx, ch.Str("id"), deviceclient.Decision{Approve: true, Number: ch.Str("number")}); err != nil || st != "approved" {
			t.Fatalf("right number: %q %v", st, err)
		}

		// The numbers of one user's pending challenges are all different:
		// ten pending, then twenty times one ends and another starts.
		var pending []string // ids, oldest first
		taken := map[string]string{}
		create := func(i int) {
			r := wantStatus(t, fmt.Sprint("numbered ", i), createChallenge(env, map[string]any{"user_id": "u-nm-many", "action": "submit_offer",
				"number_matching": true, "ip": fmt.Sprintf("198.51.100.%d", i+1)}), http.StatusCreated)
			n := r.Str("number")
			if !threeDigits.MatchString(n) {
				t.Fatalf("numbered %d: number %q", i, n)
			}
			if prev, dup := taken[n]; dup {
				t.Fatalf("challenge %d got number %s, already shown for pending %s", i, n, prev)
			}
			taken[n] = r.Str("id")
			pending = append(pending, r.Str("id"))
		}
		for i := range 10 {
			create(i)
		}
		for i := 10; i < 30; i++ {
			old := pending[0]
			pending = pending[1:]
			cancel(t, env, old)
			for n, id := range taken {
				if id == old {
					delete(taken, n)
				}
			}
			create(i)
		}
	})
}

// 5. A fraud report cancels the user's other pending challenges and locks
// the user for 15 minutes.
func TestFraudReport(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		clk := newClock(env)
		ctx := context.Background()
		phone := env.LinkDevice("u-fraud")
		env.LinkDevice("u-bystander")
		clk.follow(phone)

		reported := env.Challenge("u-fraud", "login", map[string]any{"ip": "203.0.113.1"})
		var others []*websocket.Conn
		var otherIDs []string
		for i := range 3 {
			r := env.Challenge("u-fraud", "submit_offer", map[string]any{"ip": fmt.Sprintf("203.0.113.%d", 10+i)})
			sock := env.MustWatch(r.Str("watch_token"))
			apptest.Frame(t, sock, 5*time.Second)
			others = append(others, sock)
			otherIDs = append(otherIDs, r.Str("id"))
		}
		bystander := env.Challenge("u-bystander", "login", nil)

		st, err := phone.Decide(ctx, reported.Str("id"), deviceclient.Decision{Approve: false, Fraud: true})
		if err != nil || st != "denied" {
			t.Fatalf("fraud deny: %q %v", st, err)
		}
		got := env.RP("GET", "/v1/challenges/"+reported.Str("id"), nil).JSON()
		if got["status"] != "denied" || got["fraud_reported"] != true {
			t.Fatalf("reported challenge: %v", got)
		}
		for i, sock := range others {
			if f := finalFrame(t, sock); f["status"] != "cancelled" {
				t.Fatalf("other pending challenge %d: frame %v, want cancelled", i, f)
			}
			if st := env.RP("GET", "/v1/challenges/"+otherIDs[i], nil).Str("status"); st != "cancelled" {
				t.Fatalf("other pending challenge %d: status %q", i, st)
			}
		}
		if st := env.RP("GET", "/v1/challenges/"+bystander.Str("id"), nil).Str("status"); st != "pending" {
			t.Fatalf("another user's challenge: %q, want pending", st)
		}

		ra := wantProblem(t, "challenge while locked", createChallenge(env, map[string]any{"user_id": "u-fraud", "action": "login", "ip": "198.51.100.1"}), 429, "user_locked")
		if ra < 880 || ra > 900 {
			t.Errorf("Retry-After %d, want about 900", ra)
		}
		ra = wantProblem(t, "enrollment while locked", env.RP("POST", "/v1/enrollments", map[string]any{"user_id": "u-fraud"}), 429, "user_locked")
		if ra < 880 || ra > 900 {
			t.Errorf("enrollment Retry-After %d, want about 900", ra)
		}
		env.Challenge("u-bystander", "login", map[string]any{"ip": "198.51.100.2"})
		env.Enroll("u-newcomer", nil)

		clk.Advance(10 * time.Minute)
		wantProblem(t, "challenge 10 minutes later", createChallenge(env, map[string]any{"user_id": "u-fraud", "action": "login", "ip": "198.51.100.1"}), 429, "user_locked")
		clk.Advance(6 * time.Minute)
		env.Challenge("u-fraud", "login", map[string]any{"ip": "198.51.100.1"})
		link := env.Challenge("u-fraud", "link_device", nil)
		if _, err := phone.Decide(ctx, link.Str("id"), deviceclient.Decision{Approve: true, Number: link.Str("number")}); err != nil {
			t.Fatal(err)
		}
		env.Enroll("u-fraud", map[string]any{"authorized_by": link.Str("id")})
	})
}

// 6. Long polls for the RP and the device, and the device's request limit.
func TestLongPoll(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		ctx := context.Background()
		phone := env.LinkDevice("u-poll")

		ch := env.Challenge("u-poll", "login", nil)
		id := ch.Str("id")
		got := make(chan *apptest.Response, 1)
		go func() { got <- env.RP("GET", "/v1/challenges/"+id+"?wait=5", nil) }()
		time.Sleep(200 * time.Millisecond)
		if _, err := phone.Decide(ctx, id, deviceclient.Decision{Approve: true}); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.Status != http.StatusOK || r.Str("status") != "approved" || r.Str("result_token") == "" {
			t.Fatalf("long poll across a decision: %d %s, want the approved challenge", r.Status, r.Body)
		}

		pend := env.Challenge("u-poll", "login", nil)
		start := time.Now()
		r = env.RP("GET", "/v1/challenges/"+pend.Str("id")+"?wait=1", nil)
		if el := time.Since(start); r.Status != http.StatusOK || r.Str("status") != "pending" || el < 900*time.Millisecond {
			t.Fatalf("wait=1 on a pending challenge: %d %s after %v", r.Status, r.Body, el)
		}
		for _, w := range []string{"31", "-1", "abc", "1.5"} {
			wantProblem(t, "wait="+w, env.RP("GET", "/v1/challenges/"+pend.Str("id")+"?wait="+w, nil), 400, "invalid_request")
		}
		cancel(t, env, pend.Str("id"))

		type result struct {
			list []deviceclient.Challenge
			err  error
		}
		dev := make(chan result, 1)
		go func() {
			l, err := phone.Pending(ctx, 5*time.Second)
			dev <- result{l, err}
		}()
		time.Sleep(200 * time.Millisecond)
		created := env.Challenge("u-poll", "submit_offer", nil)
		res := <-dev
		if res.err != nil || len(res.list) != 1 || res.list[0].ID != created.Str("id") {
			t.Fatalf("device long poll across a create: %+v %v", res.list, res.err)
		}
		tok, _ := phone.Assertion()
		wantProblem(t, "device wait=31", env.Do("GET", "/v1/device/challenges?wait=31", nil, tok), 400, "invalid_request")
	})
}

func TestDeviceRequestLimit(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect, apptest.WithEnv("APPROVALD_DEVICE_REQUESTS_PER_MINUTE", "5"))
		clk := newClock(env)
		phone := env.LinkDevice("u-rate")
		clk.follow(phone)
		// Start just after a minute turns, so that all six fall in one.
		now := time.Now()
		clk.Advance(now.Truncate(time.Minute).Add(time.Minute + time.Second).Sub(now))
		for i := range 5 {
			if _, err := phone.Pending(context.Background(), 0); err != nil {
				t.Fatalf("request %d: %v", i+1, err)
			}
		}
		_, err := phone.Pending(context.Background(), 0)
		if p := wantDeviceProblem(t, "sixth request in a minute", err, 429, "rate_limited"); p.RetryAfter <= 0 || p.RetryAfter > time.Minute {
			t.Fatalf("Retry-After %v", p.RetryAfter)
		}
		clk.Advance(time.Minute)
		if _, err := phone.Pending(context.Background(), 0); err != nil {
			t.Fatalf("the next minute: %v", err)
		}
	})
}

// 7. Step-up when changing the linked device, and the end of other
// pending enrollments.
func TestStepUp(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		clk := newClock(env)
		ctx := context.Background()
		old := env.LinkDevice("u-su")
		other := env.LinkDevice("u-su-other")
		clk.follow(old, other)
		approved := func(d *deviceclient.Client, user string) string {
			t.Helper()
			r := env.Challenge(user, "link_device", nil)
			if m, _ := r.JSON()["methods"].([]any); len(m) != 1 || m[0] != "push" {
				t.Errorf("link_device methods: %s", r.Body)
			}
			if st, err := d.Decide(ctx, r.Str("id"), deviceclient.Decision{Approve: true, Number: r.Str("number")}); err != nil || st != "approved" {
				t.Fatalf("approve link_device: %q %v", st, err)
			}
			return r.Str("id")
		}
		enroll := func(by string) *apptest.Response {
			b := map[string]any{"user_id": "u-su"}
			if by != "" {
				b["authorized_by"] = by
			}
			return env.RP("POST", "/v1/enrollments", b)
		}

		wantProblem(t, "no authorized_by", enroll(""), 403, "step_up_required")
		stale := approved(old, "u-su")
		clk.Advance(11 * time.Minute)
		wantProblem(t, "authorized_by decided 11 minutes ago", enroll(stale), 403, "step_up_required")

		denied := env.Challenge("u-su", "link_device", nil).Str("id")
		if _, err := old.Decide(ctx, denied, deviceclient.Decision{Approve: false}); err != nil {
			t.Fatal(err)
		}
		wantProblem(t, "a denied authorized_by", enroll(denied), 403, "step_up_required")
		wantProblem(t, "another user's authorized_by", enroll(approved(other, "u-su-other")), 403, "step_up_required")
		login := env.Challenge("u-su", "login", nil).Str("id")
		if _, err := old.Decide(ctx, login, deviceclient.Decision{Approve: true}); err != nil {
			t.Fatal(err)
		}
		wantProblem(t, "an approved login as authorized_by", enroll(login), 403, "step_up_required")
		wantProblem(t, "an unknown authorized_by", enroll("no-such-challenge"), 403, "step_up_required")

		by := approved(old, "u-su")
		en := wantStatus(t, "enrollment with step-up", enroll(by), http.StatusCreated)
		if en.Str("step_up_method") != "push" {
			t.Fatalf("step_up_method: %s", en.Body)
		}
		wantProblem(t, "the same authorized_by twice", enroll(by), 403, "step_up_required")
		view := wantStatus(t, "GET enrollment", env.RP("GET", "/v1/enrollments/"+en.Str("id"), nil), http.StatusOK).JSON()
		if view["step_up_method"] != "push" || view["status"] != "pending" || view["id"] != en.Str("id") || view["user_id"] != "u-su" {
			t.Fatalf("GET enrollment: %v", view)
		}
		for _, k := range []string{"code", "enroll_uri", "watch_token"} {
			if _, ok := view[k]; ok {
				t.Errorf("GET enrollment shows %s", k)
			}
		}

		oldTok, _ := old.Assertion()
		if _, err := old.Pending(ctx, 0); err != nil {
			t.Fatalf("old device before the new one links: %v", err)
		}
		phone := env.NewDevice()
		phone.Now = clk.Now
		if err := phone.Enroll(ctx, en.Str("code"), "New phone", "ios", deviceclient.Push{Provider: "none"}); err != nil {
			t.Fatalf("link with step-up: %v", err)
		}
		_, err := old.Pending(ctx, 0)
		wantDeviceProblem(t, "the retired device's assertion", err, 401, "unauthorized")
		wantProblem(t, "the retired device's unused assertion", env.Do("GET", "/v1/device/challenges", nil, oldTok), 401, "unauthorized")
		var list struct {
			Devices []map[string]any `json:"devices"`
		}
		_ = json.Unmarshal(env.RP("GET", "/v1/users/u-su/devices", nil).Body, &list)
		if len(list.Devices) != 1 || list.Devices[0]["id"] != phone.DeviceID {
			t.Fatalf("devices after the change: %v", list.Devices)
		}
		view = env.RP("GET", "/v1/enrollments/"+en.Str("id"), nil).JSON()
		if d, _ := view["device"].(map[string]any); view["status"] != "linked" || d["id"] != phone.DeviceID || view["step_up_method"] != "push" {
			t.Fatalf("GET linked enrollment: %v", view)
		}
		// A retired device's decisions are refused too.
		ch := env.Challenge("u-su", "login", nil)
		_, err = old.Decide(ctx, ch.Str("id"), deviceclient.Decision{Approve: true})
		wantDeviceProblem(t, "the retired device decides", err, 403, "forbidden")
	})
}

// The step-up rule is checked again when the code is used: an enrollment
// made without authorized_by while the user had no device (it raced with
// another link) is refused once the user has one, and ends.
func TestStepUpCheckedWhenCodeIsUsed(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		ctx := context.Background()

		// Over HTTP, a later enrollment ends an earlier one, so the race
		// (the device check of POST /v1/enrollments passing just before
		// another enrollment links a device) is set up in the store: an
		// enrollment without authorized_by for a user who has a device.
		phone := env.LinkDevice("u-late")
		code := auth.NewEnrollmentCode()
		now := time.Now().UTC().Truncate(time.Millisecond)
		e := &approval.Enrollment{ID: auth.NewID(), UserID: "u-late", CodeHash: auth.HashSecret(code), Status: approval.EnrollPending,
			CreatedAt: now, ExpiresAt: now.Add(10 * time.Minute), APIKeyName: "test"}
		if _, err := env.Store.CreateEnrollment(ctx, e, "", time.Time{}, approval.AuditEntry{}); err != nil {
			t.Fatal(err)
		}
		wantProblem(t, "a code without step-up once the user has a device", postDevice(env, linkBody(t, auth.FormatCode(code), time.Now()), ""), 400, "invalid_code")
		if st := env.RP("GET", "/v1/enrollments/"+e.ID, nil).Str("status"); st != "expired" {
			t.Fatalf("the enrollment after the refusal: %q, want expired", st)
		}
		wantProblem(t, "the same code again", postDevice(env, linkBody(t, auth.FormatCode(code), time.Now()), ""), 400, "invalid_code")
		var list struct {
			Devices []map[string]any `json:"devices"`
		}
		_ = json.Unmarshal(env.RP("GET", "/v1/users/u-late/devices", nil).Body, &list)
		if len(list.Devices) != 1 || list.Devices[0]["id"] != phone.DeviceID {
			t.Fatalf("devices: %v", list.Devices)
		}
		// The refusal is not a failed code; the second try was one.
		perIP, _, err := env.Store.CodeFailures(ctx, "127.0.0.1", now.Add(-time.Minute))
		if err != nil || perIP != 1 {
			t.Fatalf("failed codes counted: %d %v, want 1 (the retry of an ended code)", perIP, err)
		}

		// Creating an enrollment ends the user's other pending one.
		first := env.Enroll("u-twice", nil)
		sock := env.MustWatch(first.Str("watch_token"))
		if f, _ := apptest.Frame(t, sock, 5*time.Second); f["status"] != "pending" {
			t.Fatalf("first frame: %v", f)
		}
		second := env.Enroll("u-twice", nil)
		f := finalFrame(t, sock)
		if f["type"] != "enrollment" || f["status"] != "expired" || f["id"] != first.Str("id") {
			t.Fatalf("the first enrollment's watcher: %v", f)
		}
		if st := env.RP("GET", "/v1/enrollments/"+first.Str("id"), nil).Str("status"); st != "expired" {
			t.Fatalf("first enrollment: %q, want expired", st)
		}
		wantProblem(t, "the ended enrollment's code", postDevice(env, linkBody(t, first.Str("code"), time.Now()), ""), 400, "invalid_code")
		wantStatus(t, "the new enrollment's code", postDevice(env, linkBody(t, second.Str("code"), time.Now()), ""), http.StatusCreated)
	})
}

// 8. Device management by the RP and by the device itself.
func TestDeviceManagement(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		ctx := context.Background()
		devices := func(user string) []map[string]any {
			t.Helper()
			r := wantStatus(t, "device list", env.RP("GET", "/v1/users/"+user+"/devices", nil), http.StatusOK)
			var list struct {
				Devices []map[string]any `json:"devices"`
			}
			if err := json.Unmarshal(r.Body, &list); err != nil || list.Devices == nil {
				t.Fatalf("device list: %s", r.Body)
			}
			return list.Devices
		}
		wantMembers := func(what string, d map[string]any) {
			t.Helper()
			var keys []string
			for k := range d {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			if strings.Join(keys, ",") != "created_at,id,last_seen_at,name,platform,push_provider" {
				t.Fatalf("%s: members %v, want id,name,platform,push_provider,created_at,last_seen_at", what, keys)
			}
			if _, err := time.Parse(time.RFC3339, d["created_at"].(string)); err != nil {
				t.Fatalf("%s: created_at %v", what, d["created_at"])
			}
			if v := d["last_seen_at"]; v != nil {
				s, _ := v.(string)
				if _, err := time.Parse(time.RFC3339, s); err != nil {
					t.Fatalf("%s: last_seen_at %v, want a time or null", what, v)
				}
			}
		}

		phone := env.LinkDevice("u-dev")
		list := devices("u-dev")
		if len(list) != 1 || list[0]["id"] != phone.DeviceID || list[0]["name"] != "Test phone" || list[0]["platform"] != "android" || list[0]["push_provider"] != "none" {
			t.Fatalf("devices: %v", list)
		}
		wantMembers("a new device", list[0])
		if _, err := phone.Pending(ctx, 0); err != nil {
			t.Fatal(err)
		}
		list = devices("u-dev")
		wantMembers("a device that called", list[0])
		if _, ok := list[0]["last_seen_at"].(string); !ok {
			t.Fatalf("last_seen_at after a call: %v", list[0]["last_seen_at"])
		}

		// The device's push registration.
		if err := phone.SetPush(ctx, deviceclient.Push{Provider: "fcm", Token: "t"}); err != nil {
			t.Fatalf("PUT /v1/device/push: %v", err)
		}
		if p := devices("u-dev")[0]["push_provider"]; p != "fcm" {
			t.Fatalf("push_provider after the change: %v", p)
		}
		for _, bad := range []deviceclient.Push{{Provider: "sms", Token: "t"}, {Provider: "fcm"}, {Provider: "none", Token: "t"}} {
			wantDeviceProblem(t, fmt.Sprintf("push %+v", bad), phone.SetPush(ctx, bad), 400, "invalid_request")
		}
		if p := devices("u-dev")[0]["push_provider"]; p != "fcm" {
			t.Fatalf("push_provider after refused changes: %v", p)
		}

		// The RP removes a device.
		path := "/v1/users/u-dev/devices/" + phone.DeviceID
		wantProblem(t, "another user's device", env.RP("DELETE", "/v1/users/u-someone/devices/"+phone.DeviceID, nil), 404, "not_found")
		if r := env.RP("DELETE", path, nil); r.Status != http.StatusNoContent || len(r.Body) != 0 {
			t.Fatalf("DELETE: %d %s", r.Status, r.Body)
		}
		wantProblem(t, "DELETE again", env.RP("DELETE", path, nil), 404, "not_found")
		if l := devices("u-dev"); len(l) != 0 {
			t.Fatalf("devices after DELETE: %v", l)
		}
		_, err := phone.Pending(ctx, 0)
		wantDeviceProblem(t, "a removed device", err, 401, "unauthorized")

		// With a step-up, which is then used up.
		first := env.LinkDevice("u-dev2")
		link := env.Challenge("u-dev2", "link_device", nil)
		if _, err := first.Decide(ctx, link.Str("id"), deviceclient.Decision{Approve: true, Number: link.Str("number")}); err != nil {
			t.Fatal(err)
		}
		wantProblem(t, "DELETE with an unknown authorized_by", env.RP("DELETE", "/v1/users/u-dev2/devices/"+first.DeviceID+"?authorized_by=nope", nil), 403, "step_up_required")
		wantStatus(t, "DELETE with authorized_by", env.RP("DELETE", "/v1/users/u-dev2/devices/"+first.DeviceID+"?authorized_by="+link.Str("id"), nil), http.StatusNoContent)
		second := env.LinkDevice("u-dev2") // no active device: no step-up
		wantProblem(t, "DELETE with a used authorized_by", env.RP("DELETE", "/v1/users/u-dev2/devices/"+second.DeviceID+"?authorized_by="+link.Str("id"), nil), 403, "step_up_required")
		if l := devices("u-dev2"); len(l) != 1 || l[0]["id"] != second.DeviceID {
			t.Fatalf("devices after a refused DELETE: %v", l)
		}

		// The device unlinks itself.
		if err := second.Unlink(ctx); err != nil {
			t.Fatalf("DELETE /v1/device: %v", err)
		}
		_, err = second.Pending(ctx, 0)
		wantDeviceProblem(t, "an unlinked device", err, 401, "unauthorized")
		if l := devices("u-dev2"); len(l) != 0 {
			t.Fatalf("devices after unlinking: %v", l)
		}
	})
}

// 9. Cancel.
func TestCancel(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		ch := env.Challenge("u-cancel", "login", nil)
		id := ch.Str("id")
		sock := env.MustWatch(ch.Str("watch_token"))
		apptest.Frame(t, sock, 5*time.Second)
		r := wantStatus(t, "cancel", env.RP("POST", "/v1/challenges/"+id+"/cancel", nil), http.StatusOK)
		if r.Str("status") != "cancelled" || r.Str("id") != id {
			t.Fatalf("cancel: %s", r.Body)
		}
		claims := env.VerifyResultToken(r.Str("result_token"))
		if claims["st"] != "cancelled" || claims["cid"] != id || claims["sub"] != "u-cancel" {
			t.Fatalf("result token of a cancelled challenge: %v", claims)
		}
		if f := finalFrame(t, sock); f["status"] != "cancelled" || f["result_token"] != r.Str("result_token") {
			t.Fatalf("browser after cancel: %v", f)
		}
		again := env.RP("POST", "/v1/challenges/"+id+"/cancel", nil)
		wantProblem(t, "cancel again", again, 409, "not_pending")
		if again.Str("current_status") != "cancelled" {
			t.Fatalf("current_status: %s", again.Body)
		}
		wantProblem(t, "cancel an unknown challenge", env.RP("POST", "/v1/challenges/nope/cancel", nil), 404, "not_found")
	})
}

// 10. The result token: its header, its claims, its key in the JWKS, and
// the same token on every later read.
func TestResultToken(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		clk := newClock(env)
		phone := env.LinkDevice("u-rt")
		clk.follow(phone)
		ch := env.Challenge("u-rt", "submit_offer", nil)
		id := ch.Str("id")
		if _, err := phone.Decide(context.Background(), id, deviceclient.Decision{Approve: true}); err != nil {
			t.Fatal(err)
		}
		got := env.RP("GET", "/v1/challenges/"+id, nil).JSON()
		tok, _ := got["result_token"].(string)
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("result token %q is not a compact JWS", tok)
		}
		hb, err := base64.RawURLEncoding.DecodeString(parts[0])
		if err != nil {
			t.Fatal(err)
		}
		var hdr map[string]any
		if err := json.Unmarshal(hb, &hdr); err != nil {
			t.Fatal(err)
		}
		if hdr["alg"] != "ES256" || hdr["typ"] != "JWT" || hdr["kid"] == nil || hdr["kid"] == "" {
			t.Fatalf("result token header: %s", hb)
		}
		var set struct {
			Keys []map[string]any `json:"keys"`
		}
		_ = json.Unmarshal(env.Do("GET", "/.well-known/jwks.json", nil, "").Body, &set)
		found := false
		for _, k := range set.Keys {
			if k["kid"] == hdr["kid"] {
				found = true
				if k["alg"] != "ES256" || k["use"] != "sig" || k["kty"] != "EC" || k["crv"] != "P-256" || k["d"] != nil {
					t.Fatalf("JWKS key: %v", k)
				}
			}
		}
		if !found {
			t.Fatalf("kid %v not in the JWKS %v", hdr["kid"], set.Keys)
		}

		claims := env.VerifyResultToken(tok)
		amr, _ := claims["amr"].([]any)
		if claims["iss"] != env.URL || claims["sub"] != "u-rt" || claims["cid"] != id || claims["act"] != "submit_offer" ||
			claims["st"] != "approved" || len(amr) != 1 || amr[0] != "push" {
			t.Fatalf("claims: %v", claims)
		}
		iat, ok1 := claims["iat"].(float64)
		exp, ok2 := claims["exp"].(float64)
		if !ok1 || !ok2 || iat != float64(int64(iat)) || exp != iat+300 {
			t.Fatalf("iat %v exp %v: want integers, exp = iat+300", claims["iat"], claims["exp"])
		}
		decided, err := time.Parse(time.RFC3339, got["decided_at"].(string))
		if err != nil || decided.Unix() != int64(iat) {
			t.Fatalf("iat %v, decided_at %v: iat is the moment the challenge became final", iat, got["decided_at"])
		}

		reads := map[string]func() string{
			"GET":        func() string { return env.RP("GET", "/v1/challenges/"+id, nil).Str("result_token") },
			"GET wait=1": func() string { return env.RP("GET", "/v1/challenges/"+id+"?wait=1", nil).Str("result_token") },
			"watch": func() string {
				f := finalFrame(t, env.MustWatch(ch.Str("watch_token")))
				s, _ := f["result_token"].(string)
				return s
			},
			"watch state": func() string {
				return env.Do("GET", "/v1/watch/state?token="+ch.Str("watch_token"), nil, "").Str("result_token")
			},
		}
		for _, round := range []string{"at once", "two minutes later"} {
			for name, read := range reads {
				if again := read(); again != tok {
					t.Fatalf("%s, %s: result token %q, want the first %q", round, name, again, tok)
				}
			}
			clk.Advance(2 * time.Minute)
		}
	})
}

// The limits hold when a client sends at once what it may not send one
// after another: concurrent retries make one challenge, concurrent creates
// never exceed the pending limit, and concurrent wrong codes never get more
// than the per-IP number of guesses.
func TestLimitsUnderConcurrency(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		// Connections the client dialled for the burst but never used would
		// hold the server's shutdown for 5 s: close them first.
		t.Cleanup(http.DefaultClient.CloseIdleConnections)
		parallel := func(n int, f func(i int) *apptest.Response) map[int]int {
			out := make([]*apptest.Response, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					out[i] = f(i)
				}()
			}
			close(start)
			wg.Wait()
			byStatus := map[int]int{}
			for _, r := range out {
				byStatus[r.Status]++
			}
			return byStatus
		}

		// Idempotent retries sent at once: one challenge.
		body := map[string]any{"user_id": "u-conc-idem", "action": "login", "ip": "203.0.113.1"}
		ids := make([]string, 8)
		got := parallel(len(ids), func(i int) *apptest.Response {
			r := createChallenge(env, body, "Idempotency-Key", "same")
			ids[i] = r.Str("id")
			return r
		})
		if got[http.StatusCreated] != len(ids) {
			t.Fatalf("concurrent retries: %v, want all 201", got)
		}
		for _, id := range ids {
			if id != ids[0] {
				t.Fatalf("concurrent retries made several challenges: %v", ids)
			}
		}

		// Concurrent creates for one requester: at most 3 pending.
		got = parallel(10, func(int) *apptest.Response {
			return createChallenge(env, map[string]any{"user_id": "u-conc", "action": "login", "ip": "203.0.113.2"})
		})
		if got[http.StatusCreated] != 3 || got[http.StatusTooManyRequests] != 7 {
			t.Fatalf("10 concurrent creates for one requester: %v, want 3 created and 7 refused", got)
		}

		// Concurrent wrong codes from one address: at most 20 are tried.
		got = parallel(40, func(int) *apptest.Response {
			return postDevice(env, linkBody(t, randomCode(), time.Now()), "")
		})
		if got[http.StatusBadRequest] > 20 || got[http.StatusBadRequest]+got[http.StatusTooManyRequests] != 40 {
			t.Fatalf("40 concurrent wrong codes: %v, want at most 20 tried (400) and the rest refused (429)", got)
		}
		code := env.Enroll("u-conc-code", nil).Str("code")
		wantProblem(t, "the right code after them", postDevice(env, linkBody(t, code, time.Now()), ""), 429, "rate_limited")
	})
}
