package demo_test

import (
	"bytes"
	"context"
	"errors"
	"html"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app"
	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/config"
	"github.com/clicktopurchase/approvald/internal/demo"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/mail"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
)

// browser is a cookie-keeping HTTP client that does not follow redirects,
// so tests see where the site sends it.
type browser struct {
	t    *testing.T
	env  *apptest.Env
	http *http.Client
}

type page struct {
	Status   int
	Header   http.Header
	Body     string
	Location string
}

func newBrowser(t *testing.T, env *apptest.Env) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, env: env, http: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) do(req *http.Request) *page {
	b.t.Helper()
	resp, err := b.http.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	loc := resp.Header.Get("Location")
	if loc != "" {
		u, _ := url.Parse(loc)
		loc = u.Path
	}
	return &page{Status: resp.StatusCode, Header: resp.Header, Body: string(body), Location: loc}
}

func (b *browser) get(path string) *page {
	b.t.Helper()
	req, _ := http.NewRequest("GET", b.env.URL+path, nil)
	return b.do(req)
}

func (b *browser) post(path string, form url.Values, hdr ...string) *page {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.env.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", b.env.URL)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return b.do(req)
}

// signIn signs in and expects to land on want ("/demo/" without a device,
// "/demo/wait/..." with one).
func (b *browser) signIn(user, email string) *page {
	b.t.Helper()
	p := b.post("/demo/signin", url.Values{"user": {user}, "email": {email}})
	if p.Status != http.StatusSeeOther {
		b.t.Fatalf("sign in: %d %s", p.Status, p.Body)
	}
	return p
}

func attr(t *testing.T, body, id, name string) string {
	t.Helper()
	re := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*?\s` + regexp.QuoteMeta(name) + `="([^"]*)"`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s of #%s in:\n%s", name, id, body)
	}
	return html.UnescapeString(m[1])
}

func text(t *testing.T, body, id string) string {
	t.Helper()
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no #%s in:\n%s", id, body)
	}
	return html.UnescapeString(m[1])
}

func start(t *testing.T, opts ...apptest.Option) *apptest.Env {
	return apptest.Start(t, "sqlite", append([]apptest.Option{apptest.WithDemo()}, opts...)...)
}

// linkPhone links a Go device client to the signed-in user of b through
// the link page, and returns it.
func linkPhone(t *testing.T, b *browser, name string) *deviceclient.Client {
	t.Helper()
	p := b.post("/demo/link", nil)
	if p.Status != http.StatusSeeOther || !strings.HasPrefix(p.Location, "/demo/link/") {
		t.Fatalf("link: %d %s %s", p.Status, p.Location, p.Body)
	}
	return linkWith(t, b, p.Location, name)
}

func linkWith(t *testing.T, b *browser, linkPath, name string) *deviceclient.Client {
	t.Helper()
	p := b.get(linkPath)
	if p.Status != http.StatusOK {
		t.Fatalf("link page: %d %s", p.Status, p.Body)
	}
	d := b.env.NewDevice()
	if err := d.Enroll(context.Background(), text(t, p.Body, "code"), name, "other", deviceclient.Push{Provider: "none"}); err != nil {
		t.Fatalf("enroll with the page's code: %v", err)
	}
	return d
}

// decide makes d answer the one pending challenge id.
func decide(t *testing.T, d *deviceclient.Client, id string, dec deviceclient.Decision) {
	t.Helper()
	list, err := d.Pending(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list {
		if c.ID == id {
			if _, err := d.Decide(context.Background(), id, dec); err != nil {
				t.Fatalf("decide: %v", err)
			}
			return
		}
	}
	t.Fatalf("challenge %s is not pending on the device (%d pending)", id, len(list))
}

func challengeID(t *testing.T, p *page) string {
	t.Helper()
	if p.Status != http.StatusSeeOther || !strings.HasPrefix(p.Location, "/demo/wait/") {
		t.Fatalf("want a redirect to a waiting page, got %d %q %s", p.Status, p.Location, p.Body)
	}
	return strings.TrimPrefix(p.Location, "/demo/wait/")
}

func offer(t *testing.T, b *browser, extra ...string) string {
	t.Helper()
	f := url.Values{"property": {"12 High St, Leeds"}, "amount": {"350000"}}
	for i := 0; i+1 < len(extra); i += 2 {
		f.Set(extra[i], extra[i+1])
	}
	return challengeID(t, b.post("/demo/actions/offer", f))
}

// challengeMail waits for the newest challenge mail (mails are sent in
// the background; the new-device notice may come in between).
func challengeMail(t *testing.T, env *apptest.Env) mail.Sent {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, sent := range env.App.DevMail.Recent() {
			if sent.Kind == mail.KindChallenge {
				return sent
			}
		}
	}
	t.Fatal("no challenge mail")
	return mail.Sent{}
}

func TestDemoRoutesAre404WhenOff(t *testing.T) {
	env := apptest.Start(t, "sqlite")
	b := newBrowser(t, env)
	for _, path := range []string{"/demo/", "/demo/phone", "/demo/mail", "/demo/assets/phone.js"} {
		if p := b.get(path); p.Status != http.StatusNotFound {
			t.Errorf("GET %s without --demo: %d, want 404", path, p.Status)
		}
	}
	if p := b.post("/demo/signin", url.Values{"user": {"a"}, "email": {"a@example.com"}}); p.Status != http.StatusNotFound {
		t.Errorf("POST /demo/signin without --demo: %d, want 404", p.Status)
	}
}

func TestStartUpWarnsAndMakesAnAPIKey(t *testing.T) {
	st := storetest.Open(t, "sqlite")
	vars := map[string]string{"APPROVALD_DEMO": "1", "APPROVALD_PUBLIC_URL": "http://localhost:18999", "APPROVALD_DATABASE_URL": "sqlite:unused"}
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if _, err := app.New(context.Background(), cfg, st, log); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "DEMO MODE IS ON") || !strings.Contains(out, "/demo/mail") {
		t.Errorf("start-up log lacks the demo warning:\n%s", out)
	}
	keys, err := st.ListAPIKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var demoKeys int
	for _, k := range keys {
		if strings.HasPrefix(k.Name, "demo-") {
			demoKeys++
			if k.Hash == "" || strings.HasPrefix(k.Hash, "apk_") {
				t.Errorf("the demo's key is not stored hashed: %q", k.Hash)
			}
		}
	}
	if demoKeys != 1 {
		t.Errorf("%d demo API keys, want 1", demoKeys)
	}
}

func TestPagesSendStrictHeaders(t *testing.T) {
	env := start(t)
	b := newBrowser(t, env)
	for _, path := range []string{"/demo/", "/demo/phone", "/demo/mail"} {
		p := b.get(path)
		if p.Status != http.StatusOK {
			t.Fatalf("GET %s: %d", path, p.Status)
		}
		csp := p.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "frame-ancestors 'none'", "ws://127.0.0.1:"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: CSP %q lacks %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(p.Body, "<script>") || strings.Contains(p.Body, " style=") {
			t.Errorf("GET %s: inline script or style", path)
		}
		if p.Header.Get("Cache-Control") != "no-store" || p.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s: headers %v", path, p.Header)
		}
		if !strings.Contains(p.Body, `<html lang="en">`) {
			t.Errorf("GET %s: no lang", path)
		}
	}
	for path, ct := range map[string]string{"/demo/assets/site.js": "text/javascript", "/demo/assets/phone.js": "text/javascript", "/demo/assets/demo.css": "text/css"} {
		if p := b.get(path); p.Status != http.StatusOK || !strings.HasPrefix(p.Header.Get("Content-Type"), ct) {
			t.Errorf("GET %s: %d %s", path, p.Status, p.Header.Get("Content-Type"))
		}
	}
	if p := b.get("/demo/assets/nope.js"); p.Status != http.StatusNotFound {
		t.Errorf("unknown asset: %d", p.Status)
	}
	// A form posted from another site is refused.
	p := b.post("/demo/signin", url.Values{"user": {"alice"}, "email": {"alice@example.com"}}, "Origin", "https://evil.example")
	if p.Status != http.StatusForbidden {
		t.Errorf("cross-site sign-in: %d, want 403", p.Status)
	}
}

func TestSignInSetsASignedCookie(t *testing.T) {
	env := start(t)
	b := newBrowser(t, env)
	if p := b.post("/demo/signin", url.Values{"user": {""}, "email": {"alice@example.com"}}); p.Status != http.StatusBadRequest {
		t.Errorf("empty user name: %d", p.Status)
	}
	if p := b.post("/demo/signin", url.Values{"user": {"alice"}, "email": {"not an address"}}); p.Status != http.StatusBadRequest {
		t.Errorf("bad email: %d", p.Status)
	}
	p := b.signIn("alice", "alice@example.com")
	if p.Location != "/demo/" {
		t.Fatalf("sign-in without a device goes to %q", p.Location)
	}
	raw := p.Header.Get("Set-Cookie")
	for _, want := range []string{demo.CookieName + "=", "HttpOnly", "SameSite=Lax", "Path=/demo"} {
		if !strings.Contains(raw, want) {
			t.Errorf("Set-Cookie %q lacks %q", raw, want)
		}
	}
	if home := b.get("/demo/"); !strings.Contains(home.Body, `id="account-name">alice<`) {
		t.Errorf("home page does not greet alice:\n%s", home.Body)
	}

	// A tampered cookie is no session.
	u, _ := url.Parse(env.URL + "/demo/")
	c := b.http.Jar.Cookies(u)[0]
	c.Value = strings.Replace(c.Value, ".", "x.", 1)
	b.http.Jar.SetCookies(u, []*http.Cookie{{Name: c.Name, Value: c.Value, Path: "/demo"}})
	if home := b.get("/demo/"); !strings.Contains(home.Body, `id="signin-form"`) {
		t.Error("a tampered cookie still signs in")
	}

	// Sign out.
	b.signIn("alice", "alice@example.com")
	if p := b.post("/demo/signout", nil); p.Status != http.StatusSeeOther {
		t.Errorf("sign out: %d", p.Status)
	}
	if home := b.get("/demo/"); !strings.Contains(home.Body, `id="signin-form"`) {
		t.Error("still signed in after signing out")
	}
}

func TestLinkPageShowsCodeAndQR(t *testing.T) {
	env := start(t)
	b := newBrowser(t, env)
	b.signIn("alice", "alice@example.com")
	p := b.post("/demo/link", nil)
	if p.Status != http.StatusSeeOther || !strings.HasPrefix(p.Location, "/demo/link/") {
		t.Fatalf("link: %d %q", p.Status, p.Location)
	}
	page := b.get(p.Location)
	code := text(t, page.Body, "code")
	if !regexp.MustCompile(`^[0-9A-Z]{4}-[0-9A-Z]{4}$`).MatchString(code) {
		t.Errorf("code %q is not XXXX-XXXX", code)
	}
	if tok := attr(t, page.Body, "link", "data-token"); tok == "" {
		t.Error("no watch token for the page's socket")
	}
	qrPath := attr(t, page.Body, "qr", "src")
	img := b.get(qrPath)
	if img.Status != http.StatusOK || img.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("QR image: %d %s", img.Status, img.Header.Get("Content-Type"))
	}
	if im, err := png.Decode(strings.NewReader(img.Body)); err != nil || im.Bounds().Dx() < 100 {
		t.Fatalf("QR image does not decode as a PNG: %v", err)
	}
	// Another session sees neither the page nor the image.
	other := newBrowser(t, env)
	other.signIn("mallory", "m@example.com")
	if q := other.get(qrPath); q.Status != http.StatusNotFound {
		t.Errorf("another session's QR: %d", q.Status)
	}
	if q := other.get(p.Location); q.Status != http.StatusNotFound || strings.Contains(q.Body, code) {
		t.Errorf("another session's link page: %d", q.Status)
	}

	// The code links a device; the account page then shows it.
	d := env.NewDevice()
	if err := d.Enroll(context.Background(), code, "Pixel 8", "android", deviceclient.Push{Provider: "none"}); err != nil {
		t.Fatal(err)
	}
	if d.UserID != demo.UserPrefix+"alice" {
		t.Errorf("linked to user %q", d.UserID)
	}
	home := b.get("/demo/")
	if !strings.Contains(home.Body, `class="device-name">Pixel 8<`) {
		t.Errorf("home page does not show the device:\n%s", home.Body)
	}
	// With a device, linking another needs step-up.
	if q := b.post("/demo/link", nil); q.Status != http.StatusConflict {
		t.Errorf("second link without step-up: %d", q.Status)
	}
}

// The site never takes the browser's word for an approval.
func TestApprovedPostBackIsCheckedServerSide(t *testing.T) {
	env := start(t)
	alice := newBrowser(t, env)
	alice.signIn("alice", "alice@example.com")
	phone := linkPhone(t, alice, "Alice's phone")

	id := offer(t, alice)
	list, err := phone.Pending(context.Background(), 0)
	if err != nil || len(list) != 1 {
		t.Fatalf("pending on the phone: %v %v", list, err)
	}
	if ms, _ := list[0].ContextMembers(); len(ms) != 2 || ms[0].Name != "Property" || ms[1] != (deviceclient.ContextMember{Name: "Offer", Value: "£350,000"}) {
		t.Errorf("the phone gets the context %v, want Property then Offer", ms)
	}
	wait := alice.get("/demo/wait/" + id)
	if wait.Status != http.StatusOK || attr(t, wait.Body, "wait", "data-token") == "" || !strings.Contains(wait.Body, "£350,000") {
		t.Fatalf("waiting page: %d\n%s", wait.Status, wait.Body)
	}
	// Pending is not approved.
	if p := alice.post("/demo/wait/"+id+"/done", nil); p.Status != http.StatusConflict || !strings.Contains(p.Body, `data-state="refused"`) {
		t.Fatalf("post-back of a pending challenge: %d\n%s", p.Status, p.Body)
	}
	decide(t, phone, id, deviceclient.Decision{Approve: true})
	// Another session cannot use alice's approval.
	bob := newBrowser(t, env)
	bob.signIn("bob", "bob@example.com")
	if p := bob.post("/demo/wait/"+id+"/done", nil); p.Status != http.StatusForbidden {
		t.Errorf("bob posting alice's approval: %d", p.Status)
	}
	p := alice.post("/demo/wait/"+id+"/done", nil)
	if p.Status != http.StatusOK || !strings.Contains(p.Body, `data-state="approved"`) || !strings.Contains(p.Body, "Offer submitted") {
		t.Fatalf("post-back of an approved offer: %d\n%s", p.Status, p.Body)
	}
	// Once only.
	if p := alice.post("/demo/wait/"+id+"/done", nil); p.Status != http.StatusForbidden {
		t.Errorf("second post-back: %d", p.Status)
	}

	// A challenge the site did not create for this session (another user's,
	// approved) is refused.
	other := env.LinkDevice("someone-else")
	foreign := env.Challenge("someone-else", "submit_offer", nil).Str("id")
	decide(t, other, foreign, deviceclient.Decision{Approve: true})
	if p := alice.post("/demo/wait/"+foreign+"/done", nil); p.Status != http.StatusForbidden || strings.Contains(p.Body, "Offer submitted") {
		t.Errorf("post-back of another user's approved challenge: %d", p.Status)
	}

	// Denied is refused too.
	id = challengeID(t, alice.post("/demo/actions/verify", url.Values{"property": {"1 Low Rd, York"}}))
	decide(t, phone, id, deviceclient.Decision{Approve: false})
	if p := alice.post("/demo/wait/"+id+"/done", nil); p.Status != http.StatusConflict || !strings.Contains(p.Body, `data-status="denied"`) {
		t.Errorf("post-back of a denied challenge: %d", p.Status)
	}
	// And an approved verification goes through.
	id = challengeID(t, alice.post("/demo/actions/verify", url.Values{"property": {"1 Low Rd, York"}, "number_matching": {"1"}}))
	number := text(t, alice.get("/demo/wait/"+id).Body, "number")
	if len(number) != 3 {
		t.Fatalf("number matching asked, number %q", number)
	}
	decide(t, phone, id, deviceclient.Decision{Approve: true, Number: number})
	if p := alice.post("/demo/wait/"+id+"/done", nil); p.Status != http.StatusOK || !strings.Contains(p.Body, "Verification requested") {
		t.Errorf("approved verification: %d\n%s", p.Status, p.Body)
	}
}

func TestSignInIsProtectedOnceADeviceIsLinked(t *testing.T) {
	env := start(t)
	first := newBrowser(t, env)
	first.signIn("alice", "alice@example.com")
	phone := linkPhone(t, first, "Alice's phone")

	b := newBrowser(t, env)
	id := challengeID(t, b.signIn("alice", "alice@example.com"))
	if home := b.get("/demo/"); !strings.Contains(home.Body, `id="signin-pending"`) || strings.Contains(home.Body, `id="account-name"`) {
		t.Fatalf("signed in before the approval:\n%s", home.Body)
	}
	if p := b.post("/demo/actions/offer", url.Values{"property": {"x"}, "amount": {"1"}}); p.Location != "/demo/" {
		t.Errorf("a protected action before the approval: %d %q", p.Status, p.Location)
	}
	list, err := phone.Pending(context.Background(), 0)
	if err != nil || len(list) != 1 || list[0].Action != "login" {
		t.Fatalf("phone sees %v %v", list, err)
	}
	decide(t, phone, id, deviceclient.Decision{Approve: true})
	if p := b.post("/demo/wait/"+id+"/done", nil); p.Status != http.StatusOK || !strings.Contains(p.Body, "Signed in") {
		t.Fatalf("login post-back: %d\n%s", p.Status, p.Body)
	}
	if home := b.get("/demo/"); !strings.Contains(home.Body, `id="account-name">alice<`) {
		t.Error("not signed in after the approval")
	}
}

func TestMailboxListsTheEmailLink(t *testing.T) {
	env := start(t)
	b := newBrowser(t, env)
	if p := b.get("/demo/mail"); !strings.Contains(p.Body, `id="no-mail"`) {
		t.Errorf("empty mailbox:\n%s", p.Body)
	}
	b.signIn("alice", "alice@example.com")
	id := offer(t, b) // no device: the push has nowhere to go, email does
	wait := b.get("/demo/wait/" + id)
	if attr(t, wait.Body, "wait", "data-push") != "no_device" || !strings.Contains(wait.Body, `id="email-button"`) {
		t.Fatalf("waiting page without a device:\n%s", wait.Body)
	}
	tok := attr(t, wait.Body, "wait", "data-token")
	// What the page's button does: the browser asks with its watch token.
	r := env.Do("POST", "/v1/challenges/"+id+"/email", nil, tok, "Origin", env.URL)
	if r.Status != http.StatusAccepted || r.Str("sent_to") != "a•••@example.com" {
		t.Fatalf("email: %d %s", r.Status, r.Body)
	}
	if r.Header.Get("Access-Control-Allow-Origin") != env.URL {
		t.Errorf("the public URL's origin is not allowed by CORS: %v", r.Header)
	}
	challengeMail(t, env) // sent in the background
	box := b.get("/demo/mail")
	if !strings.Contains(box.Body, "clicktopurchase - Two-Factor Authentication Request") || !strings.Contains(box.Body, "alice@example.com") {
		t.Fatalf("mailbox does not list the mail:\n%s", box.Body)
	}
	m := regexp.MustCompile(`<a href="(` + regexp.QuoteMeta(env.URL) + `/e/[^"]+)"`).FindStringSubmatch(box.Body)
	if m == nil {
		t.Fatalf("no clickable link in the mailbox:\n%s", box.Body)
	}
	link, _ := url.Parse(html.UnescapeString(m[1]))
	if p := b.get(link.Path); p.Status != http.StatusOK {
		t.Fatalf("the mail's link: %d", p.Status)
	}
	if p := b.post(link.Path, url.Values{"decision": {"approve"}}); p.Status != http.StatusOK {
		t.Fatalf("approve by email: %d", p.Status)
	}
	if p := b.post("/demo/wait/"+id+"/done", nil); p.Status != http.StatusOK || !strings.Contains(p.Body, "Offer submitted") {
		t.Fatalf("post-back after the email approval: %d\n%s", p.Status, p.Body)
	}
}

func TestNoMailboxWithSMTP(t *testing.T) {
	env := start(t, apptest.WithEnv("APPROVALD_SMTP_URL", "smtp://127.0.0.1:1"))
	b := newBrowser(t, env)
	if p := b.get("/demo/mail"); p.Status != http.StatusNotFound {
		t.Errorf("/demo/mail with SMTP configured: %d", p.Status)
	}
	if p := b.get("/demo/"); p.Status != http.StatusOK || strings.Contains(p.Body, `id="nav-mail"`) {
		t.Errorf("home with SMTP: %d, mailbox link shown", p.Status)
	}
}

func TestChangeDeviceWithStepUp(t *testing.T) {
	env := start(t)
	b := newBrowser(t, env)
	b.signIn("alice", "alice@example.com")
	old := linkPhone(t, b, "Old phone")

	// By the current phone: a link_device challenge with a number.
	id := challengeID(t, b.post("/demo/device/change", url.Values{"method": {"push"}}))
	wait := b.get("/demo/wait/" + id)
	number := text(t, wait.Body, "number")
	decide(t, old, id, deviceclient.Decision{Approve: true, Number: number})
	p := b.post("/demo/wait/"+id+"/done", nil)
	if p.Status != http.StatusSeeOther || !strings.HasPrefix(p.Location, "/demo/link/") {
		t.Fatalf("after the step-up: %d %q\n%s", p.Status, p.Location, p.Body)
	}
	if page := b.get(p.Location); !strings.Contains(page.Body, `id="step-up-note"`) {
		t.Error("the link page does not say the change was approved")
	}
	newer := linkWith(t, b, p.Location, "New phone")
	if _, err := old.Pending(context.Background(), 0); err == nil {
		t.Error("the old phone still works after the change")
	}
	dev := b.get("/demo/device")
	if !strings.Contains(dev.Body, "New phone") || strings.Contains(dev.Body, "Old phone") {
		t.Errorf("manage page after the change:\n%s", dev.Body)
	}

	// Lost phone: by email.
	id = challengeID(t, b.post("/demo/device/change", url.Values{"method": {"email"}}))
	wait = b.get("/demo/wait/" + id)
	if attr(t, wait.Body, "wait", "data-push") != "disabled" {
		t.Error("a lost-phone change still pushes")
	}
	if list, _ := newer.Pending(context.Background(), 0); len(list) != 0 {
		t.Error("the email step-up is on the phone")
	}
	tok := attr(t, wait.Body, "wait", "data-token")
	if r := env.Do("POST", "/v1/challenges/"+id+"/email", nil, tok); r.Status != http.StatusAccepted {
		t.Fatalf("email: %d %s", r.Status, r.Body)
	}
	m := regexp.MustCompile(regexp.QuoteMeta(env.URL) + `(/e/[A-Za-z0-9_-]+)`).FindStringSubmatch(challengeMail(t, env).Text)
	if m == nil {
		t.Fatal("no link in the mail")
	}
	if r := b.post(m[1], url.Values{"decision": {"approve"}, "number": {text(t, wait.Body, "number")}}); r.Status != http.StatusOK || !strings.Contains(r.Body, "Approved") {
		t.Log(r.Body)
		t.Fatalf("approve by email: %d", r.Status)
	}
	p = b.post("/demo/wait/"+id+"/done", nil)
	if p.Status != http.StatusSeeOther || !strings.HasPrefix(p.Location, "/demo/link/") {
		t.Fatalf("after the email step-up: %d %q", p.Status, p.Location)
	}
	linkWith(t, b, p.Location, "Third phone")
	if _, err := newer.Pending(context.Background(), 0); err == nil {
		t.Error("the lost phone still works")
	}
}

func TestRemoveDeviceWithStepUp(t *testing.T) {
	env := start(t)
	b := newBrowser(t, env)
	b.signIn("alice", "alice@example.com")
	phone := linkPhone(t, b, "Phone")
	dev := b.get("/demo/device")
	devID := regexp.MustCompile(`data-device="([^"]+)"`).FindStringSubmatch(dev.Body)
	if devID == nil {
		t.Fatalf("no device on the manage page:\n%s", dev.Body)
	}
	if p := b.post("/demo/device/remove", url.Values{"device": {"nope"}}); p.Status != http.StatusNotFound {
		t.Errorf("removing an unknown device: %d", p.Status)
	}
	id := challengeID(t, b.post("/demo/device/remove", url.Values{"device": {devID[1]}}))
	number := text(t, b.get("/demo/wait/"+id).Body, "number")
	decide(t, phone, id, deviceclient.Decision{Approve: true, Number: number})
	if p := b.post("/demo/wait/"+id+"/done", nil); p.Status != http.StatusOK || !strings.Contains(p.Body, "Device removed") {
		t.Fatalf("remove: %d\n%s", p.Status, p.Body)
	}
	if p := b.get("/demo/device"); !strings.Contains(p.Body, `id="no-device"`) {
		t.Error("the device is still listed")
	}
	var prob *deviceclient.Problem
	if _, err := phone.Pending(context.Background(), 0); !errors.As(err, &prob) || prob.Status != http.StatusUnauthorized {
		t.Errorf("the removed phone: %v", err)
	}
}

func TestPhonePage(t *testing.T) {
	env := start(t)
	b := newBrowser(t, env)
	p := b.get("/demo/phone?phone=old%3Cb%3E")
	if p.Status != http.StatusOK || attr(t, p.Body, "phone", "data-phone") != "oldb" || !strings.Contains(p.Body, `src="/demo/assets/phone.js"`) {
		t.Fatalf("phone page: %d\n%s", p.Status, p.Body)
	}
	if attr(t, b.get("/demo/phone").Body, "phone", "data-phone") != "default" {
		t.Error("default phone name")
	}
}

func TestANewRequestCancelsTheSessionsEarlierOne(t *testing.T) {
	env := start(t)
	b := newBrowser(t, env)
	b.signIn("alice", "alice@example.com")
	first := offer(t, b)
	second := offer(t, b)
	if st := env.RP("GET", "/v1/challenges/"+first, nil).Str("status"); st != "cancelled" {
		t.Errorf("the earlier request is %q, want cancelled", st)
	}
	if st := env.RP("GET", "/v1/challenges/"+second, nil).Str("status"); st != "pending" {
		t.Errorf("the new request is %q", st)
	}
	if p := b.get("/demo/wait/" + first); p.Status != http.StatusNotFound {
		t.Errorf("the earlier waiting page: %d", p.Status)
	}
}
