package redisbroker

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/realtime"
	"github.com/clicktopurchase/approvald/realtime/redisbroker/redistest"
)

// testRedisURL returns the URL of the shared test Redis, skipping the test
// if it does not answer.
func testRedisURL(t testing.TB) string {
	t.Helper()
	return redistest.URL(t, func(u string) (redistest.Client, error) { return New(u, nil) })
}

// uniquePrefix returns a channel prefix that no other test uses.
func uniquePrefix() string {
	return fmt.Sprintf("approvald-test-%016x:", rand.Uint64())
}

// newBroker returns a broker closed when the test ends.
func newBroker(t testing.TB, url string, opts ...Option) *Broker {
	t.Helper()
	b, err := New(url, testLogger(t), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// testLogger logs to stderr when APPROVALD_TEST_LOG=1, else discards.
func testLogger(testing.TB) *slog.Logger {
	if os.Getenv("APPROVALD_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// startRun runs b.Run until the test ends and checks that it returns nil.
func startRun(t testing.TB, b realtime.Broker, deliver func(realtime.Frame), resync func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, deliver, resync) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
}

// eventually waits up to d for cond, polling.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// collector records delivered frames.
type collector struct {
	mu     sync.Mutex
	frames []realtime.Frame
	more   chan struct{}
}

func newCollector() *collector { return &collector{more: make(chan struct{}, 1)} }

func (c *collector) deliver(f realtime.Frame) {
	c.mu.Lock()
	c.frames = append(c.frames, f)
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

// find returns the first delivered frame of object, if any.
func (c *collector) find(object string) (realtime.Frame, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if f.Object == object {
			return f, true
		}
	}
	return realtime.Frame{}, false
}

// waitProbe publishes probes with pub until one reaches c: a Run may
// need a moment to subscribe.
func waitProbe(t testing.TB, pub *Broker, c *collector) {
	t.Helper()
	obj := "probe:" + uniquePrefix()
	ok := eventually(10*time.Second, func() bool {
		_ = pub.Publish(context.Background(), realtime.Frame{Object: obj, Version: 1})
		select {
		case <-c.more:
		case <-time.After(50 * time.Millisecond):
		}
		_, ok := c.find(obj)
		return ok
	})
	if !ok {
		t.Fatal("no probe frame reached Run")
	}
}
