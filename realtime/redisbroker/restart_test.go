package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/realtime"
	"github.com/clicktopurchase/approvald/realtime/redisbroker/redistest"
)

// mapDB is the test's "database", the truth the hub's Loader reads.
type mapDB struct {
	mu     sync.Mutex
	frames map[string]realtime.Frame
}

func newMapDB() *mapDB { return &mapDB{frames: make(map[string]realtime.Frame)} }

func (d *mapDB) put(f realtime.Frame) {
	d.mu.Lock()
	d.frames[f.Object] = f
	d.mu.Unlock()
}

func (d *mapDB) load(_ context.Context, object string) (realtime.Frame, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f, ok := d.frames[object]
	if !ok {
		return realtime.Frame{}, errors.New("not found")
	}
	return f, nil
}

func frame(object string, v int64, final bool) realtime.Frame {
	return realtime.Frame{Object: object, Version: v, Final: final,
		Data: fmt.Appendf(nil, `{"id":%q,"v":%d,"final":%v}`, object, v, final)}
}

// countingBroker counts the resync calls of its Run, and those made while
// the broker is subscribed (after a resubscription, not the periodic ones).
type countingBroker struct {
	*Broker
	resyncs   atomic.Int64
	resyncsUp atomic.Int64
}

func (c *countingBroker) Run(ctx context.Context, deliver func(realtime.Frame), resync func()) error {
	return c.Broker.Run(ctx, deliver, func() {
		c.resyncs.Add(1)
		if c.Broker.Connected() {
			c.resyncsUp.Add(1)
		}
		resync()
	})
}

// startHub runs a hub over b and db until the test ends.
func startHub(t *testing.T, b realtime.Broker, db *mapDB) *realtime.Hub {
	t.Helper()
	hub := realtime.NewHub(b, db.load, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hub.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Hub.Run returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Hub.Run did not return")
		}
	})
	return hub
}

// waitFrame waits up to d for sub to hold a frame that satisfies ok.
func waitFrame(sub *realtime.Subscription, d time.Duration, ok func(realtime.Frame) bool) (realtime.Frame, bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		if f, has := sub.Latest(); has && ok(f) {
			return f, true
		}
		select {
		case <-sub.C():
		case <-timer.C:
			f, has := sub.Latest()
			return f, has && ok(f)
		}
	}
}

// Redis is killed and restarted under a running hub: the broker notices,
// resyncs periodically while Redis is down (so a watcher gets a decision
// made meanwhile from the database), publishing fails fast, and after the
// restart the broker resubscribes, resyncs, and fan-out is fast again.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	b := newBroker(t, srv.URL(), WithPrefix(uniquePrefix()))
	cb := &countingBroker{Broker: b}
	db := newMapDB()
	hub := startHub(t, cb, db)
	if !eventually(5*time.Second, b.Connected) {
		t.Fatal("broker did not subscribe")
	}
	if !eventually(time.Second, func() bool { return cb.resyncsUp.Load() == 1 }) {
		t.Fatalf("%d resyncs after the first subscription, want 1", cb.resyncsUp.Load())
	}

	db.put(frame("c:x", 1, false))
	x := hub.Subscribe("c:x")
	defer x.Close()
	// The fast path: a change published through Redis reaches the watcher.
	db.put(frame("c:x", 2, false))
	if err := b.Publish(context.Background(), frame("c:x", 2, false)); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if _, ok := waitFrame(x, 2*time.Second, func(f realtime.Frame) bool { return f.Version == 2 }); !ok {
		t.Fatal("frame published through Redis not delivered")
	}

	srv.Kill()
	killed := time.Now()
	if !eventually(5*time.Second, func() bool { return !b.Connected() }) {
		t.Fatal("still Connected 5s after Redis was killed")
	}
	t.Logf("Connected false %v after the kill", time.Since(killed).Round(time.Millisecond))

	start := time.Now()
	if err := b.Publish(context.Background(), frame("c:x", 3, false)); err == nil {
		t.Fatal("Publish with Redis down succeeded")
	} else if took := time.Since(start); took > DefaultPublishTimeout+300*time.Millisecond {
		t.Fatalf("Publish with Redis down took %v", took)
	} else {
		t.Logf("Publish with Redis down: %v after %v", err, took.Round(time.Millisecond))
	}

	// The decision is made while Redis is down: only the database has it.
	decided := time.Now()
	db.put(frame("c:x", 4, true))
	f, ok := waitFrame(x, 2*DefaultResyncInterval+2*time.Second, func(f realtime.Frame) bool { return f.Final })
	if !ok {
		t.Fatalf("watcher did not get the final state while Redis was down; latest %+v", f)
	}
	t.Logf("final state reached the watcher %v after the decision, with Redis down", time.Since(decided).Round(time.Millisecond))
	before := cb.resyncs.Load()
	if !eventually(2*DefaultResyncInterval+time.Second, func() bool { return cb.resyncs.Load() >= before+2 }) {
		t.Fatalf("resync not called periodically while down: %d calls since the kill", cb.resyncs.Load())
	}
	if n := cb.resyncsUp.Load(); n != 1 {
		t.Fatalf("%d resyncs counted as connected while Redis was down, want the first one only", n-1)
	}

	db.put(frame("c:y", 1, false))
	y := hub.Subscribe("c:y")
	defer y.Close()

	srv.Restart()
	restarted := time.Now()
	if !eventually(10*time.Second, b.Connected) {
		t.Fatal("broker did not resubscribe after the restart")
	}
	t.Logf("resubscribed %v after the restart", time.Since(restarted).Round(time.Millisecond))
	if !eventually(5*time.Second, func() bool { return cb.resyncsUp.Load() >= 2 }) {
		t.Fatal("no resync after the resubscription")
	}
	if n := b.Reconnects(); n != 1 {
		t.Fatalf("Reconnects = %d, want 1", n)
	}

	// Fan-out is fast again: a frame that only Redis carries (the database
	// still says version 1, so no resync can produce it).
	start = time.Now()
	if err := b.Publish(context.Background(), frame("c:y", 2, true)); err != nil {
		t.Fatalf("Publish after the restart: %v", err)
	}
	if _, ok := waitFrame(y, time.Second, func(f realtime.Frame) bool { return f.Version == 2 }); !ok {
		t.Fatal("frame published after the restart not delivered within 1s")
	}
	t.Logf("frame published after the restart delivered in %v", time.Since(start).Round(time.Microsecond))
}

// With periodic resync out of the way, the resync after resubscription
// alone brings a decision made while Redis was down.
func TestRedisRestartResyncsOnResubscribe(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	b := newBroker(t, srv.URL(), WithPrefix(uniquePrefix()), WithResyncInterval(time.Hour))
	db := newMapDB()
	hub := startHub(t, b, db)
	if !eventually(5*time.Second, b.Connected) {
		t.Fatal("broker did not subscribe")
	}
	db.put(frame("c:z", 1, false))
	z := hub.Subscribe("c:z")
	defer z.Close()

	srv.Kill()
	if !eventually(5*time.Second, func() bool { return !b.Connected() }) {
		t.Fatal("still Connected after Redis was killed")
	}
	db.put(frame("c:z", 2, true))
	if f, ok := waitFrame(z, time.Second, func(f realtime.Frame) bool { return f.Final }); ok {
		t.Fatalf("final frame %+v arrived with Redis down and no periodic resync", f)
	}
	srv.Restart()
	restarted := time.Now()
	if _, ok := waitFrame(z, 10*time.Second, func(f realtime.Frame) bool { return f.Final }); !ok {
		t.Fatal("final state not delivered after the resubscription")
	}
	t.Logf("final state delivered %v after the restart", time.Since(restarted).Round(time.Millisecond))
	if b.Reconnects() != 1 {
		t.Fatalf("Reconnects = %d, want 1", b.Reconnects())
	}
}

// A Run that starts while Redis is down resyncs periodically, and once it
// can subscribe it resyncs once more.
func TestRedisDownAtStart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	srv.Kill()
	b := newBroker(t, srv.URL(), WithPrefix(uniquePrefix()), WithResyncInterval(300*time.Millisecond))
	cb := &countingBroker{Broker: b}
	c := newCollector()
	startRun(t, cb, c.deliver, func() {})
	if !eventually(3*time.Second, func() bool { return cb.resyncs.Load() >= 2 }) {
		t.Fatal("no periodic resync while Redis is down at start")
	}
	srv.Restart()
	if !eventually(10*time.Second, b.Connected) {
		t.Fatal("did not subscribe once Redis came up")
	}
	if !eventually(5*time.Second, func() bool { return cb.resyncsUp.Load() >= 1 }) {
		t.Fatal("no resync after the first subscription")
	}
	if b.Reconnects() != 0 {
		t.Fatalf("Reconnects = %d after the first subscription, want 0", b.Reconnects())
	}
	waitProbe(t, b, c)
}
