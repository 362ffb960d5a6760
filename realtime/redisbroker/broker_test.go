package redisbroker

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/realtime"
	"github.com/clicktopurchase/approvald/realtime/redisbroker/redistest"
)

func TestBrokerSuite(t *testing.T) {
	url := testRedisURL(t)
	realtime.BrokerSuite(t, func(t *testing.T) realtime.Broker {
		return newBroker(t, url, WithPrefix(uniquePrefix()))
	})
}

// Two instances on one Redis: a frame published on one reaches the other's
// Run (and its own); an instance with another prefix sees nothing.
func TestTwoInstances(t *testing.T) {
	t.Parallel()
	url := testRedisURL(t)
	prefix := uniquePrefix()
	a := newBroker(t, url, WithPrefix(prefix))
	b := newBroker(t, url, WithPrefix(prefix))
	other := newBroker(t, url, WithPrefix(uniquePrefix()))
	ca, cb, co := newCollector(), newCollector(), newCollector()
	startRun(t, a, ca.deliver, nil)
	startRun(t, b, cb.deliver, nil)
	startRun(t, other, co.deliver, nil)
	waitProbe(t, a, cb)
	waitProbe(t, b, ca)
	waitProbe(t, other, co)

	want := realtime.Frame{Object: "c:two", Version: 1 << 40, Final: true, Data: []byte(`{"status":"approved"}`)}
	if err := a.Publish(context.Background(), want); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	for name, c := range map[string]*collector{"other instance": cb, "publisher": ca} {
		if !eventually(5*time.Second, func() bool { _, ok := c.find(want.Object); return ok }) {
			t.Fatalf("%s: frame not delivered", name)
		}
		got, _ := c.find(want.Object)
		if got.Object != want.Object || got.Version != want.Version || got.Final != want.Final || !bytes.Equal(got.Data, want.Data) {
			t.Fatalf("%s: got %+v, want %+v", name, got, want)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if _, ok := co.find(want.Object); ok {
		t.Fatal("a broker with another prefix received the frame")
	}
	if !a.Connected() || !b.Connected() || a.Reconnects() != 0 {
		t.Fatalf("Connected %v %v, Reconnects %d; want true true 0", a.Connected(), b.Connected(), a.Reconnects())
	}
}

func TestNewURL(t *testing.T) {
	const secret = "s3cr3t-Pa55"
	for _, tc := range []struct {
		url     string
		wantErr string // "" for success
	}{
		{"", "is empty"},
		{"http://:" + secret + "@localhost:6379", "scheme"},
		{"redis://:" + secret + "@host:notaport/0", "not a valid URL"},
		{"redis://:" + secret + "@[::1/0", "not a valid URL"},
		{"redis://:" + secret + "@host:6379/abc", "invalid database"},
		{"redis://:" + secret + "@host:6379/0?" + secret + "=1", "unexpected option"},
		{"redis://" + secret + ":" + secret + "@host:6379/0?bogus=1", "unexpected option"},
		{"redis:///0", "no host"},
		{"redis://:" + secret + "@127.0.0.1:6390/2", ""},
		{"rediss://user:" + secret + "@redis.example.com/1", ""},
	} {
		b, err := New(tc.url, nil)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("New(%q): %v", tc.url, err)
				continue
			}
			_ = b.Close()
			continue
		}
		if err == nil {
			_ = b.Close()
			t.Errorf("New(%q) succeeded, want error %q", tc.url, tc.wantErr)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, Setting) || !strings.Contains(msg, tc.wantErr) {
			t.Errorf("New(%q) error %q: want it to name %s and say %q", tc.url, msg, Setting, tc.wantErr)
		}
		if strings.Contains(msg, secret) {
			t.Errorf("New(%q) error %q contains the password", tc.url, msg)
		}
	}

	b, err := New("redis://:"+secret+"@127.0.0.1:6390/2", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	o := b.client.Options()
	if o.Addr != "127.0.0.1:6390" || o.DB != 2 || o.Password != secret || o.TLSConfig != nil {
		t.Fatalf("options: addr %s db %d tls %v", o.Addr, o.DB, o.TLSConfig != nil)
	}
	tb, err := New("rediss://redis.example.com/1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	if o := tb.client.Options(); o.TLSConfig == nil || o.Addr != "redis.example.com:6379" || o.DB != 1 {
		t.Fatalf("rediss options: addr %s db %d tls %v", o.Addr, o.DB, o.TLSConfig != nil)
	}
}

// silentServer accepts connections and never answers: a hung Redis.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(done)
				return
			}
			conns = append(conns, c) // held open, never read or written
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return "redis://" + l.Addr().String() + "/0"
}

// Publish and Ping never hang on a dead or silent Redis.
func TestDownRedisDoesNotHang(t *testing.T) {
	t.Parallel()
	refused := "redis://127.0.0.1:" + itoa(redistest.FreePort(t)) + "/0"
	for name, url := range map[string]string{"refused": refused, "silent": silentServer(t)} {
		t.Run(name, func(t *testing.T) {
			b := newBroker(t, url, WithPublishTimeout(500*time.Millisecond))
			for i := range 3 {
				start := time.Now()
				err := b.Publish(context.Background(), realtime.Frame{Object: "c:1", Version: 1})
				took := time.Since(start)
				if err == nil {
					t.Fatal("Publish to a down Redis succeeded")
				}
				if took > 900*time.Millisecond {
					t.Fatalf("Publish %d took %v with a 500ms timeout", i, took)
				}
				t.Logf("Publish %d: %v after %v", i, err, took.Round(time.Millisecond))
			}

			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			start := time.Now()
			err := b.Ping(ctx)
			cancel()
			if err == nil || time.Since(start) > 800*time.Millisecond {
				t.Fatalf("Ping: %v after %v", err, time.Since(start))
			}

			// A caller's shorter deadline wins over the publish timeout.
			ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
			start = time.Now()
			err = b.Publish(ctx, realtime.Frame{Object: "c:1", Version: 1})
			cancel()
			if err == nil || time.Since(start) > 400*time.Millisecond {
				t.Fatalf("Publish with a 100ms context: %v after %v", err, time.Since(start))
			}
		})
	}
}

// While Redis cannot be reached, Run keeps trying, resyncs periodically,
// is not Connected, and returns nil at once when its context ends.
func TestRunWhileDown(t *testing.T) {
	t.Parallel()
	for name, url := range map[string]string{
		"refused": "redis://127.0.0.1:" + itoa(redistest.FreePort(t)) + "/0",
		"silent":  silentServer(t),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newBroker(t, url, WithResyncInterval(200*time.Millisecond))
			var resyncs atomic.Int64
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- b.Run(ctx, func(realtime.Frame) { t.Error("frame delivered") }, func() { resyncs.Add(1) })
			}()
			time.Sleep(1100 * time.Millisecond)
			if n := resyncs.Load(); n < 3 || n > 7 {
				t.Errorf("%d resyncs in 1.1s with a 200ms interval", n)
			}
			if b.Connected() {
				t.Error("Connected with no Redis")
			}
			start := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run returned %v", err)
				}
				if took := time.Since(start); took > time.Second {
					t.Errorf("Run took %v to return", took)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
		})
	}
}

// A Run whose Broker is closed cannot go on: it returns an error.
func TestRunAfterClose(t *testing.T) {
	t.Parallel()
	url := testRedisURL(t)
	b := newBroker(t, url, WithPrefix(uniquePrefix()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, func(realtime.Frame) {}, func() {}) }()
	if !eventually(5*time.Second, b.Connected) {
		t.Fatal("not connected")
	}
	_ = b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, errClosedForTest) {
			t.Fatalf("Run returned %v, want a closed error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	if b.Connected() {
		t.Fatal("Connected after Close")
	}
}
