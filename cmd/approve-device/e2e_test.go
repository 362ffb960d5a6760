package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app"
	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/clicktopurchase/approvald/internal/config"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
)

// testServer is a real approvald on 127.0.0.1 with a SQLite file.
type testServer struct {
	t      *testing.T
	URL    string
	APIKey string
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	env := map[string]string{
		"APPROVALD_DATABASE_URL": "sqlite:" + filepath.Join(t.TempDir(), "approvald.db"),
		"APPROVALD_PUBLIC_URL":   url,
	}
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a, err := app.Open(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		a.Close()
	})

	key := auth.NewSecret("apk_")
	if err := a.Store.CreateAPIKey(ctx, &approval.APIKey{ID: auth.NewID(), Name: "e2e", Hash: auth.HashSecret(key), CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	return &testServer{t: t, URL: url, APIKey: key}
}

// rp makes an RP call and decodes the JSON answer, failing unless the
// status is want.
func (s *testServer) rp(method, path string, body any, want int) map[string]any {
	s.t.Helper()
	rp := &deviceclient.Client{Server: s.URL}
	resp, data, err := rp.Do(context.Background(), method, path, body, s.APIKey)
	if err != nil {
		s.t.Fatal(err)
	}
	if resp.StatusCode != want {
		s.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, data, want)
	}
	var out map[string]any
	if len(bytes.TrimSpace(data)) > 0 {
		if err := json.Unmarshal(data, &out); err != nil {
			s.t.Fatalf("%s %s: %v in %s", method, path, err, data)
		}
	}
	return out
}

func wantRun(t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	code, out, stderr := cmd(t, args...)
	if code != wantCode {
		t.Fatalf("approve-device %q: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, wantCode, out, stderr)
	}
	return out + stderr
}

func TestEndToEnd(t *testing.T) {
	srv := startServer(t)
	key := filepath.Join(t.TempDir(), "device.json")

	// Enrollment: the RP creates it, the CLI types the code (lower case,
	// with an O for the 0 and spaces, as a person might).
	enr := srv.rp("POST", "/v1/enrollments", map[string]any{"user_id": "u-42"}, http.StatusCreated)
	code, _ := enr["code"].(string)
	typed := strings.ToLower(strings.ReplaceAll(code, "0", "O"))
	typed = strings.Replace(typed, "-", " - ", 1)
	out := wantRun(t, 0, "enroll", "--server", srv.URL, "--code", typed, "--name", "CLI e2e", "--key", key)
	if !strings.Contains(out, "user u-42") {
		t.Errorf("enroll output: %q", out)
	}
	fi, err := os.Stat(key)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v, %v", fi, err)
	}
	dev, err := deviceclient.Load(key)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Audience != srv.URL || dev.UserID != "u-42" {
		t.Errorf("state: %+v", dev)
	}
	got := srv.rp("GET", "/v1/enrollments/"+enr["id"].(string), nil, http.StatusOK)
	if got["status"] != "linked" {
		t.Errorf("enrollment = %v", got)
	}
	// The code is single use.
	out = wantRun(t, 1, "enroll", "--server", srv.URL, "--code", code, "--key", filepath.Join(t.TempDir(), "d2.json"))
	if !strings.Contains(out, "invalid_code") {
		t.Errorf("second enroll: %q", out)
	}

	// A one-tap challenge: list shows it, approve decides it.
	ch := srv.rp("POST", "/v1/challenges", map[string]any{"user_id": "u-42", "action": "submit_offer",
		"context": map[string]string{"Property": "12 High St, Leeds", "Offer": "£350,000"}, "ip": "203.0.113.9"}, http.StatusCreated)
	id := ch["id"].(string)
	out = wantRun(t, 0, "list", "--key", key)
	for _, want := range []string{id + "  submit_offer", "Property: 12 High St, Leeds", "Offer: £350,000", "203.0.113.9"} {
		if !strings.Contains(out, want) {
			t.Errorf("list output lacks %q:\n%s", want, out)
		}
	}
	if out = wantRun(t, 0, "approve", id, "--key", key); out != "approved "+id+"\n" {
		t.Errorf("approve output: %q", out)
	}
	got = srv.rp("GET", "/v1/challenges/"+id, nil, http.StatusOK)
	if got["status"] != "approved" || got["method"] != "push" || got["device_id"] != dev.DeviceID || got["result_token"] == nil {
		t.Errorf("challenge after approve = %v", got)
	}
	out = wantRun(t, 1, "approve", id, "--key", key)
	if !strings.Contains(out, "not_pending") || !strings.Contains(out, "current status: approved") {
		t.Errorf("second approve: %q", out)
	}

	// Number matching: without the number the CLI says so; with it, approved.
	ch = srv.rp("POST", "/v1/challenges", map[string]any{"user_id": "u-42", "action": "login", "number_matching": true}, http.StatusCreated)
	id, number := ch["id"].(string), ch["number"].(string)
	if out = wantRun(t, 1, "approve", id, "--key", key); !strings.Contains(out, "invalid_request") || !strings.Contains(out, "--number") {
		t.Errorf("approve without number: %q", out)
	}
	if out = wantRun(t, 0, "approve", id, "--number", number, "--key", key); out != "approved "+id+"\n" {
		t.Errorf("approve with number: %q", out)
	}

	// run --auto approve: decides a one-tap challenge, skips a number-matched one.
	plain := srv.rp("POST", "/v1/challenges", map[string]any{"user_id": "u-42", "action": "login"}, http.StatusCreated)["id"].(string)
	nm := srv.rp("POST", "/v1/challenges", map[string]any{"user_id": "u-42", "action": "login", "number_matching": true}, http.StatusCreated)["id"].(string)
	ctx, cancel := context.WithCancel(context.Background())
	var aout, aerr syncBuffer
	done := make(chan int, 1)
	go func() { done <- runCtx(ctx, []string{"run", "--auto", "approve", "--key", key}, &aout, &aerr) }()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(aout.String(), "approved "+plain) || !strings.Contains(aout.String(), "skipped "+nm) {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("run --auto: stdout %q, stderr %q", aout.String(), aerr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A challenge created while it waits is decided too (the long poll wakes).
	late := srv.rp("POST", "/v1/challenges", map[string]any{"user_id": "u-42", "action": "login"}, http.StatusCreated)["id"].(string)
	for !strings.Contains(aout.String(), "approved "+late) {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("run --auto missed %s: stdout %q, stderr %q", late, aout.String(), aerr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if c := <-done; c != 0 {
		t.Errorf("run --auto exit %d, stderr %q", c, aerr.String())
	}
	if st := srv.rp("GET", "/v1/challenges/"+plain, nil, http.StatusOK)["status"]; st != "approved" {
		t.Errorf("auto-approved challenge is %v", st)
	}
	if st := srv.rp("GET", "/v1/challenges/"+nm, nil, http.StatusOK)["status"]; st != "pending" {
		t.Errorf("skipped challenge is %v", st)
	}

	// deny --fraud on the remaining one, then unlink.
	if out = wantRun(t, 0, "deny", nm, "--fraud", "--key", key); out != "denied "+nm+" (reported as fraud)\n" {
		t.Errorf("deny output: %q", out)
	}
	got = srv.rp("GET", "/v1/challenges/"+nm, nil, http.StatusOK)
	if got["status"] != "denied" || got["fraud_reported"] != true {
		t.Errorf("challenge after fraud deny = %v", got)
	}
	wantRun(t, 0, "unlink", "--key", key)
	if _, err := os.Stat(key); !os.IsNotExist(err) {
		t.Errorf("state file after unlink: %v", err)
	}
	devs := srv.rp("GET", "/v1/users/u-42/devices", nil, http.StatusOK)
	if l, _ := devs["devices"].([]any); len(l) != 0 {
		t.Errorf("devices after unlink = %v", devs)
	}
	// The old key is refused now.
	_, err = dev.Pending(context.Background(), 0)
	var p *deviceclient.Problem
	if !errors.As(err, &p) || p.Code != "unauthorized" {
		t.Errorf("assertion of an unlinked device: %v", err)
	}
}
