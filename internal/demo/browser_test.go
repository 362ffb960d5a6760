package demo_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/clicktopurchase/approvald/internal/browsertest"
)

// The demo in a real browser: one headless Chromium, driven with chromedp
// through the pages only (clicks and typing), with the site, the phones
// and the mailbox in separate tabs. The flows run in order on one
// instance, as a newcomer would try them: link, approve an offer, number
// matching, email, change the phone, and last "This wasn't me" (which
// pauses the user for 15 minutes).
//
// Screenshots of the key screens go to $APPROVALD_ARTIFACTS (else a
// temporary directory). With -update-screenshots, small viewport shots of
// a few of them are also written to screenshots/ for the README.

var updateScreenshots = flag.Bool("update-screenshots", false, "also write the README's small screenshots into internal/demo/screenshots/")

const (
	stepTimeout  = 20 * time.Second
	readmeWidth  = 420 // CSS px of the README screenshots
	readmeHeight = 760
	readmeMax    = 80 << 10 // bytes
)

// shots numbers the screenshots: every key screen, full page, saved by
// browsertest.Screenshot; with -update-screenshots, a few small viewport
// ones into screenshots/.
type shots struct {
	n int
}

// tab is one browser tab.
type tab struct {
	name string
	ctx  context.Context
	base string
	sh   *shots
}

func newTab(t *testing.T, browser context.Context, name, base string, sh *shots) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // opens the tab, bound to ctx
		t.Fatalf("open the %s tab: %v", name, err)
	}
	return &tab{name: name, ctx: ctx, base: base, sh: sh}
}

// do runs one step with a timeout; on failure it shows what the tab shows.
func (tb *tab) do(t *testing.T, step string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	t0 := time.Now()
	defer func() {
		if d := time.Since(t0); d > 2*time.Second {
			t.Logf("%s (%s tab) took %v", step, tb.name, d.Round(time.Millisecond))
		}
	}()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s (%s tab): %v\n%s", step, tb.name, err, tb.dump())
	}
}

// dump is the page's URL and visible text, for failure messages.
func (tb *tab) dump() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 3*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
	if err != nil {
		return "(page not readable: " + err.Error() + ")"
	}
	return s
}

func (tb *tab) open(t *testing.T, path string, ready string) {
	t.Helper()
	tb.do(t, "open "+path, chromedp.Navigate(tb.base+path), chromedp.WaitVisible(css(ready)))
}

// text is the visible text of the first element sel matches.
func (tb *tab) text(t *testing.T, sel string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(css(sel)))
	if err != nil {
		t.Fatalf("text of %s (%s tab): %v\n%s", sel, tb.name, err, tb.dump())
	}
	return strings.TrimSpace(s)
}

// waitJS waits until the expression is truthy (polling on a timer, not on
// animation frames, which a background tab does not get).
func (tb *tab) waitJS(t *testing.T, what, expr string) {
	t.Helper()
	tb.do(t, what, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond),
		chromedp.WithPollingTimeout(stepTimeout)))
}

// shot saves a full-page screenshot of the tab as an artefact.
func (tb *tab) shot(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	tb.sh.n++
	browsertest.Screenshot(t, ctx, fmt.Sprintf("demo-%02d-%s.png", tb.sh.n, name))
}

// readmeShot, with -update-screenshots, writes a small screenshot of the
// tab's viewport (readmeWidth CSS px wide) to screenshots/name.png,
// scaling it down until it is under readmeMax.
func (tb *tab) readmeShot(t *testing.T, name string) {
	t.Helper()
	if !*updateScreenshots {
		return
	}
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	var img []byte
	for _, scale := range []float64{1, 0.85, 0.7, 0.55} {
		b, err := chromedp.Run(ctx, chromedp.Action[[]byte](func(ctx context.Context, tg *chromedp.Target) ([]byte, error) {
			if _, err := chromedp.EmulateViewport(readmeWidth, readmeHeight, chromedp.EmulateScale(scale), chromedp.EmulatePortrait)(ctx, tg); err != nil {
				return nil, err
			}
			defer func() { _, _ = chromedp.ResetViewport()(ctx, tg) }()
			if _, err := chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0)`)(ctx, tg); err != nil {
				return nil, err
			}
			return chromedp.CaptureScreenshot()(ctx, tg)
		}))
		if err != nil {
			t.Fatalf("README screenshot %s: %v", name, err)
		}
		browsertest.CheckPNG(t, name, b)
		img = b
		if len(img) <= readmeMax {
			break
		}
	}
	if len(img) > readmeMax {
		t.Fatalf("README screenshot %s is %d bytes, over %d", name, len(img), readmeMax)
	}
	if err := os.MkdirAll("screenshots", 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("screenshots", name+".png")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("README screenshot: internal/demo/%s (%d bytes)", path, len(img))
}

// followMailLink opens the mailbox, waits for the newest challenge mail
// to be there (mails go out in the background: it reloads until then),
// checks it is to whom, and follows its link.
func (tb *tab) followMailLink(t *testing.T, to string) {
	t.Helper()
	const link = `.mail[data-kind="challenge"] a[href*="/e/"]`
	for deadline := time.Now().Add(stepTimeout); ; time.Sleep(100 * time.Millisecond) {
		tb.open(t, "/demo/mail", "main h1")
		n, err := chromedp.Run(tb.ctx, chromedp.Evaluate[int](`document.querySelectorAll('`+link+`').length`))
		if err == nil && n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no challenge mail in the mailbox (%v)\n%s", err, tb.dump())
		}
	}
	if got := tb.text(t, `.mail[data-kind="challenge"] .mail-to`); got != to {
		t.Errorf("the newest challenge mail is to %q, want %q", got, to)
	}
	tb.shot(t, "mailbox")
	tb.do(t, "follow the link", click(link), visible(`button[value="approve"]`))
}

func css(sel string) chromedp.CSS { return chromedp.CSS(sel) }

func click(sel string) chromedp.Action[chromedp.Void] { return chromedp.Click(css(sel)) }
func visible(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.WaitVisible(css(sel))
}
func typeInto(sel, text string) chromedp.Action[chromedp.Void] {
	return chromedp.SendKeys(css(sel), text)
}

var (
	linkCodeRE  = regexp.MustCompile(`^[0-9A-Z]{4}-[0-9A-Z]{4}$`)
	countdownRE = regexp.MustCompile(`^\d+:\d\d$`)
	numberRE    = regexp.MustCompile(`^\d{2,6}$`)
)

func TestBrowserDemo(t *testing.T) {
	browsertest.Chromium(t) // skip before starting anything without one
	env := start(t)
	chrome := browsertest.New(t, browsertest.WindowSize(readmeWidth, 900)) // after start: its cleanup runs first
	sh := &shots{}
	site := newTab(t, chrome, "site", env.URL, sh)
	phone := newTab(t, chrome, "phone", env.URL, sh)

	// checkWaiting checks the waiting page of an action: its context and a
	// running countdown.
	checkWaiting := func(t *testing.T) {
		t.Helper()
		site.do(t, "waiting page", visible(`#wait[data-state="pending"]`), visible(`#connection[data-mode="live"]`))
		site.waitJS(t, "countdown", `Number(document.getElementById('countdown').dataset.seconds) > 0`)
		if cd := site.text(t, "#countdown"); !countdownRE.MatchString(cd) {
			t.Errorf("countdown shows %q", cd)
		}
		if ctx := site.text(t, "#wait-context"); !strings.Contains(ctx, "12 High St, Leeds") {
			t.Errorf("the waiting page's context: %q", ctx)
		}
	}
	// phoneCard waits for the phone to show one pending request of action
	// and returns its CSS selector.
	phoneCard := func(t *testing.T, ph *tab, action string) string {
		t.Helper()
		sel := `.challenge[data-action="` + action + `"][data-state="pending"]`
		ph.do(t, "the phone shows the "+action+" request", visible(sel+" .approve"))
		return sel
	}

	ok := t.Run("SignInAndLink", func(t *testing.T) {
		site.open(t, "/demo/", "#signin-form")
		site.shot(t, "signin")
		site.do(t, "sign in", typeInto("#user", "alice"), typeInto("#email", "alice@example.com"), click("#signin-button"),
			visible("#link-button"))
		if got := site.text(t, "#account-name"); got != "alice" {
			t.Errorf("signed in as %q", got)
		}
		site.do(t, "link your device", click("#link-button"), visible(`#link[data-state="pending"] #code`),
			visible(`#connection[data-mode="live"]`))
		site.waitJS(t, "the QR image loads", `(function(i){ return i && i.complete && i.naturalWidth > 0 })(document.getElementById('qr'))`)
		code := site.text(t, "#code")
		if !linkCodeRE.MatchString(code) {
			t.Fatalf("link code %q", code)
		}
		site.shot(t, "link-code-qr")
		site.readmeShot(t, "link")

		phone.open(t, "/demo/phone", `#phone[data-state="unlinked"]`)
		phone.shot(t, "phone-unlinked")
		// Typed as a person might: lower case, without the dash.
		phone.do(t, "link the phone", typeInto("#code", strings.ToLower(strings.ReplaceAll(code, "-", ""))),
			click("#phone-link-button"), visible(`#phone[data-state="linked"]`), visible("#no-challenges"))
		if got := phone.text(t, "#device-name-label"); got != "Demo phone" {
			t.Errorf("the phone says it is linked as %q", got)
		}
		site.do(t, "the site sees the link", visible(`#link[data-state="linked"] #link-success`))
		if got := site.text(t, "#link-success"); !strings.Contains(got, "Success") || !strings.Contains(got, "Demo phone") {
			t.Errorf("the link page says %q", got)
		}
		site.shot(t, "linked")
	})
	if !ok {
		return
	}

	ok = t.Run("ApproveAnOffer", func(t *testing.T) {
		site.open(t, "/demo/", "#offer-form")
		site.do(t, "submit an offer", chromedp.Clear(css("#offer-amount")), typeInto("#offer-amount", "425,000"),
			click("#offer-button"))
		checkWaiting(t)
		if !strings.Contains(site.text(t, "#wait-context"), "£425,000") {
			t.Error("the waiting page does not show the amount")
		}
		site.shot(t, "wait-offer")
		card := phoneCard(t, phone, "submit_offer")
		got := phone.text(t, card)
		for _, want := range []string{"Approve your offer?", "12 High St, Leeds", "£425,000", "Expires in"} {
			if !strings.Contains(got, want) {
				t.Errorf("the phone's request does not show %q:\n%s", want, got)
			}
		}
		phone.shot(t, "phone-offer")
		phone.do(t, "approve", click(card+" .approve"), visible(`.challenge[data-action="submit_offer"][data-state="approved"]`))
		site.do(t, "the site shows the approval", visible(`#outcome[data-state="approved"][data-status="approved"][data-purpose="submit_offer"]`))
		if h := site.text(t, "#outcome h1"); h != "Offer submitted" {
			t.Errorf("outcome heading %q", h)
		}
		if got := site.text(t, "#outcome"); !strings.Contains(got, "£425,000") {
			t.Errorf("the outcome does not show the offer:\n%s", got)
		}
		site.shot(t, "offer-submitted")
		site.readmeShot(t, "approved")
		// The phone keeps the outcome on screen a few seconds, then clears it.
		phone.do(t, "the phone clears the request", visible("#no-challenges"))
	})
	if !ok {
		return
	}

	ok = t.Run("NumberMatching", func(t *testing.T) {
		site.open(t, "/demo/", "#verify-form")
		site.do(t, "seek verification with a number", click("#verify-nm"), click("#verify-button"))
		checkWaiting(t)
		site.do(t, "the number", visible("#number-box #number"))
		number := site.text(t, "#number")
		if !numberRE.MatchString(number) {
			t.Fatalf("the site shows the number %q", number)
		}
		site.shot(t, "wait-number")
		site.readmeShot(t, "wait-number")
		card := phoneCard(t, phone, "verify_property")
		phone.do(t, "the phone asks for the number", visible(card+`[data-number-matching="true"] .number-input`))
		phone.do(t, "type the number", typeInto(card+" .number-input", number))
		phone.shot(t, "phone-number")
		phone.readmeShot(t, "phone")

		wrong := "000"
		if number == wrong {
			wrong = "111"
		}
		phone.do(t, "a wrong number", chromedp.Clear(css(card+" .number-input")), typeInto(card+" .number-input", wrong),
			click(card+" .approve"))
		phone.waitJS(t, "the phone says the number is wrong",
			`/doesn't match/.test(document.querySelector('.challenge[data-action="verify_property"] .challenge-result').textContent)`)
		site.do(t, "still pending", visible(`#wait[data-state="pending"]`))
		phone.do(t, "the right number", chromedp.Clear(css(card+" .number-input")), typeInto(card+" .number-input", number),
			click(card+" .approve"), visible(`.challenge[data-action="verify_property"][data-state="approved"]`))
		site.do(t, "approved", visible(`#outcome[data-state="approved"][data-purpose="verify_property"]`))
		if h := site.text(t, "#outcome h1"); h != "Verification requested" {
			t.Errorf("outcome heading %q", h)
		}
		site.shot(t, "verified")
	})
	if !ok {
		return
	}

	ok = t.Run("SendCodeViaEmail", func(t *testing.T) {
		site.open(t, "/demo/", "#verify-form")
		site.do(t, "seek verification", click("#verify-button"))
		checkWaiting(t)
		site.do(t, "send code via email", click("#email-button"), visible(`#email-status[data-state="sent"]`), visible("#mailbox-hint"))
		if got := site.text(t, "#email-status"); !strings.Contains(got, "Code sent to") || strings.Contains(got, "alice@example.com") {
			t.Errorf("the site says %q (want the masked address)", got)
		}
		site.shot(t, "email-sent")
		phoneCard(t, phone, "verify_property") // the phone has it too

		mail := newTab(t, chrome, "mailbox", env.URL, sh)
		mail.followMailLink(t, "alice@example.com")
		if got := mail.text(t, "main"); !strings.Contains(got, "12 High St, Leeds") {
			t.Errorf("the email page does not show the request:\n%s", got)
		}
		mail.shot(t, "email-page")
		// A plain form post: wait for the page it loads.
		ctx, cancel := context.WithTimeout(mail.ctx, stepTimeout)
		resp, err := chromedp.RunResponse(ctx, click(`button[value="approve"]`))
		cancel()
		if err != nil || resp.Status != 200 {
			t.Fatalf("approve on the email page: %v, %+v", err, resp)
		}
		if h := mail.text(t, "h1"); h != "Approved" {
			t.Errorf("after Approve the email page says %q", h)
		}
		site.do(t, "the site proceeds", visible(`#outcome[data-state="approved"][data-purpose="verify_property"]`))
		site.shot(t, "email-approved")
		// Decided elsewhere: the phone drops the request.
		phone.do(t, "the phone drops it", visible("#no-challenges"))
	})
	if !ok {
		return
	}

	newPhone := newTab(t, chrome, "new phone", env.URL, sh)
	ok = t.Run("ChangeDeviceWithStepUp", func(t *testing.T) {
		site.open(t, "/demo/device", "#change")
		if got := site.text(t, "#devices .device-name"); got != "Demo phone" {
			t.Errorf("linked device %q", got)
		}
		site.do(t, "change device", click("#change-push-button"), visible(`#wait[data-state="pending"][data-purpose="change_device"]`),
			visible("#number-box #number"), visible(`#connection[data-mode="live"]`))
		number := site.text(t, "#number")
		site.shot(t, "change-wait")
		card := phoneCard(t, phone, "link_device")
		if got := phone.text(t, card); !strings.Contains(got, "Link a new device") {
			t.Errorf("the old phone's request:\n%s", got)
		}
		phone.shot(t, "phone-step-up")
		phone.do(t, "the old phone approves", typeInto(card+" .number-input", number), click(card+" .approve"),
			visible(`.challenge[data-action="link_device"][data-state="approved"]`))
		site.do(t, "a new code", visible(`#link[data-state="pending"] #code`), visible("#step-up-note"), visible(`#connection[data-mode="live"]`))
		code := site.text(t, "#code")
		site.shot(t, "change-code")

		newPhone.open(t, "/demo/phone?phone=new", `#phone[data-state="unlinked"]`)
		newPhone.do(t, "link the new phone", typeInto("#code", code), click("#phone-link-button"), visible(`#phone[data-state="linked"]`))
		site.do(t, "the site sees the new phone", visible(`#link[data-state="linked"] #link-success`))
		if got := site.text(t, "#linked-device-name"); got != "Demo phone new" {
			t.Errorf("linked %q", got)
		}
		phone.do(t, "the old phone is no longer linked", visible(`#phone[data-state="unlinked"]`), visible("#phone-error"))
		if got := phone.text(t, "#phone-error"); !strings.Contains(got, "no longer linked") {
			t.Errorf("the old phone says %q", got)
		}
		phone.shot(t, "old-phone-unlinked")
		site.open(t, "/demo/device", "#change")
		names, err := chromedp.Run(site.ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#devices .device-name')].map(e => e.textContent)`))
		if err != nil || len(names) != 1 || names[0] != "Demo phone new" {
			t.Errorf("devices after the change: %q (%v)", names, err)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("SignInIsProtected", func(t *testing.T) {
		site.open(t, "/demo/", "#signout-form")
		site.do(t, "sign out", click("#signout-button"), visible("#signin-form"))
		site.do(t, "sign in again", typeInto("#user", "alice"), typeInto("#email", "alice@example.com"), click("#signin-button"),
			visible(`#wait[data-state="pending"][data-purpose="login"]`))
		card := phoneCard(t, newPhone, "login")
		if got := newPhone.text(t, card); !strings.Contains(got, "Approve sign-in?") || !strings.Contains(got, "alice") {
			t.Errorf("the phone's sign-in request:\n%s", got)
		}
		newPhone.do(t, "approve the sign-in", click(card+" .approve"), visible(`.challenge[data-action="login"][data-state="approved"]`))
		site.do(t, "signed in", visible(`#outcome[data-state="approved"][data-purpose="login"]`))
		if h := site.text(t, "#outcome h1"); h != "Signed in" {
			t.Errorf("outcome heading %q", h)
		}
		site.do(t, "continue", click("#continue-link"), visible("#account-name"))
	})
	if !ok {
		return
	}

	ok = t.Run("PollingWhenTheSocketIsRefused", func(t *testing.T) {
		// At another host than the public URL the watch socket refuses the
		// page's origin: the page says so, and polls instead. Another user,
		// without a phone, confirms by email.
		other := newTab(t, chrome, "other host", strings.Replace(env.URL, "127.0.0.1", "localhost", 1), sh)
		other.open(t, "/demo/", "#signin-form")
		other.do(t, "sign in as carol", typeInto("#user", "carol"), typeInto("#email", "carol@example.com"), click("#signin-button"),
			visible("#link-button"), click("#offer-button"), visible(`#wait[data-state="pending"]`), visible(".banner"),
			visible(`#connection[data-mode="polling"]`), click("#email-button"), visible(`#email-status[data-state="sent"]`))
		other.shot(t, "polling")
		mail := newTab(t, chrome, "mailbox 2", env.URL, sh)
		mail.followMailLink(t, "carol@example.com")
		mail.do(t, "approve on the email page", click(`button[value="approve"]`))
		other.do(t, "carol's offer approved", visible(`#outcome[data-state="approved"][data-purpose="submit_offer"]`))
	})
	if !ok {
		return
	}

	t.Run("ThisWasntMe", func(t *testing.T) {
		site.open(t, "/demo/", "#offer-form")
		site.do(t, "submit an offer", click("#offer-button"))
		checkWaiting(t)
		card := phoneCard(t, newPhone, "submit_offer")
		newPhone.do(t, "this wasn't me", click(card+" .fraud"), visible(`.challenge[data-action="submit_offer"][data-state="denied"]`))
		if got := newPhone.text(t, `.challenge[data-state="denied"] .challenge-result`); !strings.Contains(got, "15 minutes") {
			t.Errorf("the phone says %q", got)
		}
		newPhone.shot(t, "phone-fraud")
		site.do(t, "the site shows denied", visible(`#wait[data-state="denied"]`), visible("#denied-text"))
		site.shot(t, "denied")
		// The user is paused: a new request is refused.
		site.open(t, "/demo/", "#offer-form")
		site.do(t, "another offer", click("#offer-button"), visible("#message"))
		if got := site.text(t, "#message"); !strings.Contains(got, "user_locked") {
			t.Errorf("an offer after “This wasn't me”:\n%s", got)
		}
	})
}
