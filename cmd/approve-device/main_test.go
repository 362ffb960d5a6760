package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/jws"
)

// syncBuffer is a bytes.Buffer safe for a writer and a concurrent reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cmd runs the CLI in-process and returns its exit status and output.
func cmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestParseFlagsAnywhere(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantPos []string
		wantNum string
	}{
		{[]string{"ID", "--number", "42"}, []string{"ID"}, "42"},
		{[]string{"--number=42", "ID"}, []string{"ID"}, "42"},
		{[]string{"A", "-number", "7", "B"}, []string{"A", "B"}, "7"},
		{[]string{"--", "-dash-id", "--number", "1"}, []string{"-dash-id", "--number", "1"}, ""},
		{[]string{"ID", "--", "--number"}, []string{"ID", "--number"}, ""},
		{nil, nil, ""},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		n := fs.String("number", "", "")
		pos, err := parse(fs, tc.args)
		if err != nil {
			t.Errorf("parse(%q): %v", tc.args, err)
			continue
		}
		if !reflect.DeepEqual(pos, tc.wantPos) || *n != tc.wantNum {
			t.Errorf("parse(%q) = %q, number %q; want %q, %q", tc.args, pos, *n, tc.wantPos, tc.wantNum)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	key := filepath.Join(t.TempDir(), "d.json")
	for _, args := range [][]string{
		nil,
		{"frobnicate"},
		{"enroll", "--key", key},
		{"enroll", "--code", "K7QD-9XMW", "--key", key},
		{"enroll", "--server", "ftp://x", "--code", "K7QD-9XMW", "--key", key},
		{"enroll", "--server", "http://x", "--code", "C", "extra", "--key", key},
		{"list", "--wait", "31", "--key", key},
		{"list", "--bogus"},
		{"approve", "--key", key},
		{"approve", "A", "B", "--key", key},
		{"deny", "--number", "1", "A", "--key", key},
		{"run", "--key", key},
		{"run", "--auto", "maybe", "--key", key},
		{"unlink", "extra", "--key", key},
	} {
		code, _, stderr := cmd(t, args...)
		if code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
		if !strings.Contains(stderr, "usage: approve-device") && !strings.Contains(stderr, "Usage of approve-device") {
			t.Errorf("%q: no usage in stderr %q", args, stderr)
		}
	}
	if code, out, _ := cmd(t, "help"); code != 0 || !strings.Contains(out, "usage:") {
		t.Errorf("help: exit %d, %q", code, out)
	}
	if code, _, _ := cmd(t, "approve", "-h"); code != 0 {
		t.Errorf("approve -h: exit %d, want 0", code)
	}
}

func TestNoState(t *testing.T) {
	key := filepath.Join(t.TempDir(), "none.json")
	for _, args := range [][]string{
		{"list", "--key", key},
		{"approve", "ID", "--key", key},
		{"deny", "ID", "--fraud", "--key", key},
		{"unlink", "--key", key},
		{"run", "--auto", "approve", "--key", key},
	} {
		code, _, stderr := cmd(t, args...)
		if code != 1 || !strings.Contains(stderr, "approve-device enroll") {
			t.Errorf("%q: exit %d, stderr %q; want 1 and a hint to enroll", args, code, stderr)
		}
	}
}

func TestEnrollRefusesExistingState(t *testing.T) {
	key := filepath.Join(t.TempDir(), "d.json")
	k, _ := deviceclient.NewKey()
	old := &deviceclient.Client{Server: "http://127.0.0.1:1", Key: k, DeviceID: "dev-old", Audience: "a", UserID: "u"}
	if err := old.Save(key); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := cmd(t, "enroll", "--server", "http://127.0.0.1:1", "--code", "K7QD-9XMW", "--key", key)
	if code != 1 || !strings.Contains(stderr, "dev-old") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// fakeServer answers the device routes like approvald would, with canned
// challenges, and records decisions.
type fakeServer struct {
	t         *testing.T
	mu        sync.Mutex
	pending   []map[string]any
	decisions map[string]map[string]json.RawMessage
	problem   string // if set, decisions answer this problem code (409)
}

func (f *fakeServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/device/challenges":
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			w.WriteHeader(401)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"challenges": f.pending})
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/decision"):
		id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/v1/device/challenges/"), "/decision")
		var body struct{ Response string }
		_ = json.NewDecoder(r.Body).Decode(&body)
		tok, err := jws.Parse(body.Response)
		if err != nil {
			f.t.Errorf("decision: %v", err)
			return
		}
		var claims map[string]json.RawMessage
		_ = json.Unmarshal(tok.Payload, &claims)
		f.decisions[id] = claims
		if f.problem != "" {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(409)
			_, _ = io.WriteString(w, `{"type":"x","title":"Conflict","status":409,"code":"`+f.problem+`","detail":"nope","current_status":"cancelled"}`)
			return
		}
		st := "denied"
		if string(claims["dec"]) == `"approve"` {
			st = "approved"
		}
		for i, c := range f.pending {
			if c["id"] == id {
				f.pending = append(f.pending[:i:i], f.pending[i+1:]...)
				break
			}
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"id": id, "status": st})
	default:
		w.WriteHeader(404)
	}
}

func newFake(t *testing.T) (*fakeServer, string) {
	exp := time.Now().Add(3 * time.Minute).UTC().Format(time.RFC3339)
	f := &fakeServer{t: t, decisions: map[string]map[string]json.RawMessage{}, pending: []map[string]any{
		{"id": "c1", "action": "login", "context": map[string]string{"Where": "Leeds\x1b[31m"}, "created_at": exp, "expires_at": exp,
			"number_matching": false, "requester": map[string]string{"ip": "203.0.113.9", "user_agent": "UA"}},
		{"id": "c2", "action": "link_device", "context": map[string]string{}, "created_at": exp, "expires_at": exp,
			"number_matching": true, "requester": map[string]string{}},
	}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	k, _ := deviceclient.NewKey()
	key := filepath.Join(t.TempDir(), "d.json")
	d := &deviceclient.Client{Server: srv.URL, Key: k, DeviceID: "dev-1", Audience: srv.URL, UserID: "u-1"}
	if err := d.Save(key); err != nil {
		t.Fatal(err)
	}
	return f, key
}

func TestListAndDecideAgainstFake(t *testing.T) {
	f, key := newFake(t)
	code, out, stderr := cmd(t, "list", "--key", key)
	if code != 0 {
		t.Fatalf("list: exit %d, %s", code, stderr)
	}
	for _, want := range []string{"c1  login", `Where: Leeds\u001b[31m`, "requested from 203.0.113.9, UA\n", "c2  link_device", "number matching"} {
		if !strings.Contains(out, want) {
			t.Errorf("list output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b") {
		t.Error("list printed a raw escape character")
	}

	if code, out, stderr := cmd(t, "approve", "c2", "--number", " 042 ", "--key", key); code != 0 || out != "approved c2\n" {
		t.Errorf("approve: exit %d, %q, %q", code, out, stderr)
	}
	if code, out, stderr := cmd(t, "deny", "c1", "--fraud", "--key", key); code != 0 || out != "denied c1 (reported as fraud)\n" {
		t.Errorf("deny: exit %d, %q, %q", code, out, stderr)
	}
	if got := string(f.decisions["c2"]["num"]); got != `"042"` {
		t.Errorf("num = %s", got)
	}
	if got := string(f.decisions["c1"]["fraud"]); got != "true" {
		t.Errorf("fraud = %s", got)
	}

	f.problem = "not_pending"
	code, _, stderr = cmd(t, "approve", "c1", "--key", key)
	if code != 1 || !strings.Contains(stderr, "not_pending: nope (current status: cancelled)") {
		t.Errorf("approve of a decided challenge: exit %d, stderr %q", code, stderr)
	}
}

func TestRunAutoAgainstFake(t *testing.T) {
	f, key := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb syncBuffer
	done := make(chan int)
	go func() { done <- runCtx(ctx, []string{"run", "--auto", "approve", "--key", key}, &out, &errb) }()

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "skipped c2") || !strings.Contains(out.String(), "approved c1") {
		if time.Now().After(deadline) {
			t.Fatalf("no decision lines; stdout %q, stderr %q", out.String(), errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a chance to (wrongly) decide c2 or repeat c1
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Errorf("want 2 lines, got %q", lines)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.decisions) != 1 || string(f.decisions["c1"]["dec"]) != `"approve"` {
		t.Errorf("decisions = %v", f.decisions)
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"plain £350,000": "plain £350,000",
		"a\x1b[2Jb":      `a\u001b[2Jb`,
		"x\u202eevil":    `x\u202eevil`,
		"line\nbreak\tx": `line\u000abreak\u0009x`,
		"":               "",
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}
