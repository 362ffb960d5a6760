// Package apptest starts real approvald instances for tests: a real HTTP
// server on 127.0.0.1:0 over a real SQLite file or PostgreSQL database.
package apptest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app"
	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/clicktopurchase/approvald/internal/config"
	"github.com/clicktopurchase/approvald/internal/store"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
)

// Env is one running instance.
type Env struct {
	URL    string // http://127.0.0.1:PORT, also the public URL
	APIKey string
	App    *app.App
	Store  *store.Store
	t      testing.TB
	skew   *atomic.Int64 // nanoseconds added to the wall clock
	stop   *stopper
}

// Advance moves the instance's clock forward by d (the sweeper follows).
func (e *Env) Advance(d time.Duration) { e.skew.Add(int64(d)) }

// Option adjusts the environment variables of the instance.
type Option func(env map[string]string)

// WithEnv sets one APPROVALD_* variable.
func WithEnv(k, v string) Option { return func(m map[string]string) { m[k] = v } }

// Start runs an instance on a fresh database of dialect ("sqlite" or
// "postgres") until the test ends.
func Start(t testing.TB, dialect string, opts ...Option) *Env {
	t.Helper()
	return StartOn(t, storetest.Open(t, dialect), opts...)
}

// StartOn runs an instance on st (instances sharing a store share state)
// until the test ends or Stop is called; its Redis client, if any, is
// closed once it has stopped.
func StartOn(t testing.TB, st *store.Store, opts ...Option) *Env {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	vars := map[string]string{"APPROVALD_PUBLIC_URL": url, "APPROVALD_DATABASE_URL": "sqlite:unused"}
	for _, o := range opts {
		o(vars)
	}
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	level := slog.LevelWarn
	if os.Getenv("APPROVALD_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("instance", url)
	ctx, cancel := context.WithCancel(context.Background())
	skew := new(atomic.Int64)
	a, err := app.New(ctx, cfg, st, log, app.WithClock(func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }))
	if err != nil {
		cancel()
		ln.Close()
		t.Fatal(err)
	}
	a.SweepInterval = 50 * time.Millisecond
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	e := &Env{URL: url, App: a, Store: st, t: t, skew: skew, stop: &stopper{cancel: cancel, done: done, app: a}}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Errorf("serve %s: %v", url, err)
		}
	})
	e.APIKey = e.NewAPIKey("rp-" + auth.NewID()[:6])
	return e
}

// stopper stops one instance once.
type stopper struct {
	once   sync.Once
	cancel context.CancelFunc
	done   <-chan error
	app    *app.App
	err    error
}

// NewAPIKey makes and returns a live API key named name.
func (e *Env) NewAPIKey(name string) string {
	key := auth.NewSecret("apk_")
	if err := e.Store.CreateAPIKey(context.Background(), &approval.APIKey{ID: auth.NewID(), Name: name, Hash: auth.HashSecret(key), CreatedAt: time.Now().UTC()}); err != nil {
		e.t.Fatal(err)
	}
	return key
}

// Response is a decoded answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into a map.
func (r *Response) JSON() map[string]any {
	var m map[string]any
	_ = json.Unmarshal(r.Body, &m)
	return m
}

// Str reads a top-level string member.
func (r *Response) Str(k string) string {
	s, _ := r.JSON()[k].(string)
	return s
}

// Do sends a request with a JSON body (a string or []byte is sent as is)
// and the bearer credential, and reads the whole answer.
func (e *Env) Do(method, path string, body any, bearer string, hdr ...string) *Response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// RP sends a request as the relying party.
func (e *Env) RP(method, path string, body any, hdr ...string) *Response {
	e.t.Helper()
	return e.Do(method, path, body, e.APIKey, hdr...)
}
