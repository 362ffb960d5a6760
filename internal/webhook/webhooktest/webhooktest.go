// Package webhooktest is a webhook receiver for tests: a real HTTP server
// on 127.0.0.1 that checks every request as a careful receiver would (the
// method, the content type, the signature and its time) and records it.
package webhooktest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/webhook"
)

// Delivery is one request the receiver got.
type Delivery struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	CreatedAt string          `json:"created_at"`
	Data      json.RawMessage `json:"data"`

	Body      []byte
	Signature string
	T         time.Time // the signature's t
	At        time.Time // when it arrived
	Attempt   int       // 1 for the first request with this id
	Status    int       // what the receiver answered; 0 when the sender gave up first
}

// String sums d up for test failures (without the body's bytes).
func (d Delivery) String() string {
	return fmt.Sprintf("{%s %s attempt %d, t=%d, status %d, data %s}", d.Type, d.ID, d.Attempt, d.T.Unix(), d.Status, d.Data)
}

// DataMap decodes Data.
func (d Delivery) DataMap() map[string]any {
	var m map[string]any
	_ = json.Unmarshal(d.Data, &m)
	return m
}

// Answer tells the receiver how to answer attempt (1-based) of event id:
// the status, after delay (a delay past the sender's timeout is a hang).
type Answer func(id string, attempt int) (status int, delay time.Duration)

// OK answers 200 at once.
func OK(string, int) (int, time.Duration) { return http.StatusOK, 0 }

// Receiver records what it receives.
type Receiver struct {
	URL    string
	Secret []byte
	srv    *httptest.Server
	answer Answer

	mu         sync.Mutex
	deliveries []Delivery
	attempts   map[string]int
	inFlight   map[string]int
	overlaps   []string // ids received while a request with the same id was still open
	errs       []string
}

// Start runs a receiver on 127.0.0.1 (a free port), checked and closed at
// the end of the test: a request that fails a check fails the test.
func Start(t testing.TB, secret []byte, answer Answer) *Receiver {
	t.Helper()
	return StartOn(t, "127.0.0.1:0", secret, answer)
}

// StartOn runs a receiver on addr.
func StartOn(t testing.TB, addr string, secret []byte, answer Answer) *Receiver {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if answer == nil {
		answer = OK
	}
	r := &Receiver{Secret: secret, answer: answer, attempts: map[string]int{}, inFlight: map[string]int{}}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.srv.Listener.Close()
	r.srv.Listener = ln
	r.srv.Start()
	r.URL = r.srv.URL + "/hooks/approvald"
	t.Cleanup(func() {
		r.srv.CloseClientConnections()
		r.srv.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, e := range r.errs {
			t.Errorf("webhook receiver: %s", e)
		}
		for _, id := range r.overlaps {
			t.Errorf("webhook receiver: event %s arrived while an attempt with its id was still open", id)
		}
	})
	return r
}

// FreeAddr returns a 127.0.0.1 address that nothing listens on (for a
// receiver that is down, then StartOn it).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func (r *Receiver) fail(format string, args ...any) {
	r.mu.Lock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	at := time.Now()
	body, err := io.ReadAll(req.Body)
	if err != nil {
		r.fail("read body: %v", err)
		return
	}
	if req.Method != http.MethodPost || req.URL.Path != "/hooks/approvald" || req.Header.Get("Content-Type") != "application/json" {
		r.fail("request %s %s with Content-Type %q", req.Method, req.URL.Path, req.Header.Get("Content-Type"))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	sig := req.Header.Get(webhook.Header)
	ts, err := webhook.Verify(r.Secret, sig, body, at, 5*time.Minute)
	if err != nil {
		r.fail("signature %q: %v", sig, err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var d Delivery
	if err := json.Unmarshal(body, &d); err != nil || d.ID == "" || d.Type == "" || d.CreatedAt == "" || len(d.Data) == 0 {
		r.fail("body %s: %v", body, err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	d.Body, d.Signature, d.T, d.At = body, sig, ts, at

	r.mu.Lock()
	r.attempts[d.ID]++
	d.Attempt = r.attempts[d.ID]
	if r.inFlight[d.ID] > 0 {
		r.overlaps = append(r.overlaps, d.ID)
	}
	r.inFlight[d.ID]++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.inFlight[d.ID]--
		r.deliveries = append(r.deliveries, d)
		r.mu.Unlock()
	}()

	status, delay := r.answer(d.ID, d.Attempt)
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-req.Context().Done():
			return // the sender gave up: Status stays 0
		}
	}
	d.Status = status
	w.WriteHeader(status)
}

// Deliveries returns every request so far (in the order they ended).
func (r *Receiver) Deliveries() []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Delivery(nil), r.deliveries...)
}

// Find returns the requests of type typ that match (nil matches all).
func (r *Receiver) Find(typ string, match func(Delivery) bool) []Delivery {
	var out []Delivery
	for _, d := range r.Deliveries() {
		if d.Type == typ && (match == nil || match(d)) {
			out = append(out, d)
		}
	}
	return out
}

// Wait waits (up to timeout) until a request of type typ matching match
// was answered 2xx, and returns every request of that type that matches.
func (r *Receiver) Wait(t testing.TB, typ string, match func(Delivery) bool, timeout time.Duration) []Delivery {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := r.Find(typ, match)
		for _, d := range got {
			if d.Status >= 200 && d.Status < 300 {
				return got
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s webhook answered 2xx within %v; received: %d request(s)", typ, timeout, len(r.Deliveries()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ChallengeID matches the requests whose data is the challenge id.
func ChallengeID(id string) func(Delivery) bool {
	return func(d Delivery) bool { return d.DataMap()["id"] == id }
}

// DeviceID matches the requests whose data names device id.
func DeviceID(id string) func(Delivery) bool {
	return func(d Delivery) bool {
		dev, _ := d.DataMap()["device"].(map[string]any)
		return dev != nil && dev["id"] == id
	}
}
