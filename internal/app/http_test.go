package app_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app"
	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/config"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/jws"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
	"github.com/clicktopurchase/approvald/realtime"
	"github.com/gorilla/websocket"
)

const shop = "http://shop.example"

// startShop runs an SQLite instance whose browser origin is http://shop.example.
func startShop(t *testing.T, opts ...apptest.Option) *apptest.Env {
	t.Helper()
	return apptest.Start(t, "sqlite", append([]apptest.Option{apptest.WithEnv("APPROVALD_ALLOWED_ORIGINS", shop)}, opts...)...)
}

// checkProblem asserts an RFC 9457 answer with the protocol's members.
func checkProblem(t *testing.T, what string, status int, h http.Header, body []byte, wantStatus int, wantCode string) map[string]any {
	t.Helper()
	if status != wantStatus {
		t.Fatalf("%s: status %d, want %d: %s", what, status, wantStatus, body)
	}
	if ct := h.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: Content-Type %q, want application/problem+json (%s)", what, ct, body)
	}
	var p map[string]any
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("%s: problem body is not JSON: %q", what, body)
	}
	for _, k := range []string{"type", "title", "detail", "code"} {
		if s, ok := p[k].(string); !ok || s == "" {
			t.Errorf("%s: problem member %q missing or empty: %s", what, k, body)
		}
	}
	if n, ok := p["status"].(float64); !ok || int(n) != wantStatus {
		t.Errorf("%s: problem status member %v, want %d", what, p["status"], wantStatus)
	}
	if p["code"] != wantCode {
		t.Errorf("%s: code %v, want %q: %s", what, p["code"], wantCode, body)
	}
	return p
}

func checkResponseProblem(t *testing.T, what string, r *apptest.Response, wantStatus int, wantCode string) map[string]any {
	t.Helper()
	return checkProblem(t, what, r.Status, r.Header, r.Body, wantStatus, wantCode)
}

// noCORS asserts that no Access-Control-* header was sent.
func noCORS(t *testing.T, what string, h http.Header) {
	t.Helper()
	for k, v := range h {
		if strings.HasPrefix(strings.ToLower(k), "access-control-") {
			t.Errorf("%s: unexpected CORS header %s: %v", what, k, v)
		}
	}
}

func preflight(env *apptest.Env, path, origin string) *apptest.Response {
	return env.Do("OPTIONS", path, nil, "", "Origin", origin,
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization, content-type")
}

// rawUpgrade sends a WebSocket handshake as a plain HTTP request, so that a
// refusal can be read like any answer.
func rawUpgrade(t *testing.T, env *apptest.Env, query string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", env.URL+"/v1/watch"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(key))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("handshake %s was accepted", query)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// refusedWatch dials the socket and expects the handshake refused with a
// problem answer.
func refusedWatch(t *testing.T, env *apptest.Env, what, token, origin string, status int, code string) {
	t.Helper()
	c, resp, err := env.Watch(token, origin)
	if err == nil {
		c.Close()
		t.Fatalf("%s: the socket opened", what)
	}
	if resp == nil {
		t.Fatalf("%s: no handshake answer: %v", what, err)
	}
	body, _ := io.ReadAll(resp.Body)
	checkProblem(t, what+" (dialer)", resp.StatusCode, resp.Header, body, status, code)
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("%s: Cache-Control %q on a watch answer", what, cc)
	}
	hdr := []string{}
	if origin != "" {
		hdr = append(hdr, "Origin", origin)
	}
	raw, b := rawUpgrade(t, env, "?token="+token, hdr...)
	checkProblem(t, what+" (plain GET)", raw.StatusCode, raw.Header, b, status, code)
}

// The browser routes answer CORS for allowed origins only, preflight
// included, without credentials; no other route ever sends CORS headers.
func TestCORS(t *testing.T) {
	env := startShop(t)
	ch := env.Challenge("u-cors", "login", nil)
	id, wt := ch.Str("id"), ch.Str("watch_token")

	for _, path := range []string{"/v1/watch/state", "/v1/watch", "/v1/challenges/" + id + "/email"} {
		r := preflight(env, path, shop)
		if r.Status != http.StatusNoContent {
			t.Errorf("preflight %s: %d, want 204: %s", path, r.Status, r.Body)
		}
		h := r.Header
		if got := h.Get("Access-Control-Allow-Origin"); got != shop {
			t.Errorf("preflight %s: Allow-Origin %q", path, got)
		}
		methods := strings.ToUpper(h.Get("Access-Control-Allow-Methods"))
		for _, m := range []string{"GET", "POST"} {
			if !strings.Contains(methods, m) {
				t.Errorf("preflight %s: Allow-Methods %q lacks %s", path, methods, m)
			}
		}
		allowed := strings.ToLower(h.Get("Access-Control-Allow-Headers"))
		for _, hd := range []string{"authorization", "content-type"} {
			if !strings.Contains(allowed, hd) {
				t.Errorf("preflight %s: Allow-Headers %q lacks %s", path, allowed, hd)
			}
		}
		if v, ok := h["Access-Control-Allow-Credentials"]; ok {
			t.Errorf("preflight %s: Allow-Credentials %v", path, v)
		}
		for _, foreign := range []string{"http://evil.example", "http://shop.example:8080", "https://shop.example", "null"} {
			r := preflight(env, path, foreign)
			noCORS(t, "preflight "+path+" from "+foreign, r.Header)
		}
	}

	r := env.Do("GET", "/v1/watch/state?token="+wt, nil, "", "Origin", shop)
	if r.Status != http.StatusOK || r.Header.Get("Access-Control-Allow-Origin") != shop {
		t.Errorf("state from the shop: %d Allow-Origin %q", r.Status, r.Header.Get("Access-Control-Allow-Origin"))
	}
	if _, ok := r.Header["Access-Control-Allow-Credentials"]; ok {
		t.Errorf("state: Allow-Credentials sent")
	}
	// A refusal must be readable by the page too.
	r = env.Do("GET", "/v1/watch/state?token=garbage", nil, "", "Origin", shop)
	if r.Status != http.StatusUnauthorized || r.Header.Get("Access-Control-Allow-Origin") != shop {
		t.Errorf("401 on state from the shop: %d Allow-Origin %q", r.Status, r.Header.Get("Access-Control-Allow-Origin"))
	}
	r = env.Do("GET", "/v1/watch/state?token="+wt, nil, "", "Origin", "http://evil.example")
	noCORS(t, "state from a foreign origin", r.Header)

	// Routes that are not the browser's never answer CORS.
	other := []struct {
		name string
		do   func(origin string) *apptest.Response
	}{
		{"POST /v1/challenges", func(o string) *apptest.Response {
			return env.RP("POST", "/v1/challenges", map[string]any{"user_id": "u-cors2", "action": "login"}, "Origin", o)
		}},
		{"GET /v1/challenges/{id}", func(o string) *apptest.Response {
			return env.RP("GET", "/v1/challenges/"+id, nil, "Origin", o)
		}},
		{"GET /v1/challenges/{id} with a watch token", func(o string) *apptest.Response {
			return env.Do("GET", "/v1/challenges/"+id, nil, wt, "Origin", o)
		}},
		{"jwks", func(o string) *apptest.Response { return env.Do("GET", "/.well-known/jwks.json", nil, "", "Origin", o) }},
		{"healthz", func(o string) *apptest.Response { return env.Do("GET", "/healthz", nil, "", "Origin", o) }},
		{"preflight /v1/challenges", func(o string) *apptest.Response { return preflight(env, "/v1/challenges", o) }},
		{"preflight /v1/challenges/{id}", func(o string) *apptest.Response { return preflight(env, "/v1/challenges/"+id, o) }},
		{"preflight /v1/enrollments", func(o string) *apptest.Response { return preflight(env, "/v1/enrollments", o) }},
		{"preflight jwks", func(o string) *apptest.Response { return preflight(env, "/.well-known/jwks.json", o) }},
		{"unknown route", func(o string) *apptest.Response { return env.Do("GET", "/v1/nothing", nil, "", "Origin", o) }},
	}
	for _, c := range other {
		for _, o := range []string{shop, "http://evil.example"} {
			r := c.do(o)
			if r.Status == 0 {
				t.Fatalf("%s: no answer", c.name)
			}
			noCORS(t, c.name+" from "+o, r.Header)
		}
	}
}

// The watch socket's handshake: token first (401), then origin (403,
// exact scheme, host and port; none is allowed), no-store everywhere.
func TestWatchHandshake(t *testing.T) {
	env := startShop(t)
	ch := env.Challenge("u-watch", "login", nil)
	wt := ch.Str("watch_token")

	garbled := []byte(wt)
	garbled[len(garbled)/2] ^= 1
	if garbled[len(garbled)/2] == '-' || garbled[len(garbled)/2] == '_' {
		garbled[len(garbled)/2] = 'A'
	}
	refusedWatch(t, env, "missing token", "", shop, http.StatusUnauthorized, "unauthorized")
	refusedWatch(t, env, "bad token", "not-a-token", shop, http.StatusUnauthorized, "unauthorized")
	refusedWatch(t, env, "garbled token", string(garbled), shop, http.StatusUnauthorized, "unauthorized")
	refusedWatch(t, env, "truncated token", wt[:len(wt)-2], shop, http.StatusUnauthorized, "unauthorized")
	refusedWatch(t, env, "API key as a watch token", env.APIKey, shop, http.StatusUnauthorized, "unauthorized")
	for _, o := range []string{"http://evil.example", "http://shop.example:8080", "https://shop.example", "http://shop.example.evil.example", "null"} {
		refusedWatch(t, env, "origin "+o, wt, o, http.StatusForbidden, "forbidden")
	}

	for _, origin := range []string{shop, ""} {
		c, resp, err := env.Watch(wt, origin)
		if err != nil {
			t.Fatalf("watch with origin %q: %v", origin, err)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("101 answer: Cache-Control %q", cc)
		}
		f, _ := apptest.Frame(t, c, 5*time.Second)
		if f["type"] != "challenge" || f["id"] != ch.Str("id") || f["status"] != "pending" {
			t.Errorf("first frame with origin %q: %v", origin, f)
		}
		c.Close()
	}

	// A valid token over a malformed handshake is refused as a problem too.
	raw, b := rawUpgrade(t, env, "?token="+wt, "Sec-WebSocket-Version", "8")
	checkProblem(t, "unsupported websocket version", raw.StatusCode, raw.Header, b, http.StatusBadRequest, "invalid_request")
	r := env.Do("GET", "/v1/watch?token="+wt, nil, "")
	checkResponseProblem(t, "plain GET without upgrade", r, http.StatusBadRequest, "invalid_request")
}

// A watch token is only a watch token: RP and device routes refuse it;
// it watches the object it was minted for, enrollments included.
func TestWatchTokenScope(t *testing.T) {
	env := startShop(t)
	en := env.Enroll("u-scope", nil)
	ewt := en.Str("watch_token")
	ch := env.Challenge("u-scope2", "login", nil)
	cwt := ch.Str("watch_token")

	for _, tok := range []string{ewt, cwt} {
		checkResponseProblem(t, "watch token as an API key", env.Do("GET", "/v1/challenges/"+ch.Str("id"), nil, tok), 401, "unauthorized")
		checkResponseProblem(t, "watch token creating a challenge", env.Do("POST", "/v1/challenges", map[string]any{"user_id": "x", "action": "login"}, tok), 401, "unauthorized")
		checkResponseProblem(t, "watch token as a device", env.Do("GET", "/v1/device/challenges", nil, tok), 401, "unauthorized")
		checkResponseProblem(t, "watch token as a device (push)", env.Do("PUT", "/v1/device/push", map[string]any{"provider": "none"}, tok), 401, "unauthorized")
	}
	checkResponseProblem(t, "API key on watch/state", env.Do("GET", "/v1/watch/state", nil, env.APIKey), 401, "unauthorized")
	checkResponseProblem(t, "no token on watch/state", env.Do("GET", "/v1/watch/state", nil, ""), 401, "unauthorized")

	st := env.Do("GET", "/v1/watch/state?token="+ewt, nil, "")
	if st.Status != 200 {
		t.Fatalf("enrollment state: %d %s", st.Status, st.Body)
	}
	m := st.JSON()
	if m["type"] != "enrollment" || m["id"] != en.Str("id") || m["status"] != "pending" {
		t.Fatalf("enrollment state: %s", st.Body)
	}
	for _, k := range []string{"code", "enroll_uri", "watch_token"} {
		if _, ok := m[k]; ok {
			t.Errorf("enrollment watch state carries %q: %s", k, st.Body)
		}
	}
	c := watchFrom(t, env, ewt, shop)
	f := readFrame(t, c)
	if !bytes.Equal(bytes.TrimSpace(f), bytes.TrimSpace(st.Body)) {
		t.Errorf("socket frame %s differs from state %s", f, st.Body)
	}
}

// watchFrom opens a watch socket with the given Origin or fails the test.
func watchFrom(t *testing.T, env *apptest.Env, token, origin string) *websocket.Conn {
	t.Helper()
	c, resp, err := env.Watch(token, origin)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("watch from %q: %v (status %d)", origin, err, status)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readFrame reads one raw text frame.
func readFrame(t *testing.T, c *websocket.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, b, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("frame type %d, want text", typ)
	}
	return b
}

// A watch token lives until 5 minutes after its object is final; the
// state route answers the socket's frame, by query or bearer, never cached.
func TestWatchTokenLifetime(t *testing.T) {
	env := startShop(t)
	ch := env.Challenge("u-life", "login", map[string]any{"number_matching": true})
	wt := ch.Str("watch_token")

	state := func(what string) (byQuery, byBearer *apptest.Response) {
		t.Helper()
		byQuery = env.Do("GET", "/v1/watch/state?token="+wt, nil, "")
		byBearer = env.Do("GET", "/v1/watch/state", nil, wt)
		return byQuery, byBearer
	}
	sameAsSocket := func(what string, wantStatus string) {
		t.Helper()
		q, b := state(what)
		for _, r := range []*apptest.Response{q, b} {
			if r.Status != http.StatusOK {
				t.Fatalf("%s: state %d %s", what, r.Status, r.Body)
			}
			if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("%s: state Cache-Control %q", what, cc)
			}
			if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("%s: state Content-Type %q", what, ct)
			}
		}
		if !bytes.Equal(q.Body, b.Body) {
			t.Errorf("%s: state by query %s, by bearer %s", what, q.Body, b.Body)
		}
		if q.Str("status") != wantStatus || q.Str("id") != ch.Str("id") || q.Str("type") != "challenge" {
			t.Errorf("%s: state %s, want status %s", what, q.Body, wantStatus)
		}
		c := watchFrom(t, env, wt, shop)
		f := readFrame(t, c)
		if !bytes.Equal(bytes.TrimSpace(f), bytes.TrimSpace(q.Body)) {
			t.Errorf("%s: socket frame %s, state %s", what, f, q.Body)
		}
		var m map[string]any
		_ = json.Unmarshal(f, &m)
		if wantStatus == "pending" && m["number"] != ch.Str("number") {
			t.Errorf("%s: pending frame without the number %q: %s", what, ch.Str("number"), f)
		}
		if wantStatus != "pending" {
			if _, code := apptest.Frame(t, c, 5*time.Second); code != websocket.CloseNormalClosure {
				t.Errorf("%s: close %d after a final frame, want 1000", what, code)
			}
		}
		c.Close()
	}
	sameAsSocket("pending", "pending")
	if r := env.RP("POST", "/v1/challenges/"+ch.Str("id")+"/cancel", nil); r.Status != 200 {
		t.Fatalf("cancel: %d %s", r.Status, r.Body)
	}
	sameAsSocket("just cancelled", "cancelled")
	env.Advance(4 * time.Minute)
	sameAsSocket("4 minutes after cancel", "cancelled")
	env.Advance(2 * time.Minute)
	q, b := state("6 minutes after cancel")
	checkResponseProblem(t, "state 6 minutes after final (query)", q, 401, "unauthorized")
	checkResponseProblem(t, "state 6 minutes after final (bearer)", b, 401, "unauthorized")
	if cc := q.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("401 state Cache-Control %q", cc)
	}
	refusedWatch(t, env, "6 minutes after final", wt, shop, 401, "unauthorized")

	// An enrollment nobody uses expires after 10 minutes; its token dies 5
	// minutes later.
	en := env.Enroll("u-life-en", nil)
	ewt := en.Str("watch_token")
	env.Advance(11 * time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := env.Do("GET", "/v1/watch/state?token="+ewt, nil, "")
		if r.Status != 200 {
			t.Fatalf("enrollment 1 minute after expiry: %d %s", r.Status, r.Body)
		}
		if r.Str("status") == "expired" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("enrollment 11 minutes after creation: %s, want expired", r.Body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	env.Advance(6 * time.Minute)
	checkResponseProblem(t, "enrollment state 7 minutes after expiry", env.Do("GET", "/v1/watch/state?token="+ewt, nil, ""), 401, "unauthorized")
	refusedWatch(t, env, "enrollment 7 minutes after expiry", ewt, shop, 401, "unauthorized")
}

// The server pings idle sockets and drops a peer that never answers; a
// peer that answers stays.
func TestWatchPings(t *testing.T) {
	env := apptest.Start(t, "sqlite")
	// Set before the first socket: read by every socket when it starts.
	env.App.Hub.Options = realtime.Options{PingInterval: 100 * time.Millisecond, PongWait: time.Second}
	wt := env.Challenge("u-ping", "login", nil).Str("watch_token")

	// A socket only answers pings while its client reads, so each client
	// is read on its own, one after the other.
	polite := env.MustWatch(wt)
	var politePings atomic.Int32
	polite.SetPingHandler(func(d string) error {
		politePings.Add(1)
		return polite.WriteControl(websocket.PongMessage, []byte(d), time.Now().Add(time.Second))
	})
	readFrame(t, polite)
	_ = polite.SetReadDeadline(time.Now().Add(2500 * time.Millisecond))
	_, _, err := polite.ReadMessage()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a peer that answers pings lost its socket: %v", err)
	}
	if n := politePings.Load(); n < 3 {
		t.Errorf("%d pings in 2.5 s at a 100 ms interval", n)
	}

	silent := env.MustWatch(wt)
	var silentPings atomic.Int32
	silent.SetPingHandler(func(string) error { silentPings.Add(1); return nil })
	readFrame(t, silent)
	start := time.Now()
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = silent.ReadMessage()
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("a peer that never answers pings was not dropped within 5 s: %v", err)
	}
	if silentPings.Load() == 0 {
		t.Errorf("no ping arrived before the drop (after %v)", time.Since(start))
	}
}

// padded returns a JSON challenge body of exactly n bytes.
func padded(t *testing.T, user string, n int) []byte {
	t.Helper()
	head := `{"user_id":"` + user + `","action":"login"`
	b := []byte(head + strings.Repeat(" ", n-len(head)-1) + "}")
	if len(b) != n {
		t.Fatalf("padding: %d bytes", len(b))
	}
	return b
}

// doChunked sends body without a Content-Length (chunked).
func doChunked(t *testing.T, env *apptest.Env, method, path string, body []byte, bearer string) *apptest.Response {
	t.Helper()
	req, err := http.NewRequest(method, env.URL+path, struct{ io.Reader }{bytes.NewReader(body)})
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return &apptest.Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// Errors are problem details with the protocol's members; unknown routes,
// wrong methods and oversized bodies included.
func TestProblemDetails(t *testing.T) {
	env := apptest.Start(t, "sqlite")
	id := env.Challenge("u-prob", "login", nil).Str("id")

	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/nothing"}, {"POST", "/v1/nothing"}, {"GET", "/"}, {"GET", "/v2/challenges"},
		{"GET", "/v1/challenges/" + id + "/nothing"}, {"GET", "/.well-known/openid-configuration"},
	} {
		r := env.RP(c.method, c.path, nil)
		checkResponseProblem(t, c.method+" "+c.path, r, http.StatusNotFound, "not_found")
	}
	for _, c := range []struct{ method, path, allow string }{
		{"PATCH", "/v1/challenges", "POST"},
		{"GET", "/v1/challenges", "POST"},
		{"PUT", "/v1/challenges/" + id, "GET"},
		{"DELETE", "/.well-known/jwks.json", "GET"},
		{"POST", "/healthz", "GET"},
		{"GET", "/v1/challenges/" + id + "/cancel", "POST"},
	} {
		r := env.RP(c.method, c.path, nil)
		checkResponseProblem(t, c.method+" "+c.path, r, http.StatusMethodNotAllowed, "method_not_allowed")
		allow := r.Header.Get("Allow")
		if !strings.Contains(allow, c.allow) || strings.Contains(allow, c.method+",") || strings.HasSuffix(allow, c.method) {
			t.Errorf("%s %s: Allow %q, want it to list %s and not %s", c.method, c.path, allow, c.allow, c.method)
		}
	}

	// 64 KiB is the limit, inclusive, with or without Content-Length.
	if r := env.RP("POST", "/v1/challenges", padded(t, "u-64k-a", 64<<10)); r.Status != http.StatusCreated {
		t.Errorf("a body of exactly 64 KiB: %d %s", r.Status, r.Body)
	}
	if r := doChunked(t, env, "POST", "/v1/challenges", padded(t, "u-64k-b", 64<<10), env.APIKey); r.Status != http.StatusCreated {
		t.Errorf("a chunked body of exactly 64 KiB: %d %s", r.Status, r.Body)
	}
	checkResponseProblem(t, "64 KiB + 1", env.RP("POST", "/v1/challenges", padded(t, "u-64k-c", 64<<10+1)), 413, "payload_too_large")
	checkResponseProblem(t, "chunked 64 KiB + 1", doChunked(t, env, "POST", "/v1/challenges", padded(t, "u-64k-d", 64<<10+1), env.APIKey), 413, "payload_too_large")
	checkResponseProblem(t, "1 MiB chunked", doChunked(t, env, "POST", "/v1/challenges", padded(t, "u-64k-e", 1<<20), env.APIKey), 413, "payload_too_large")
	checkResponseProblem(t, "64 KiB + 1 to the device decision", env.Do("POST", "/v1/device/challenges/"+id+"/decision",
		`{"response":"`+strings.Repeat("a", 64<<10)+`"}`, ""), 413, "payload_too_large")
	checkResponseProblem(t, "chunked 64 KiB + 1 to POST /v1/devices", doChunked(t, env, "POST", "/v1/devices",
		[]byte(`{"code":"`+strings.Repeat("a", 64<<10)+`"}`), ""), 413, "payload_too_large")
	// A refused body creates nothing: the user can still have 3 pending.
	for i := range 3 {
		if r := env.RP("POST", "/v1/challenges", map[string]any{"user_id": "u-64k-c", "action": "login"}); r.Status != http.StatusCreated {
			t.Fatalf("challenge %d after a refused body: %d %s", i, r.Status, r.Body)
		}
	}
}

// A panic answers a 500 problem without the panic value or a stack.
func TestPanicIsAProblem(t *testing.T) {
	st := storetest.Open(t, "sqlite")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	cfg, err := config.Load(func(k string) string {
		return map[string]string{"APPROVALD_PUBLIC_URL": url, "APPROVALD_DATABASE_URL": "sqlite:unused"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.HTTP.Register(func(mux *http.ServeMux) {
		mux.HandleFunc("GET /test/panic", func(http.ResponseWriter, *http.Request) {
			panic("secret detail at /home/build/approvald/internal/x.go:42")
		})
	})
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	resp, err := http.Get(url + "/test/panic")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	checkProblem(t, "panic", resp.StatusCode, resp.Header, body, 500, "internal")
	for _, leak := range []string{"secret", "goroutine", ".go", "/home/", "panic"} {
		if bytes.Contains(body, []byte(leak)) {
			t.Errorf("500 body shows %q: %s", leak, body)
		}
	}
	// The server is still serving.
	if r, err := http.Get(url + "/healthz"); err != nil || r.StatusCode != 200 {
		t.Fatalf("after a panic: %v", err)
	} else {
		r.Body.Close()
	}
}

// With the database gone: healthz stays 200, readyz says 503 unavailable,
// and requests fail as opaque problems without internals.
func TestDatabaseDown(t *testing.T) {
	env := apptest.Start(t, "sqlite")
	wt := env.Challenge("u-down", "login", nil).Str("watch_token")
	if r := env.Do("GET", "/healthz", nil, ""); r.Status != 200 {
		t.Fatalf("healthz: %d %s", r.Status, r.Body)
	}
	if r := env.Do("GET", "/readyz", nil, ""); r.Status != 200 {
		t.Fatalf("readyz: %d %s", r.Status, r.Body)
	}
	if err := env.Store.Close(); err != nil {
		t.Fatal(err)
	}
	if r := env.Do("GET", "/healthz", nil, ""); r.Status != 200 {
		t.Errorf("healthz with the database closed: %d %s", r.Status, r.Body)
	}
	checkResponseProblem(t, "readyz with the database closed", env.Do("GET", "/readyz", nil, ""), 503, "unavailable")
	for _, r := range []*apptest.Response{
		env.RP("POST", "/v1/challenges", map[string]any{"user_id": "u-down", "action": "login"}),
		env.Do("GET", "/v1/watch/state?token="+wt, nil, ""),
	} {
		if r.Status != 500 && r.Status != 503 {
			t.Errorf("with the database closed: %d %s", r.Status, r.Body)
			continue
		}
		checkResponseProblem(t, "database closed", r, r.Status, map[int]string{500: "internal", 503: "unavailable"}[r.Status])
		for _, leak := range []string{"goroutine", ".go", "sql", "database is closed"} {
			if bytes.Contains(r.Body, []byte(leak)) {
				t.Errorf("error body shows %q: %s", leak, r.Body)
			}
		}
	}
}

// xffTransport adds X-Forwarded-For to every request.
type xffTransport struct{ xff []string }

func (x xffTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for _, v := range x.xff {
		r.Header.Add("X-Forwarded-For", v)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// linkIP links a device for user through a client sending xff and returns
// the IP the audit log recorded for the link.
func linkIP(t *testing.T, env *apptest.Env, user string, xff ...string) string {
	t.Helper()
	code := env.Enroll(user, nil).Str("code")
	d := env.NewDevice()
	d.HTTP = &http.Client{Transport: xffTransport{xff}}
	if err := d.Enroll(context.Background(), code, "Phone", "ios", deviceclient.Push{Provider: "none"}); err != nil {
		t.Fatalf("link %s: %v", user, err)
	}
	log, err := env.Store.AuditLog(context.Background(), d.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range log {
		if e.Event == "device.linked" {
			return e.IP
		}
	}
	t.Fatalf("no device.linked audit entry: %+v", log)
	return ""
}

// wrongCode sends a well-formed link request with a wrong code.
func wrongCode(t *testing.T, env *apptest.Env, xff ...string) *apptest.Response {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := jws.Sign(k, map[string]any{"typ": "JWT"}, map[string]any{"code": "ZZZZZZZZ", "iat": time.Now().Unix()})
	if err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"code": "ZZZZ-ZZZZ", "name": "Phone", "platform": "android",
		"public_key": jws.JWKFromPublicKey(&k.PublicKey), "push": map[string]string{"provider": "none"}, "proof": proof}
	var hdr []string
	if len(xff) > 0 {
		hdr = []string{"X-Forwarded-For", strings.Join(xff, ", ")}
	}
	return env.Do("POST", "/v1/devices", body, "", hdr...)
}

// X-Forwarded-For is read only from trusted proxies, from the right; the
// entries left of the first untrusted one are never used.
func TestForwardedFor(t *testing.T) {
	t.Run("untrusted", func(t *testing.T) {
		env := apptest.Start(t, "sqlite")
		if ip := linkIP(t, env, "u-x1", "198.51.100.7"); ip != "127.0.0.1" {
			t.Errorf("XFF from an untrusted peer was used: audit IP %q", ip)
		}
		// Changing the header does not escape the per-IP code limit.
		for i := range 20 {
			r := wrongCode(t, env, "203.0.113."+strconv.Itoa(i))
			checkResponseProblem(t, "wrong code", r, 400, "invalid_code")
		}
		r := wrongCode(t, env, "203.0.113.200")
		checkResponseProblem(t, "21st wrong code with a fresh XFF", r, 429, "rate_limited")
		if r.Header.Get("Retry-After") == "" {
			t.Errorf("429 without Retry-After")
		}
	})
	t.Run("trusted", func(t *testing.T) {
		env := apptest.Start(t, "sqlite", apptest.WithEnv("APPROVALD_TRUSTED_PROXIES", "127.0.0.1"))
		for i, c := range []struct {
			xff  []string
			want string
		}{
			{[]string{"198.51.100.7"}, "198.51.100.7"},
			{[]string{"203.0.113.66, 198.51.100.7"}, "198.51.100.7"},
			{[]string{"203.0.113.66, 198.51.100.7, 127.0.0.1"}, "198.51.100.7"},
			{[]string{"203.0.113.66", "198.51.100.8"}, "198.51.100.8"},
			{[]string{"2001:db8::1"}, "2001:db8::1"},
			{nil, "127.0.0.1"},
		} {
			if ip := linkIP(t, env, "u-t"+strconv.Itoa(i), c.xff...); ip != c.want {
				t.Errorf("XFF %q: client %q, want %q", c.xff, ip, c.want)
			}
		}
		// The client's own words (left entries) cannot spread failures.
		for i := range 20 {
			r := wrongCode(t, env, "10.0.0."+strconv.Itoa(i), "198.51.100.9")
			checkResponseProblem(t, "wrong code", r, 400, "invalid_code")
		}
		checkResponseProblem(t, "21st wrong code, new left entry", wrongCode(t, env, "10.9.9.9", "198.51.100.9"), 429, "rate_limited")
		checkResponseProblem(t, "another client behind the proxy", wrongCode(t, env, "198.51.100.10"), 400, "invalid_code")
	})
}

func jwksOf(t *testing.T, env *apptest.Env) ([]byte, []map[string]any) {
	t.Helper()
	r := env.Do("GET", "/.well-known/jwks.json", nil, "")
	if r.Status != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("jwks: %d %q %s", r.Status, r.Header.Get("Content-Type"), r.Body)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(r.Body, &set); err != nil || len(set.Keys) == 0 {
		t.Fatalf("jwks: %v %s", err, r.Body)
	}
	return r.Body, set.Keys
}

// Every instance on one database publishes the same key, and a result
// token made by one verifies with another's JWKS.
func TestJWKSAcrossInstances(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		one := apptest.Start(t, dialect)
		two := apptest.StartOn(t, one.Store)
		b1, keys := jwksOf(t, one)
		b2, _ := jwksOf(t, two)
		if !bytes.Equal(b1, b2) {
			t.Fatalf("instances publish different keys:\n%s\n%s", b1, b2)
		}
		for _, k := range keys {
			want := map[string]any{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig"}
			for m, v := range want {
				if k[m] != v {
					t.Errorf("JWK %s = %v, want %v", m, k[m], v)
				}
			}
			for _, m := range []string{"kid", "x", "y"} {
				if s, _ := k[m].(string); s == "" {
					t.Errorf("JWK without %s: %v", m, k)
				}
			}
			if _, ok := k["d"]; ok {
				t.Fatalf("the JWKS publishes the private key")
			}
		}

		phone := one.LinkDevice("u-jwks")
		id := one.Challenge("u-jwks", "submit_offer", nil).Str("id")
		if st, err := phone.Decide(context.Background(), id, deviceclient.Decision{Approve: true}); err != nil || st != "approved" {
			t.Fatalf("decide: %q %v", st, err)
		}
		tok := one.RP("GET", "/v1/challenges/"+id, nil).Str("result_token")
		if got := two.RP("GET", "/v1/challenges/"+id, nil).Str("result_token"); got != tok || tok == "" {
			t.Fatalf("result token differs between instances: %q vs %q", tok, got)
		}
		claims := two.VerifyResultToken(tok)
		if claims["cid"] != id || claims["st"] != "approved" || claims["iss"] != one.URL {
			t.Errorf("claims: %v", claims)
		}
		p, err := jws.Parse(tok)
		if err != nil || p.Kid != keys[0]["kid"] {
			t.Errorf("token kid %q, JWKS kid %v (%v)", p.Kid, keys[0]["kid"], err)
		}

		// And the other way: a token signed by the second instance.
		id2 := two.Challenge("u-jwks2", "login", nil).Str("id")
		r := two.RP("POST", "/v1/challenges/"+id2+"/cancel", nil)
		if r.Status != 200 || r.Str("result_token") == "" {
			t.Fatalf("cancel on the second instance: %d %s", r.Status, r.Body)
		}
		if c := one.VerifyResultToken(r.Str("result_token")); c["st"] != "cancelled" || c["cid"] != id2 {
			t.Errorf("claims: %v", c)
		}
	})
}

// healthz and readyz answer 200 JSON while the database answers.
func TestHealth(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		for _, p := range []string{"/healthz", "/readyz"} {
			r := env.Do("GET", p, nil, "")
			if r.Status != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
				t.Errorf("%s: %d %q %s", p, r.Status, r.Header.Get("Content-Type"), r.Body)
			}
			noCORS(t, p, r.Header)
		}
	})
}
