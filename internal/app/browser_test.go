package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The email link's pages in a real browser: headless Chromium, driven with
// chromedp, opens the link, shows the request as text, takes the number and
// approves with a real form POST, which the waiting browser's socket sees.

// findChromium returns the path of a Chromium or Chrome binary, or "".
func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// skipOrFail skips the test when the browser is missing, unless the
// services are required (CI), where it fails.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("APPROVALD_TEST_REQUIRE_SERVICES") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// startBrowser starts one headless Chromium for the test and returns its
// context; tabs are its children.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	path := findChromium()
	if path == "" {
		skipOrFail(t, "Chromium not found (apt-get install chromium)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(412, 915), // a phone
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(browserCtx) }() // starts the browser, bound to browserCtx
	select {
	case err := <-started:
		if err != nil {
			skipOrFail(t, "Chromium (%s) does not start: %v", path, err)
		}
	case <-time.After(60 * time.Second):
		skipOrFail(t, "Chromium (%s) did not start within 60 s", path)
	}
	return browserCtx
}

// artifactsDir is where screenshots go: $APPROVALD_ARTIFACTS, else a
// temporary directory.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("APPROVALD_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func saveScreenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot %s is not a PNG", name)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

func TestBrowserApprovesEmailLink(t *testing.T) {
	chrome := startBrowser(t)
	dir := artifactsDir(t)
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
		saveScreenshot(t, ctx, dir, "email-link-confirm-"+dialect+".png")
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
		saveScreenshot(t, ctx, dir, "email-link-approved-"+dialect+".png")

		f := finalFrame(t, sock)
		if f["status"] != "approved" || f["method"] != "email" {
			t.Fatalf("the waiting browser's final frame: %v", f)
		}
		if got := challengeState(t, env.Env, id); got["status"] != "approved" || got["method"] != "email" {
			t.Fatalf("GET after the browser approved: %v", got)
		}
	})
}
