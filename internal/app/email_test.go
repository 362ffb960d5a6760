package app_test

import (
	"context"
	"encoding/json"
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
	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/mail/mailtest"
	"github.com/gorilla/websocket"
)

// The email fallback over real HTTP with a real SMTP server in the
// process: the request, the mail, the link's pages, and the new-device
// notice with its "This wasn't me" link.

const (
	mailFrom = "clicktopurchase <no-reply@example.com>"
	linkCSP  = "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
	xss      = "<script>alert(1)</script>"
)

// mailEnv is an instance whose mail goes to an in-process SMTP server.
type mailEnv struct {
	*apptest.Env
	smtp *mailtest.Server
}

func startMail(t *testing.T, dialect string, opts ...apptest.Option) *mailEnv {
	t.Helper()
	srv := mailtest.Start(t)
	opts = append([]apptest.Option{
		apptest.WithEnv("APPROVALD_SMTP_URL", srv.URL()),
		apptest.WithEnv("APPROVALD_MAIL_FROM", mailFrom),
	}, opts...)
	return &mailEnv{Env: apptest.Start(t, dialect, opts...), smtp: srv}
}

// mailsTo waits until n mails to addr arrived and returns them, oldest first.
func (e *mailEnv) mailsTo(t *testing.T, addr string, n int) []mailtest.Received {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var got []mailtest.Received
		for _, m := range e.smtp.Messages() {
			if len(m.To) == 1 && m.To[0] == addr {
				got = append(got, m)
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d mail(s) to %s after 15 s, want %d", len(got), addr, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// linkToken checks that the mail carries exactly one link <public url>/e/<token>,
// in each part, and returns the token.
func linkToken(t *testing.T, env *apptest.Env, m mailtest.Received) string {
	t.Helper()
	re := regexp.MustCompile(regexp.QuoteMeta(env.URL+"/e/") + `([A-Za-z0-9_-]*)`)
	text := re.FindAllStringSubmatch(m.Text, -1)
	html := re.FindAllStringSubmatch(m.HTML, -1)
	if len(text) != 1 || len(html) != 1 || text[0][1] != html[0][1] {
		t.Fatalf("links: text %v, html %v; want exactly one, the same, in each part\n%s\n%s", text, html, m.Text, m.HTML)
	}
	if n := strings.Count(m.Text, "http"); n != 1 {
		t.Errorf("the text part has %d URLs, want 1:\n%s", n, m.Text)
	}
	if n := strings.Count(m.HTML, "href="); n != 1 {
		t.Errorf("the HTML part has %d links, want 1:\n%s", n, m.HTML)
	}
	tok := text[0][1]
	if len(tok) < 22 { // 128 bits in base64url
		t.Fatalf("link token %q is too short", tok)
	}
	return tok
}

// requestEmail asks for the email link as the RP and expects 202.
func requestEmail(t *testing.T, env *apptest.Env, id string) *apptest.Response {
	t.Helper()
	return wantStatus(t, "request email", env.RP("POST", "/v1/challenges/"+id+"/email", nil), http.StatusAccepted)
}

// page is an answer to GET or POST /e/{token}.
type page struct {
	Status int
	Header http.Header
	Body   string
}

var browser = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func readPage(t *testing.T, req *http.Request) page {
	t.Helper()
	req.Header.Set("User-Agent", "Mozilla/5.0 (test)")
	req.Header.Set("Accept", "text/html")
	resp, err := browser.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return page{resp.StatusCode, resp.Header, string(b)}
}

func getPage(t *testing.T, env *apptest.Env, token string) page {
	t.Helper()
	req, err := http.NewRequest("GET", env.URL+"/e/"+token, nil)
	if err != nil {
		t.Fatal(err)
	}
	return readPage(t, req)
}

// postPage submits the page's form as a browser would.
func postPage(t *testing.T, env *apptest.Env, token string, form url.Values) page {
	t.Helper()
	req, err := http.NewRequest("POST", env.URL+"/e/"+token, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", env.URL)
	return readPage(t, req)
}

func decide(decision string) url.Values { return url.Values{"decision": {decision}} }

func approveWith(number string) url.Values {
	return url.Values{"decision": {"approve"}, "number": {number}}
}

var formTag = regexp.MustCompile(`(?i)<form\b[^>]*>`)

// checkPage checks a link page's status, headers and body: the spec's
// headers, forms posting to the page itself, no token, no stack trace, and
// the wanted text.
func checkPage(t *testing.T, what string, p page, token string, status int, want ...string) {
	t.Helper()
	if p.Status != status {
		t.Fatalf("%s: status %d, want %d:\n%s", what, p.Status, status, p.Body)
	}
	for k, v := range map[string]string{
		"Cache-Control":           "no-store",
		"Referrer-Policy":         "no-referrer",
		"X-Frame-Options":         "DENY",
		"Content-Security-Policy": linkCSP,
	} {
		if got := p.Header.Get(k); got != v {
			t.Errorf("%s: %s %q, want %q", what, k, got, v)
		}
	}
	if ct := p.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
	if token != "" && strings.Contains(p.Body, token) {
		t.Errorf("%s: the page echoes the token", what)
	}
	for _, f := range formTag.FindAllString(p.Body, -1) {
		if !strings.Contains(f, `action=""`) || !strings.Contains(strings.ToLower(f), `method="post"`) {
			t.Errorf("%s: form %s does not post to the page itself", what, f)
		}
	}
	if strings.Contains(strings.ToLower(p.Body), "<script") {
		t.Errorf("%s: the page has a script", what)
	}
	for _, bad := range []string{"goroutine ", "panic", ".go:", "runtime."} {
		if strings.Contains(p.Body, bad) {
			t.Errorf("%s: the page shows %q:\n%s", what, bad, p.Body)
		}
	}
	for _, w := range want {
		if !strings.Contains(p.Body, w) {
			t.Errorf("%s: the page lacks %q:\n%s", what, w, p.Body)
		}
	}
}

// frameUntil reads watch frames until one satisfies ok (failing on a
// close or a final frame that does not).
func frameUntil(t *testing.T, sock *websocket.Conn, what string, ok func(f map[string]any) bool) map[string]any {
	t.Helper()
	for {
		f, code := apptest.Frame(t, sock, 10*time.Second)
		if code != 0 {
			t.Fatalf("%s: socket closed (%d)", what, code)
		}
		if ok(f) {
			return f
		}
		if f["status"] != "pending" {
			t.Fatalf("%s: final frame %v", what, f)
		}
	}
}

func emailDelivery(f map[string]any) string {
	d, _ := f["delivery"].(map[string]any)
	s, _ := d["email"].(string)
	return s
}

func challengeState(t *testing.T, env *apptest.Env, id string) map[string]any {
	t.Helper()
	return wantStatus(t, "GET challenge", env.RP("GET", "/v1/challenges/"+id, nil), http.StatusOK).JSON()
}

// 1–3. The mail, the watch frames, and clicking the link as a browser does.
func TestEmailLink(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		ch := env.Challenge("u-mail", "submit_offer", map[string]any{
			"context":    json.RawMessage(`{"Property": "12 High St, Leeds", "Offer": "£350,000", "Note": "` + xss + `"}`),
			"user_email": "alice@example.com", "ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (shop)"})
		id := ch.Str("id")
		sock := env.MustWatch(ch.Str("watch_token"))
		if f, _ := apptest.Frame(t, sock, 5*time.Second); f["status"] != "pending" {
			t.Fatalf("first frame: %v", f)
		}

		before := time.Now()
		r := requestEmail(t, env.Env, id)
		after := time.Now()
		if r.Str("sent_to") != "a•••@example.com" {
			t.Fatalf("sent_to: %s", r.Body)
		}
		exp, err := time.Parse(time.RFC3339Nano, r.Str("expires_at"))
		if err != nil || exp.Before(before.Add(10*time.Minute).Truncate(time.Millisecond)) || exp.After(after.Add(10*time.Minute)) {
			t.Fatalf("expires_at %q (%v), want now + 10 minutes", r.Str("expires_at"), err)
		}
		if got := challengeState(t, env.Env, id); got["expires_at"] != r.Str("expires_at") {
			t.Fatalf("GET after the request: expires_at %v, want %s", got["expires_at"], r.Str("expires_at"))
		}

		// The watch socket sees the new expiry and the email sent.
		f := frameUntil(t, sock, "email sent", func(f map[string]any) bool { return emailDelivery(f) == "sent" })
		if f["expires_at"] != r.Str("expires_at") || f["status"] != "pending" {
			t.Fatalf("frame after sending: %v", f)
		}

		// The mail.
		msgs := env.smtp.Messages()
		if len(msgs) != 1 {
			t.Fatalf("%d mails, want 1", len(msgs))
		}
		m := msgs[0]
		if m.ParseErr != nil {
			t.Fatalf("mail does not parse: %v\n%s", m.ParseErr, m.Data)
		}
		if len(m.To) != 1 || m.To[0] != "alice@example.com" || !strings.Contains(m.Header.Get("To"), "alice@example.com") {
			t.Fatalf("recipient: envelope %v, header %q", m.To, m.Header.Get("To"))
		}
		if m.From != "no-reply@example.com" || !strings.Contains(m.Header.Get("From"), "no-reply@example.com") {
			t.Errorf("sender: envelope %q, header %q", m.From, m.Header.Get("From"))
		}
		if m.Subject != "clicktopurchase - Two-Factor Authentication Request" {
			t.Errorf("subject %q", m.Subject)
		}
		if m.MIMEType != "multipart/alternative" || m.Text == "" || m.HTML == "" {
			t.Fatalf("parts: %s, text %d bytes, html %d bytes", m.MIMEType, len(m.Text), len(m.HTML))
		}
		for _, want := range []string{"Submit offer", "12 High St, Leeds", "£350,000", "203.0.113.9", "Property", "Offer", "Note"} {
			if !strings.Contains(m.Text, want) || !strings.Contains(m.HTML, want) {
				t.Errorf("the mail lacks %q in a part", want)
			}
		}
		if !strings.Contains(m.Text, "Note: "+xss) {
			t.Errorf("the text part does not show the value verbatim:\n%s", m.Text)
		}
		if strings.Contains(m.HTML, xss) || !strings.Contains(m.HTML, "&lt;script&gt;alert(1)&lt;/script&gt;") {
			t.Errorf("the HTML part does not escape the value:\n%s", m.HTML)
		}
		if !strings.Contains(strings.ToLower(m.Text), "wasn't you") {
			t.Errorf("the mail does not say what to do if it wasn't you")
		}
		tok := linkToken(t, env.Env, m)

		// GET shows the request and changes nothing.
		p := getPage(t, env.Env, tok)
		checkPage(t, "GET", p, tok, http.StatusOK, "12 High St, Leeds", "£350,000", "&lt;script&gt;alert(1)&lt;/script&gt;",
			"203.0.113.9", `value="approve"`, `value="deny"`, "This wasn't me")
		if strings.Contains(p.Body, `name="number"`) {
			t.Errorf("a one-tap challenge's page asks for a number")
		}
		getPage(t, env.Env, tok)
		got := challengeState(t, env.Env, id)
		if got["status"] != "pending" || got["method"] != nil {
			t.Fatalf("after GET: %v", got)
		}

		// POST approves; the next frame is the decision (GET sent none).
		p = postPage(t, env.Env, tok, decide("approve"))
		checkPage(t, "POST approve", p, tok, http.StatusOK, "Approved")
		f = finalFrame(t, sock)
		if f["status"] != "approved" || f["method"] != "email" || f["result_token"] == nil {
			t.Fatalf("final frame: %v", f)
		}
		got = challengeState(t, env.Env, id)
		if got["status"] != "approved" || got["method"] != "email" || got["fraud_reported"] != false || got["device_id"] != nil ||
			got["result_token"] != f["result_token"] || got["decided_at"] == nil {
			t.Fatalf("GET after approval: %v", got)
		}
		claims := env.VerifyResultToken(got["result_token"].(string))
		if amr, _ := claims["amr"].([]any); len(amr) != 1 || amr[0] != "email" || claims["st"] != "approved" || claims["cid"] != id {
			t.Fatalf("result claims: %v", claims)
		}

		// The link is used up: a second POST (either button) changes nothing.
		for _, d := range []string{"approve", "deny"} {
			p = postPage(t, env.Env, tok, decide(d))
			checkPage(t, "second POST "+d, p, tok, http.StatusGone, "already used", "Nothing was changed")
		}
		checkPage(t, "GET a used link", getPage(t, env.Env, tok), tok, http.StatusGone, "already used")
		again := challengeState(t, env.Env, id)
		if again["status"] != "approved" || again["decided_at"] != got["decided_at"] || again["result_token"] != got["result_token"] ||
			again["fraud_reported"] != false {
			t.Fatalf("after a second POST: %v", again)
		}
		env.Challenge("u-mail", "login", map[string]any{"ip": "203.0.113.10"}) // not locked

		// Made-up tokens.
		for _, made := range []string{auth.NewSecret(""), "x", strings.Repeat("A", 300), "%2e%2e"} {
			checkPage(t, "GET made-up "+made, getPage(t, env.Env, made), made, http.StatusNotFound, "isn't valid", "Nothing was changed")
			checkPage(t, "POST made-up "+made, postPage(t, env.Env, made, decide("approve")), made, http.StatusNotFound, "isn't valid")
		}
		if n := len(env.smtp.Messages()); n != 1 {
			t.Fatalf("%d mails, want 1", n)
		}
	})
}

// APPROVALD_BRAND names the mail and the pages.
func TestEmailBrand(t *testing.T) {
	env := startMail(t, "sqlite", apptest.WithEnv("APPROVALD_BRAND", "Acme"))
	ch := env.Challenge("u-brand", "login", map[string]any{"user_email": "brand@example.com"})
	requestEmail(t, env.Env, ch.Str("id"))
	m := env.mailsTo(t, "brand@example.com", 1)[0]
	if m.Subject != "Acme - Two-Factor Authentication Request" {
		t.Fatalf("subject %q", m.Subject)
	}
	tok := linkToken(t, env.Env, m)
	checkPage(t, "GET", getPage(t, env.Env, tok), tok, http.StatusOK, "Acme")
}

// An expired challenge's link shows that it ended and changes nothing.
func TestEmailLinkExpired(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		ch := env.Challenge("u-exp", "login", map[string]any{"user_email": "exp@example.com"})
		id := ch.Str("id")
		requestEmail(t, env.Env, id)
		tok := linkToken(t, env.Env, env.mailsTo(t, "exp@example.com", 1)[0])
		env.Advance(10*time.Minute + time.Second)
		checkPage(t, "GET expired", getPage(t, env.Env, tok), tok, http.StatusGone, "has ended", "expired", "Nothing was changed")
		for _, d := range []string{"approve", "deny"} {
			checkPage(t, "POST "+d+" expired", postPage(t, env.Env, tok, decide(d)), tok, http.StatusGone, "has ended", "Nothing was changed")
		}
		got := challengeState(t, env.Env, id)
		if got["status"] != "expired" || got["method"] != nil || got["fraud_reported"] != false {
			t.Fatalf("expired challenge: %v", got)
		}
		env.Challenge("u-exp", "login", nil) // a deny on an ended link locked nothing
	})
}

// 4. "This wasn't me" is a fraud report: denied, the user's other pending
// challenges cancelled, the user locked.
func TestEmailLinkFraudReport(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		reported := env.Challenge("u-report", "submit_offer", map[string]any{"user_email": "rep@example.com", "ip": "203.0.113.1"})
		id := reported.Str("id")
		sock := env.MustWatch(reported.Str("watch_token"))
		var others []string
		for _, ip := range []string{"203.0.113.2", "203.0.113.3"} {
			others = append(others, env.Challenge("u-report", "login", map[string]any{"user_email": "rep@example.com", "ip": ip}).Str("id"))
		}
		bystander := env.Challenge("u-bystander", "login", nil).Str("id")
		requestEmail(t, env.Env, id)
		tok := linkToken(t, env.Env, env.mailsTo(t, "rep@example.com", 1)[0])

		p := postPage(t, env.Env, tok, decide("deny"))
		checkPage(t, "This wasn't me", p, tok, http.StatusOK, "Request stopped")
		f := finalFrame(t, sock)
		if f["status"] != "denied" || f["method"] != "email" {
			t.Fatalf("final frame: %v", f)
		}
		got := challengeState(t, env.Env, id)
		if got["status"] != "denied" || got["fraud_reported"] != true || got["method"] != "email" {
			t.Fatalf("reported challenge: %v", got)
		}
		for _, o := range others {
			if st := challengeState(t, env.Env, o)["status"]; st != "cancelled" {
				t.Fatalf("other pending challenge %s: %v, want cancelled", o, st)
			}
		}
		if st := challengeState(t, env.Env, bystander)["status"]; st != "pending" {
			t.Fatalf("another user's challenge: %v", st)
		}
		ra := wantProblem(t, "challenge while locked", createChallenge(env.Env, map[string]any{"user_id": "u-report", "action": "login"}), 429, "user_locked")
		if ra < 880 || ra > 900 {
			t.Errorf("Retry-After %d, want about 900", ra)
		}
		wantProblem(t, "enrollment while locked", env.RP("POST", "/v1/enrollments", map[string]any{"user_id": "u-report"}), 429, "user_locked")
		wantProblem(t, "email while locked", env.RP("POST", "/v1/challenges/"+others[0]+"/email", nil), 429, "user_locked")
		entries, err := env.Store.AuditLog(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		var denied *approval.AuditEntry
		for i := range entries {
			if entries[i].Event == "challenge.denied" {
				denied = &entries[i]
			}
		}
		if denied == nil || denied.ActorType != approval.ActorLink || denied.IP != "127.0.0.1" {
			t.Fatalf("audit: %+v", entries)
		}
		checkPage(t, "second POST", postPage(t, env.Env, tok, decide("deny")), tok, http.StatusGone, "already used")
	})
}

// 5. Number matching by email: the page asks for the number; wrong
// numbers count toward the same three attempts as the phone.
func TestEmailNumberMatching(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		ch := env.Challenge("u-num", "login", map[string]any{"user_email": "num@example.com", "number_matching": true, "ip": "203.0.113.1"})
		id, number := ch.Str("id"), ch.Str("number")
		if number == "" {
			t.Fatalf("no number: %s", ch.Body)
		}
		sock := env.MustWatch(ch.Str("watch_token"))
		requestEmail(t, env.Env, id)
		tok := linkToken(t, env.Env, env.mailsTo(t, "num@example.com", 1)[0])
		p := getPage(t, env.Env, tok)
		checkPage(t, "GET", p, tok, http.StatusOK, `name="number"`)
		if strings.Contains(p.Body, ">"+number+"<") || strings.Contains(p.Body, `value="`+number+`"`) {
			t.Fatalf("the page shows the number")
		}

		p = postPage(t, env.Env, tok, approveWith(otherNumber(number)))
		checkPage(t, "wrong number", p, tok, http.StatusOK, "doesn't match", "2 attempts left", `name="number"`)
		checkPage(t, "GET after a wrong number", getPage(t, env.Env, tok), tok, http.StatusOK, `name="number"`)
		p = postPage(t, env.Env, tok, decide("approve")) // no number at all
		checkPage(t, "no number", p, tok, http.StatusOK, "doesn't match", "1 attempt left")
		if st := challengeState(t, env.Env, id)["status"]; st != "pending" {
			t.Fatalf("after two wrong numbers: %v", st)
		}
		checkPage(t, "right number", postPage(t, env.Env, tok, approveWith(number)), tok, http.StatusOK, "Approved")
		f := frameUntil(t, sock, "approved", func(f map[string]any) bool { return f["status"] == "approved" })
		if f["method"] != "email" {
			t.Fatalf("final frame: %v", f)
		}

		// The third wrong number denies (not a fraud report).
		ch = env.Challenge("u-num", "login", map[string]any{"user_email": "num@example.com", "number_matching": true, "ip": "203.0.113.2"})
		id, number = ch.Str("id"), ch.Str("number")
		requestEmail(t, env.Env, id)
		tok = linkToken(t, env.Env, env.mailsTo(t, "num@example.com", 2)[1])
		checkPage(t, "wrong 1", postPage(t, env.Env, tok, approveWith(otherNumber(number))), tok, http.StatusOK, "2 attempts left")
		checkPage(t, "wrong 2", postPage(t, env.Env, tok, approveWith(otherNumber(number))), tok, http.StatusOK, "1 attempt left")
		checkPage(t, "wrong 3", postPage(t, env.Env, tok, approveWith(otherNumber(number))), tok, http.StatusOK, "Request denied")
		got := challengeState(t, env.Env, id)
		if got["status"] != "denied" || got["fraud_reported"] != false || got["method"] != "email" {
			t.Fatalf("after three wrong numbers: %v", got)
		}
		checkPage(t, "right number too late", postPage(t, env.Env, tok, approveWith(number)), tok, http.StatusGone, "denied")
		if st := challengeState(t, env.Env, id)["status"]; st != "denied" {
			t.Fatalf("status %v", st)
		}
		env.Challenge("u-num", "login", map[string]any{"ip": "203.0.113.3"}) // not locked
	})
}

// Wrong numbers on the phone and on the page count together; the link of a
// challenge the phone ended shows that it ended.
func TestEmailNumberAttemptsShared(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		ctx := context.Background()
		phone := env.LinkDevice("u-shared")
		ch := env.Challenge("u-shared", "login", map[string]any{"user_email": "shared@example.com", "number_matching": true})
		id, number := ch.Str("id"), ch.Str("number")
		requestEmail(t, env.Env, id)
		tok := linkToken(t, env.Env, env.mailsTo(t, "shared@example.com", 1)[0])

		_, err := phone.Decide(ctx, id, deviceclient.Decision{Approve: true, Number: otherNumber(number)})
		wantDeviceProblem(t, "the phone's wrong number", err, 422, "number_mismatch")
		checkPage(t, "the page's wrong number", postPage(t, env.Env, tok, approveWith(otherNumber(number))), tok, http.StatusOK, "1 attempt left")
		_, err = phone.Decide(ctx, id, deviceclient.Decision{Approve: true, Number: otherNumber(number)})
		wantDeviceProblem(t, "the phone's third wrong number", err, 422, "number_mismatch")
		if st := challengeState(t, env.Env, id)["status"]; st != "denied" {
			t.Fatalf("after three wrong numbers: %v", st)
		}
		checkPage(t, "GET after the phone ended it", getPage(t, env.Env, tok), tok, http.StatusGone, "has ended", "It was denied")
		checkPage(t, "POST after the phone ended it", postPage(t, env.Env, tok, approveWith(number)), tok, http.StatusGone, "has ended")
		if st := challengeState(t, env.Env, id)["status"]; st != "denied" {
			t.Fatalf("status %v", st)
		}
	})
}

// Many clicks on one link at once (Approve and This wasn't me): exactly one
// acts, the others see the link used.
func TestEmailLinkDoubleClick(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		for round := range 3 {
			user := fmt.Sprintf("u-double-%d", round)
			ch := env.Challenge(user, "login", map[string]any{"user_email": user + "@example.com"})
			id := ch.Str("id")
			requestEmail(t, env.Env, id)
			tok := linkToken(t, env.Env, env.mailsTo(t, user+"@example.com", 1)[0])
			const n = 12
			pages := make([]page, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					d := "approve"
					if i%4 == 3 {
						d = "deny"
					}
					pages[i] = postPage(t, env.Env, tok, decide(d))
				})
			}
			close(start)
			wg.Wait()
			won := ""
			for i, p := range pages {
				switch {
				case p.Status == http.StatusOK && strings.Contains(p.Body, "<h1>Approved</h1>"):
					if won != "" {
						t.Fatalf("round %d: two clicks acted", round)
					}
					won = "approved"
				case p.Status == http.StatusOK && strings.Contains(p.Body, "<h1>Request stopped</h1>"):
					if won != "" {
						t.Fatalf("round %d: two clicks acted", round)
					}
					won = "denied"
				case p.Status == http.StatusGone && (strings.Contains(p.Body, "already used") || strings.Contains(p.Body, "has ended")):
					// A loser that read the link before the winner used it
					// and the challenge after sees that the request ended.
				default:
					t.Fatalf("round %d, click %d: %d\n%s", round, i, p.Status, p.Body)
				}
			}
			got := challengeState(t, env.Env, id)
			if won == "" || got["status"] != won || got["fraud_reported"] != (won == "denied") {
				t.Fatalf("round %d: the winner %q, the challenge %v", round, won, got)
			}
			r := createChallenge(env.Env, map[string]any{"user_id": user, "action": "login"})
			if locked := r.Status == http.StatusTooManyRequests; locked != (won == "denied") {
				t.Fatalf("round %d: %s, and a new challenge gets %d", round, won, r.Status)
			}
		}
	})
}

// 6. Who may ask for the mail, how often, and for which challenges.
func TestEmailRequestRules(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		ch := env.Challenge("u-rules", "login", map[string]any{"user_email": "rules@example.com"})
		id, watch := ch.Str("id"), ch.Str("watch_token")
		other := env.Challenge("u-rules-other", "login", map[string]any{"user_email": "other@example.com"}).Str("watch_token")
		path := "/v1/challenges/" + id + "/email"

		wantProblem(t, "another challenge's watch token", env.Do("POST", path, nil, other), 401, "unauthorized")
		wantProblem(t, "another challenge's watch token in the query", env.Do("POST", path+"?token="+url.QueryEscape(other), nil, ""), 401, "unauthorized")
		wantProblem(t, "no credentials", env.Do("POST", path, nil, ""), 401, "unauthorized")
		wantProblem(t, "a made-up bearer", env.Do("POST", path, nil, auth.NewSecret("")), 401, "unauthorized")

		r := wantStatus(t, "the browser's bearer watch token", env.Do("POST", path, nil, watch), http.StatusAccepted)
		if r.Str("sent_to") != "r•••@example.com" || r.Str("expires_at") == "" {
			t.Fatalf("answer: %s", r.Body)
		}
		wantStatus(t, "the browser's watch token in the query", env.Do("POST", path+"?token="+url.QueryEscape(watch), nil, ""), http.StatusAccepted)
		requestEmail(t, env.Env, id)
		wantProblem(t, "a fourth email", env.RP("POST", path, nil), 429, "rate_limited")
		wantProblem(t, "a fourth email by the browser", env.Do("POST", path, nil, watch), 429, "rate_limited")
		msgs := env.mailsTo(t, "rules@example.com", 3)
		tokens := map[string]bool{}
		for _, m := range msgs {
			tokens[linkToken(t, env.Env, m)] = true
		}
		if len(tokens) != 3 {
			t.Fatalf("%d distinct links in 3 mails", len(tokens))
		}
		if got := challengeState(t, env.Env, id); got["status"] != "pending" {
			t.Fatalf("after the refused fourth: %v", got)
		}

		noEmail := env.Challenge("u-rules2", "login", nil).Str("id")
		wantProblem(t, "no user_email", env.RP("POST", "/v1/challenges/"+noEmail+"/email", nil), 400, "invalid_request")
		env.LinkDevice("u-rules3")
		pushOnly := env.Challenge("u-rules3", "login", map[string]any{"user_email": "p@example.com", "methods": []string{"push"}}).Str("id")
		wantProblem(t, "methods push only", env.RP("POST", "/v1/challenges/"+pushOnly+"/email", nil), 403, "forbidden")
		cancelled := env.Challenge("u-rules4", "login", map[string]any{"user_email": "c@example.com"}).Str("id")
		cancel(t, env.Env, cancelled)
		wantProblem(t, "a final challenge", env.RP("POST", "/v1/challenges/"+cancelled+"/email", nil), 409, "not_pending")
		if cs := env.RP("POST", "/v1/challenges/"+cancelled+"/email", nil).Str("current_status"); cs != "cancelled" {
			t.Errorf("current_status %q, want cancelled", cs)
		}
		wantProblem(t, "an unknown challenge", env.RP("POST", "/v1/challenges/"+auth.NewID()+"/email", nil), 404, "not_found")

		short := env.Challenge("u-rules5", "login", map[string]any{"user_email": "s@example.com", "ttl_seconds": 30}).Str("id")
		env.Advance(31 * time.Second)
		r = env.RP("POST", "/v1/challenges/"+short+"/email", nil)
		wantProblem(t, "an expired challenge", r, 409, "not_pending")
		if r.Str("current_status") != "expired" {
			t.Errorf("current_status %q, want expired", r.Str("current_status"))
		}
		for _, addr := range []string{"p@example.com", "c@example.com", "s@example.com", "other@example.com"} {
			for _, m := range env.smtp.Messages() {
				if m.To[0] == addr {
					t.Errorf("a refused request mailed %s", addr)
				}
			}
		}
	})
}

// 7. An SMTP server that refuses the mail: the request still succeeds and
// the watcher sees delivery.email failed; a temporary refusal is retried.
func TestEmailSMTPRefuses(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		watchEmail := func(user string) (string, *websocket.Conn) {
			ch := env.Challenge(user, "login", map[string]any{"user_email": user + "@example.com"})
			sock := env.MustWatch(ch.Str("watch_token"))
			apptest.Frame(t, sock, 5*time.Second)
			return ch.Str("id"), sock
		}

		env.smtp.RejectNext(1, 550, "5.7.1 Message refused")
		id, sock := watchEmail("refused")
		requestEmail(t, env.Env, id)
		f := frameUntil(t, sock, "failed", func(f map[string]any) bool { return emailDelivery(f) == "failed" })
		if f["status"] != "pending" {
			t.Fatalf("frame: %v", f)
		}
		if d, _ := challengeState(t, env.Env, id)["delivery"].(map[string]any); d["email"] != "failed" {
			t.Fatalf("GET delivery: %v", d)
		}

		env.smtp.RejectNextRcpt(1, 550, "5.1.1 No such user")
		id, sock = watchEmail("norcpt")
		requestEmail(t, env.Env, id)
		frameUntil(t, sock, "failed rcpt", func(f map[string]any) bool { return emailDelivery(f) == "failed" })

		// 451 then success: sent, and never reported failed on the way.
		env.smtp.RejectNext(1, 451, "4.3.0 Try again later")
		id, sock = watchEmail("retried")
		requestEmail(t, env.Env, id)
		frameUntil(t, sock, "sent after a retry", func(f map[string]any) bool {
			if emailDelivery(f) == "failed" {
				t.Fatalf("reported failed before the retry: %v", f)
			}
			return emailDelivery(f) == "sent"
		})
		if n := len(env.mailsTo(t, "retried@example.com", 1)); n != 1 {
			t.Fatalf("%d mails after the retry", n)
		}
		for _, m := range env.smtp.Messages() {
			if m.To[0] != "retried@example.com" {
				t.Fatalf("a refused mail was accepted: %v", m.To)
			}
		}
		// A failed mail does not spend the request: the browser may ask again.
		id, _ = watchEmail("again")
		env.smtp.RejectNext(1, 550, "5.7.1 Message refused")
		requestEmail(t, env.Env, id)
		requestEmail(t, env.Env, id)
		env.mailsTo(t, "again@example.com", 1)
	})
}

// 8. The new-device notice and its "This wasn't me" link.
func TestNewDeviceNotice(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		ctx := context.Background()
		enroll := func(user, name string, extra map[string]any) *deviceclient.Client {
			t.Helper()
			code := env.Enroll(user, extra).Str("code")
			d := env.NewDevice()
			if err := d.Enroll(ctx, code, name, "android", deviceclient.Push{Provider: "none"}); err != nil {
				t.Fatalf("link %s: %v", name, err)
			}
			return d
		}
		devices := func(user string) []string {
			t.Helper()
			var list struct {
				Devices []struct {
					ID string `json:"id"`
				} `json:"devices"`
			}
			r := wantStatus(t, "devices", env.RP("GET", "/v1/users/"+user+"/devices", nil), http.StatusOK)
			if err := json.Unmarshal(r.Body, &list); err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, d := range list.Devices {
				ids = append(ids, d.ID)
			}
			return ids
		}
		sameIDs := func(what string, got []string, want ...string) {
			t.Helper()
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("%s: devices %v, want %v", what, got, want)
			}
		}

		// A first device: its notice, and its undo.
		phone := enroll("u-nd", "Pixel of Bob", map[string]any{"user_email": "bob@example.com"})
		m := env.mailsTo(t, "bob@example.com", 1)[0]
		if m.ParseErr != nil || !strings.Contains(m.Subject, "A new device was linked") || m.Text == "" || m.HTML == "" {
			t.Fatalf("notice: %q, %v", m.Subject, m.ParseErr)
		}
		for _, want := range []string{"A new device was linked", "Pixel of Bob", "127.0.0.1"} {
			if !strings.Contains(m.Text, want) || !strings.Contains(m.HTML, want) {
				t.Errorf("the notice lacks %q", want)
			}
		}
		tok := linkToken(t, env.Env, m)
		checkPage(t, "GET notice link", getPage(t, env.Env, tok), tok, http.StatusOK, "A new device was linked", "Pixel of Bob", "127.0.0.1", `value="deny"`)
		checkPage(t, "POST without deny", postPage(t, env.Env, tok, decide("approve")), tok, http.StatusOK, "A new device was linked")
		checkPage(t, "POST without a decision", postPage(t, env.Env, tok, url.Values{}), tok, http.StatusOK, "A new device was linked")
		if _, err := phone.Pending(ctx, 0); err != nil {
			t.Fatalf("the device after GET: %v", err)
		}
		sameIDs("after GET", devices("u-nd"), phone.DeviceID)

		checkPage(t, "This wasn't me", postPage(t, env.Env, tok, decide("deny")), tok, http.StatusOK, "Device unlinked")
		_, err := phone.Pending(ctx, 0)
		wantDeviceProblem(t, "the unlinked device", err, 401, "unauthorized")
		sameIDs("after the undo", devices("u-nd"))
		wantProblem(t, "challenge after the undo", createChallenge(env.Env, map[string]any{"user_id": "u-nd", "action": "login"}), 429, "user_locked")
		wantProblem(t, "enrollment after the undo", env.RP("POST", "/v1/enrollments", map[string]any{"user_id": "u-nd"}), 429, "user_locked")
		entries, err := env.Store.AuditLog(ctx, phone.DeviceID)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range entries {
			if e.Event == "device.removed" && e.ActorType == approval.ActorLink && e.IP == "127.0.0.1" && e.UserID == "u-nd" {
				found = true
			}
		}
		if !found {
			t.Fatalf("no device.removed audit entry by the link: %+v", entries)
		}
		checkPage(t, "second POST", postPage(t, env.Env, tok, decide("deny")), tok, http.StatusGone, "already used")
		checkPage(t, "GET a used notice link", getPage(t, env.Env, tok), tok, http.StatusGone, "already used")

		// A second device replaces the first with step-up: the undo restores the first.
		old := enroll("u-nd2", "Old phone", map[string]any{"user_email": "carol@example.com"})
		env.mailsTo(t, "carol@example.com", 1)
		step := env.Challenge("u-nd2", "link_device", nil)
		if st, err := old.Decide(ctx, step.Str("id"), deviceclient.Decision{Approve: true, Number: step.Str("number")}); err != nil || st != "approved" {
			t.Fatalf("step-up: %q %v", st, err)
		}
		// No user_email this time: the latest one given for the user is used.
		next := enroll("u-nd2", "New phone", map[string]any{"authorized_by": step.Str("id")})
		_, err = old.Pending(ctx, 0)
		wantDeviceProblem(t, "the retired device", err, 401, "unauthorized")
		sameIDs("after the change", devices("u-nd2"), next.DeviceID)
		m = env.mailsTo(t, "carol@example.com", 2)[1]
		if !strings.Contains(m.Text, "New phone") {
			t.Fatalf("second notice:\n%s", m.Text)
		}
		tok = linkToken(t, env.Env, m)
		checkPage(t, "GET second notice", getPage(t, env.Env, tok), tok, http.StatusOK, "New phone")
		sameIDs("after GET", devices("u-nd2"), next.DeviceID)
		checkPage(t, "undo the new phone", postPage(t, env.Env, tok, decide("deny")), tok, http.StatusOK, "Device unlinked")
		_, err = next.Pending(ctx, 0)
		wantDeviceProblem(t, "the unlinked new phone", err, 401, "unauthorized")
		if _, err := old.Pending(ctx, 0); err != nil {
			t.Fatalf("the restored device: %v", err)
		}
		sameIDs("after the undo", devices("u-nd2"), old.DeviceID)
		wantProblem(t, "challenge after the second undo", createChallenge(env.Env, map[string]any{"user_id": "u-nd2", "action": "login"}), 429, "user_locked")
		checkPage(t, "second POST", postPage(t, env.Env, tok, decide("deny")), tok, http.StatusGone, "already used")
		sameIDs("after the second POST", devices("u-nd2"), old.DeviceID)
		if _, err := old.Pending(ctx, 0); err != nil {
			t.Fatalf("the restored device after the second POST: %v", err)
		}

		// An enrollment with no address known sends no notice.
		n := len(env.smtp.Messages())
		enroll("u-nd3", "Quiet phone", nil)
		time.Sleep(300 * time.Millisecond)
		if got := len(env.smtp.Messages()); got != n {
			t.Fatalf("a notice without an address: %d mails, want %d", got, n)
		}
	})
}
