package app_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/mail"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
	"github.com/gorilla/websocket"
)

// Several instances behind one public URL, sharing one PostgreSQL database
// and one Redis: a browser's socket, the RP's calls and the phone's
// decision each land on a different instance.

// clusterPublicURL is the public URL of every instance of a cluster, as
// behind a load balancer: device audiences, result-token issuers and email
// links are the same whichever instance answers.
const clusterPublicURL = "http://approvald.cluster.test"

// startCluster runs n instances on one fresh PostgreSQL database, all with
// redisURL ("" for none) and opts, and waits until each has subscribed to
// Redis.
func startCluster(t testing.TB, n int, redisURL string, opts ...apptest.Option) []*apptest.Env {
	t.Helper()
	st := storetest.Open(t, "postgres")
	opts = append([]apptest.Option{apptest.WithEnv("APPROVALD_PUBLIC_URL", clusterPublicURL)}, opts...)
	if redisURL != "" {
		opts = append(opts, apptest.WithEnv("APPROVALD_REDIS_URL", redisURL))
	}
	envs := make([]*apptest.Env, n)
	for i := range envs {
		envs[i] = apptest.StartOn(t, st, opts...)
	}
	if redisURL != "" {
		for _, e := range envs {
			e.WaitSubscribed()
		}
	}
	return envs
}

// via returns the same device talking to another instance.
func via(d *deviceclient.Client, e *apptest.Env) *deviceclient.Client {
	c := *d
	c.Server = e.URL
	return &c
}

// pendingFrame reads the first frame of a fresh socket and expects pending.
func pendingFrame(t *testing.T, sock *websocket.Conn) map[string]any {
	t.Helper()
	f, code := apptest.Frame(t, sock, 5*time.Second)
	if code != 0 || f["status"] != "pending" {
		t.Fatalf("first frame: %v (close %d), want pending", f, code)
	}
	return f
}

// finalWithin reads frames for up to d until one is final, then expects
// the close with 1000 (so exactly one final frame).
func finalWithin(t *testing.T, sock *websocket.Conn, d time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("no final frame within %v", d)
		}
		f, code := apptest.Frame(t, sock, left)
		if code != 0 {
			t.Fatalf("socket closed (%d) before a final frame", code)
		}
		if f["status"] != "pending" {
			if g, code := apptest.Frame(t, sock, 5*time.Second); code != websocket.CloseNormalClosure {
				t.Fatalf("after the final frame %v: %v, close %d; want close 1000", f, g, code)
			}
			return f
		}
	}
}

var clusterLink = regexp.MustCompile(regexp.QuoteMeta(clusterPublicURL+"/e/") + `([A-Za-z0-9_-]+)`)

// mailedLink waits until e's development mailbox holds a challenge mail to
// addr and returns its link's token.
func mailedLink(t *testing.T, e *apptest.Env, addr string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range e.App.DevMail.Recent() {
			if m.Kind != mail.KindChallenge || m.To != addr {
				continue
			}
			got := clusterLink.FindStringSubmatch(m.Text)
			if got == nil {
				t.Fatalf("the mail has no link to %s/e/:\n%s", clusterPublicURL, m.Text)
			}
			return got[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no challenge mail to %s in %s's mailbox", addr, e.URL)
	return ""
}

// linkPage sends GET or POST /e/{token} to e and returns the status and body.
func linkPage(t *testing.T, e *apptest.Env, method, token string, form url.Values) (int, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, e.URL+"/e/"+token, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// 1. Three instances: link on A (the browser watching the enrollment on C,
// the phone's code sent to B), create on B, watch on C, decide on A → C's
// socket hears it; the same with the email link requested on B and
// clicked on A.
func TestClusterThreeInstances(t *testing.T) {
	redisURL := apptest.RedisURL(t)
	envs := startCluster(t, 3, redisURL)
	a, b, c := envs[0], envs[1], envs[2]
	ctx := context.Background()

	en := a.Enroll("u-tri", nil)
	enSock := c.MustWatchNoOrigin(en.Str("watch_token"))
	pendingFrame(t, enSock)
	phone := b.NewDevice()
	if err := phone.Enroll(ctx, en.Str("code"), "Pixel 8", "android", deviceclient.Push{Provider: "none"}); err != nil {
		t.Fatalf("enroll on B: %v", err)
	}
	if phone.Audience != clusterPublicURL {
		t.Fatalf("audience %q, want the shared public URL", phone.Audience)
	}
	if f := finalWithin(t, enSock, 5*time.Second); f["status"] != "linked" {
		t.Fatalf("enrollment socket on C: %v, want linked", f)
	}
	phone = via(phone, a)

	// Push.
	ch := b.Challenge("u-tri", "submit_offer", map[string]any{"ip": "203.0.113.9"})
	id := ch.Str("id")
	sock := c.MustWatchNoOrigin(ch.Str("watch_token"))
	pendingFrame(t, sock)
	if st, err := phone.Decide(ctx, id, deviceclient.Decision{Approve: true}); err != nil || st != "approved" {
		t.Fatalf("decide on A: %q %v", st, err)
	}
	f := finalWithin(t, sock, 5*time.Second)
	if f["status"] != "approved" || f["method"] != "push" || f["result_token"] == nil {
		t.Fatalf("frame on C: %v", f)
	}
	if got := c.RP("GET", "/v1/challenges/"+id, nil).JSON(); got["status"] != "approved" || got["result_token"] != f["result_token"] {
		t.Fatalf("GET on C: %v", got)
	}

	// Email link: requested on B, opened and approved on A, seen on C.
	ch = b.Challenge("u-tri", "login", map[string]any{"ip": "203.0.113.9", "user_email": "alice@example.com"})
	id = ch.Str("id")
	sock = c.MustWatchNoOrigin(ch.Str("watch_token"))
	pendingFrame(t, sock)
	wantStatus(t, "request email on B", b.RP("POST", "/v1/challenges/"+id+"/email", nil), http.StatusAccepted)
	tok := mailedLink(t, b, "alice@example.com")
	if st, body := linkPage(t, a, "GET", tok, nil); st != http.StatusOK || !strings.Contains(body, "<form") {
		t.Fatalf("GET the link on A: %d\n%s", st, body)
	}
	if st := c.RP("GET", "/v1/challenges/"+id, nil).Str("status"); st != "pending" {
		t.Fatalf("after GET of the link: %q, want pending", st)
	}
	if st, body := linkPage(t, a, "POST", tok, url.Values{"decision": {"approve"}}); st != http.StatusOK {
		t.Fatalf("POST the link on A: %d\n%s", st, body)
	}
	f = finalWithin(t, sock, 5*time.Second)
	if f["status"] != "approved" || f["method"] != "email" || f["result_token"] == nil {
		t.Fatalf("frame on C after the email approval: %v", f)
	}
}

// 2. Limits hold whichever instance each request reaches: the requester's
// and the user's pending limits, the jti replay cache, the fraud lock.
func TestClusterLimits(t *testing.T) {
	redisURL := apptest.RedisURL(t)
	envs := startCluster(t, 3, redisURL)
	a, b, c := envs[0], envs[1], envs[2]
	ctx := context.Background()
	create := func(e *apptest.Env, user, ip string) *apptest.Response {
		return e.RP("POST", "/v1/challenges", map[string]any{"user_id": user, "action": "login", "methods": []string{"email"}, "ip": ip})
	}

	t.Run("anti-fatigue", func(t *testing.T) {
		for i := range 3 {
			wantStatus(t, fmt.Sprint("requester pending ", i+1), create(envs[i%3], "u-limit", "203.0.113.7"), http.StatusCreated)
		}
		for i, e := range envs {
			wantProblem(t, fmt.Sprintf("a fourth pending on instance %d", i), create(e, "u-limit", "203.0.113.7"), http.StatusTooManyRequests, "rate_limited")
		}
		for i := range 10 {
			wantStatus(t, fmt.Sprint("user pending ", i+1), create(envs[i%3], "u-limit-user", fmt.Sprintf("198.51.100.%d", i+1)), http.StatusCreated)
		}
		for i, e := range envs {
			wantProblem(t, fmt.Sprintf("an 11th pending on instance %d", i), create(e, "u-limit-user", "198.51.100.99"), http.StatusTooManyRequests, "rate_limited")
		}
	})

	t.Run("jti replay", func(t *testing.T) {
		phone := a.LinkDevice("u-jti")
		tok, err := phone.Assertion()
		if err != nil {
			t.Fatal(err)
		}
		wantStatus(t, "assertion on A", a.Do("GET", "/v1/device/challenges", nil, tok), http.StatusOK)
		wantProblem(t, "the assertion replayed on B", b.Do("GET", "/v1/device/challenges", nil, tok), http.StatusUnauthorized, "unauthorized")
		wantProblem(t, "the assertion replayed on C", c.Do("GET", "/v1/device/challenges", nil, tok), http.StatusUnauthorized, "unauthorized")

		id := c.Challenge("u-jti", "login", nil).Str("id")
		dec, err := phone.SignedDecision(id, map[string]any{"dec": "approve"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := via(phone, b).SendDecision(ctx, id, dec); err != nil || st != "approved" {
			t.Fatalf("decision on B: %q %v", st, err)
		}
		// Replayed elsewhere: refused as a replay (401) before the status
		// (which would be 409) is even looked at.
		_, err = via(phone, a).SendDecision(ctx, id, dec)
		wantDeviceProblem(t, "the decision replayed on A", err, http.StatusUnauthorized, "unauthorized")
		_, err = via(phone, c).SendDecision(ctx, id, dec)
		wantDeviceProblem(t, "the decision replayed on C", err, http.StatusUnauthorized, "unauthorized")
	})

	t.Run("fraud lock", func(t *testing.T) {
		phone := via(b.LinkDevice("u-locked"), a)
		reported := c.Challenge("u-locked", "login", map[string]any{"ip": "203.0.113.20"})
		other := b.Challenge("u-locked", "submit_offer", map[string]any{"ip": "203.0.113.21"})
		otherSock := c.MustWatchNoOrigin(other.Str("watch_token"))
		pendingFrame(t, otherSock)
		if st, err := phone.Decide(ctx, reported.Str("id"), deviceclient.Decision{Fraud: true}); err != nil || st != "denied" {
			t.Fatalf("fraud deny on A: %q %v", st, err)
		}
		if f := finalWithin(t, otherSock, 5*time.Second); f["status"] != "cancelled" {
			t.Fatalf("the other pending challenge, watched on C: %v, want cancelled", f)
		}
		for i, e := range envs {
			wantProblem(t, fmt.Sprintf("challenge on instance %d while locked", i),
				e.RP("POST", "/v1/challenges", map[string]any{"user_id": "u-locked", "action": "login", "ip": "198.51.100.50"}),
				http.StatusTooManyRequests, "user_locked")
			wantProblem(t, fmt.Sprintf("enrollment on instance %d while locked", i),
				e.RP("POST", "/v1/enrollments", map[string]any{"user_id": "u-locked"}), http.StatusTooManyRequests, "user_locked")
		}
	})
}

// 3. Redis is killed while 20 sockets on B wait: decisions made on A still
// reach every socket within a few seconds (B re-reads the database
// periodically), and a device's long-poll on B hears of a new challenge
// made on A; /readyz on B says Redis is down. After the restart B
// resubscribes and fan-out through Redis works again.
func TestClusterRedisRestart(t *testing.T) {
	srv := apptest.StartRedis(t)
	envs := startCluster(t, 2, srv.URL())
	a, b := envs[0], envs[1]
	ctx := context.Background()

	type waiting struct {
		id    string
		phone *deviceclient.Client
		sock  *websocket.Conn
	}
	var ws []waiting
	for u := range 2 {
		user := fmt.Sprintf("u-down-%d", u)
		phone := a.LinkDevice(user)
		for i := range 10 {
			r := a.Challenge(user, "login", map[string]any{"ip": fmt.Sprintf("203.0.113.%d", i+1)})
			sock := b.MustWatchNoOrigin(r.Str("watch_token"))
			pendingFrame(t, sock)
			ws = append(ws, waiting{r.Str("id"), phone, sock})
		}
	}
	poller := a.LinkDevice("u-down-poll")

	srv.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for a.App.Redis.Connected() || b.App.Redis.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("the brokers still say connected 10 s after Redis was killed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := b.Do("GET", "/readyz", nil, ""); r.Status != http.StatusServiceUnavailable || !strings.Contains(strings.ToLower(string(r.Body)), "redis") {
		t.Fatalf("/readyz on B with Redis down: %d %s, want 503 naming redis", r.Status, r.Body)
	}

	// A device long-polls on B; the challenge is created on A.
	type polled struct {
		list []deviceclient.Challenge
		err  error
		at   time.Time
	}
	pollDone := make(chan polled, 1)
	go func() {
		l, err := via(poller, b).Pending(ctx, 20*time.Second)
		pollDone <- polled{l, err, time.Now()}
	}()

	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	errs := make([]error, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() {
			st, err := w.phone.Decide(ctx, w.id, deviceclient.Decision{Approve: true})
			if err == nil && st != "approved" {
				err = fmt.Errorf("status %q", st)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	decided := time.Now()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("decide %s on A with Redis down: %v", ws[i].id, err)
		}
	}
	t.Logf("20 concurrent decisions on A with Redis down took %v", decided.Sub(start).Round(time.Millisecond))
	polledID := a.Challenge("u-down-poll", "login", nil).Str("id")
	created := time.Now()

	for i, w := range ws {
		f := finalWithin(t, w.sock, 10*time.Second)
		if f["status"] != "approved" || f["id"] != w.id {
			t.Fatalf("socket %d on B: %v, want approved", i, f)
		}
	}
	slowest := time.Since(decided)
	t.Logf("with Redis down, every socket on B had its final frame within %v of the decisions", slowest.Round(time.Millisecond))
	if slowest > 6*time.Second {
		t.Fatalf("with Redis down, sockets on B waited up to %v for their final frame, want a few seconds", slowest)
	}
	p := <-pollDone
	if p.err != nil || len(p.list) != 1 || p.list[0].ID != polledID {
		t.Fatalf("device long-poll on B with Redis down: %+v %v, want the challenge created on A", p.list, p.err)
	}
	if took := p.at.Sub(created); took > 8*time.Second {
		t.Fatalf("device long-poll on B heard of the new challenge %v after it was created, want a few seconds", took)
	}
	t.Logf("device long-poll on B answered %v after the create on A", p.at.Sub(created).Round(time.Millisecond))

	srv.Restart()
	restarted := time.Now()
	b.WaitSubscribed()
	a.WaitSubscribed()
	t.Logf("both instances resubscribed %v after the restart", time.Since(restarted).Round(time.Millisecond))
	if r := b.Do("GET", "/readyz", nil, ""); r.Status != http.StatusOK {
		t.Fatalf("/readyz on B after the restart: %d %s", r.Status, r.Body)
	}

	phone := ws[0].phone
	r := a.Challenge("u-down-0", "login", map[string]any{"ip": "192.0.2.1"})
	sock := b.MustWatchNoOrigin(r.Str("watch_token"))
	pendingFrame(t, sock)
	start = time.Now()
	if _, err := phone.Decide(ctx, r.Str("id"), deviceclient.Decision{Approve: true}); err != nil {
		t.Fatal(err)
	}
	// Connected, B resyncs no more: only Redis can bring this frame.
	if f := finalWithin(t, sock, 5*time.Second); f["status"] != "approved" {
		t.Fatalf("after the restart: %v", f)
	}
	t.Logf("after the restart, decision on A → frame on B in %v", time.Since(start).Round(time.Microsecond))
	if !b.App.Redis.Connected() || b.App.Redis.Reconnects() < 1 {
		t.Fatalf("B: Connected %v, Reconnects %d", b.App.Redis.Connected(), b.App.Redis.Reconnects())
	}
}

// 4. An instance shuts down: its sockets get 1001, its long-polls in flight
// answer (at once, with the current state) instead of being cut, and a
// browser that reconnects to another instance gets the state decided
// meanwhile.
func TestClusterShutdown(t *testing.T) {
	redisURL := apptest.RedisURL(t)
	envs := startCluster(t, 2, redisURL)
	a, b := envs[0], envs[1]
	ctx := context.Background()
	phone := b.LinkDevice("u-shut")
	poller := via(b.LinkDevice("u-shut-poll"), a)

	ch := b.Challenge("u-shut", "login", nil)
	id := ch.Str("id")
	sock := a.MustWatchNoOrigin(ch.Str("watch_token"))
	pendingFrame(t, sock)

	type answer struct {
		status int
		body   string
		err    error
	}
	rpPoll := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("GET", a.URL+"/v1/challenges/"+id+"?wait=30", nil)
		req.Header.Set("Authorization", "Bearer "+a.APIKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			rpPoll <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		rpPoll <- answer{resp.StatusCode, string(body), err}
	}()
	devPoll := make(chan error, 1)
	go func() {
		_, err := poller.Pending(ctx, 30*time.Second)
		devPoll <- err
	}()
	time.Sleep(300 * time.Millisecond) // both long-polls are waiting

	stopping := time.Now()
	var wg sync.WaitGroup
	var stopErr error
	wg.Go(func() { stopErr = a.Stop() })
	if f, code := apptest.Frame(t, sock, 5*time.Second); code != websocket.CloseGoingAway {
		t.Fatalf("socket on the stopping instance: frame %v, close %d; want close 1001", f, code)
	}
	wg.Wait()
	took := time.Since(stopping)
	if stopErr != nil {
		t.Fatalf("shutdown with long-polls in flight: %v after %v", stopErr, took)
	}
	if took > 5*time.Second {
		t.Fatalf("shutdown took %v with two long-polls in flight", took)
	}
	t.Logf("shutdown took %v", took.Round(time.Millisecond))
	if p := <-rpPoll; p.err != nil || p.status != http.StatusOK || !strings.Contains(p.body, `"status":"pending"`) {
		t.Fatalf("RP long-poll in flight at shutdown: %d %s %v, want 200 with the pending challenge", p.status, p.body, p.err)
	}
	if err := <-devPoll; err != nil {
		t.Fatalf("device long-poll in flight at shutdown: %v", err)
	}
	if _, _, err := a.Watch(ch.Str("watch_token"), ""); err == nil {
		t.Fatal("the stopped instance still accepts watch sockets")
	}

	// Decided while the browser is away; it reconnects to B.
	if st, err := phone.Decide(ctx, id, deviceclient.Decision{Approve: true}); err != nil || st != "approved" {
		t.Fatalf("decide on B: %q %v", st, err)
	}
	again := b.MustWatchNoOrigin(ch.Str("watch_token"))
	if f := finalWithin(t, again, 5*time.Second); f["status"] != "approved" || f["id"] != id {
		t.Fatalf("reconnected to B: %v, want approved", f)
	}
}

// 5. Two sweepers over the same overdue challenges: each challenge is
// expired once (one audit entry), and each watcher, on either instance,
// gets one expired frame and the close.
func TestClusterSweepers(t *testing.T) {
	redisURL := apptest.RedisURL(t)
	envs := startCluster(t, 2, redisURL)
	ctx := context.Background()
	const n = 50
	ids := make([]string, n)
	socks := make([]*websocket.Conn, n)
	for i := range n {
		r := envs[i%2].Challenge(fmt.Sprintf("u-sweep-%d", i/10), "login", map[string]any{
			"methods": []string{"email"}, "ttl_seconds": 30, "ip": fmt.Sprintf("198.51.100.%d", i%10+1)})
		ids[i] = r.Str("id")
		socks[i] = envs[(i+1)%2].MustWatchNoOrigin(r.Str("watch_token"))
		pendingFrame(t, socks[i])
	}
	for _, e := range envs {
		e.Advance(31 * time.Second)
	}
	for i, sock := range socks {
		if f := finalWithin(t, sock, 10*time.Second); f["status"] != "expired" || f["id"] != ids[i] {
			t.Fatalf("watcher %d: %v, want expired", i, f)
		}
	}
	for i, id := range ids {
		log, err := envs[0].Store.AuditLog(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		expired := 0
		for _, e := range log {
			if e.Event == "challenge.expired" {
				expired++
			}
		}
		if expired != 1 {
			t.Fatalf("challenge %d: %d challenge.expired audit entries, want 1: %+v", i, expired, log)
		}
	}
}
