package app_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/clicktopurchase/approvald/internal/browsertest"
)

// The email link's pages in a real browser: headless Chromium, driven with
// chromedp, opens the link, shows the request as text, takes the number and
// approves with a real form POST, which the waiting browser's socket sees.

func TestBrowserApprovesEmailLink(t *testing.T) {
	chrome := browsertest.New(t)
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := startMail(t, dialect)
		ch := env.Challenge("u-browser", "submit_offer", map[string]any{
			"context":    json.RawMessage(`{"Property": "12 High St, Leeds", "Offer": "£350,000", "Note": "` + xss + `"}`),
			"user_email": "browser@example.com", "ip": "203.0.113.9", "number_matching": true})
		id, number := ch.Str("id"), ch.Str("number")
		sock := env.MustWatch(ch.Str("watch_token"))
		requestEmail(t, env.Env, id)
		linkURL := env.URL + "/e/" + linkToken(t, env.Env, env.mailsTo(t, "browser@example.com", 1)[0])

		tab, cancelTab := chromedp.NewContext(chrome)
		defer cancelTab()
		if err := chromedp.Do(tab); err != nil { // opens the tab, bound to tab
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(tab, 60*time.Second)
		defer cancel()

		resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(linkURL))
		if err != nil || resp.Status != http.StatusOK {
			t.Fatalf("open the link: %v, %+v", err, resp)
		}
		if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`input[name="number"]`))); err != nil {
			t.Fatal(err)
		}
		text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"12 High St, Leeds", "£350,000", xss, "203.0.113.9"} {
			if !strings.Contains(text, want) {
				t.Errorf("the page does not show %q as text:\n%s", want, text)
			}
		}
		if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.scripts.length`)); err != nil || n != 0 {
			t.Errorf("the page has %d scripts (%v)", n, err)
		}
		// The CSP lets the page's own stylesheet in.
		if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](
			`[...document.styleSheets].some(s => s.href && s.href.endsWith("/assets/approvald.css") && s.cssRules.length > 0)`)); err != nil || !ok {
			t.Errorf("the stylesheet did not load (%v)", err)
		}
		browsertest.Screenshot(t, ctx, "email-link-confirm-"+dialect+".png")
		if st := challengeState(t, env.Env, id)["status"]; st != "pending" {
			t.Fatalf("after the browser opened the link: %v", st)
		}

		if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS(`input[name="number"]`), number)); err != nil {
			t.Fatal(err)
		}
		resp, err = chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(`button[value="approve"]`)))
		if err != nil || resp.Status != http.StatusOK {
			t.Fatalf("approve: %v, %+v", err, resp)
		}
		h1, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("h1")))
		if err != nil || strings.TrimSpace(h1) != "Approved" {
			t.Fatalf("after Approve the page says %q (%v)", h1, err)
		}
		if loc, err := chromedp.Run(ctx, chromedp.Location()); err != nil || loc != linkURL {
			t.Errorf("the form posted to %q (%v), want the page's own URL", loc, err)
		}
		browsertest.Screenshot(t, ctx, "email-link-approved-"+dialect+".png")

		f := finalFrame(t, sock)
		if f["status"] != "approved" || f["method"] != "email" {
			t.Fatalf("the waiting browser's final frame: %v", f)
		}
		if got := challengeState(t, env.Env, id); got["status"] != "approved" || got["method"] != "email" {
			t.Fatalf("GET after the browser approved: %v", got)
		}
	})
}
