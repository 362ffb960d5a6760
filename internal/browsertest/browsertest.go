// Package browsertest runs headless Chromium for tests driven with
// chromedp, and saves their screenshots as artefacts.
package browsertest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// startTimeout bounds how long New waits for Chromium to start.
const startTimeout = 60 * time.Second

// Option changes how New starts Chromium.
type Option func(*options)

type options struct {
	width, height int
}

// WindowSize sets the browser window's size in CSS px (the default is a
// phone's, 412×915).
func WindowSize(width, height int) Option {
	return func(o *options) { o.width, o.height = width, height }
}

// skipOrFail skips the test, unless the services are required
// (APPROVALD_TEST_REQUIRE_SERVICES=1, as in CI), where it fails.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("APPROVALD_TEST_REQUIRE_SERVICES") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// Chromium returns the path of a Chromium or Chrome binary; without one
// the test is skipped, or fails when APPROVALD_TEST_REQUIRE_SERVICES=1.
func Chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	skipOrFail(t, "Chromium not found (apt-get install chromium)")
	return ""
}

// New starts one headless Chromium for the test, stopped when the test
// ends, and returns its context: tabs are its children
// (chromedp.NewContext). If Chromium is missing or does not start, the
// test is skipped, or fails when APPROVALD_TEST_REQUIRE_SERVICES=1.
func New(t *testing.T, opts ...Option) context.Context {
	t.Helper()
	o := options{width: 412, height: 915}
	for _, opt := range opts {
		opt(&o)
	}
	path := Chromium(t)
	allocOpts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(o.width, o.height),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), allocOpts...)
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
	case <-time.After(startTimeout):
		skipOrFail(t, "Chromium (%s) did not start within %v", path, startTimeout)
	}
	return browserCtx
}

// ArtifactsDir is where screenshots go: $APPROVALD_ARTIFACTS, else a
// temporary directory of the test.
func ArtifactsDir(t *testing.T) string {
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

// CheckPNG fails the test unless b is a PNG image.
func CheckPNG(t *testing.T, name string, b []byte) {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot %s is not a PNG", name)
	}
}

// Save checks that png is a PNG image and writes it to ArtifactsDir as
// name, and logs where.
func Save(t *testing.T, name string, png []byte) {
	t.Helper()
	CheckPNG(t, name, png)
	path := filepath.Join(ArtifactsDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// Screenshot takes a full-page screenshot of the tab ctx and saves it
// (see Save).
func Screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	Save(t, name, png)
}
