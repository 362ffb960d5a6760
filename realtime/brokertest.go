package realtime

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BrokerSuite is the contract every Broker implementation must pass. It runs
// its cases as subtests; newBroker returns a fresh broker for each case (and
// registers its own cleanup with t). Objects are prefixed with a random key,
// so brokers of several cases may share one server.
func BrokerSuite(t *testing.T, newBroker func(t *testing.T) Broker) {
	t.Run("DeliversToRun", func(t *testing.T) {
		b := newBroker(t)
		r := startSuiteRun(t, b)
		want := Frame{Object: r.prefix + "c:1", Version: 7, Final: true, Data: []byte(`{"type":"challenge","status":"approved"}`)}
		if err := b.Publish(context.Background(), want); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		got := r.waitFor(t, want.Object, 1)
		if len(got) != 1 || got[0].Object != want.Object || got[0].Version != want.Version ||
			got[0].Final != want.Final || !bytes.Equal(got[0].Data, want.Data) {
			t.Fatalf("delivered %+v, want exactly %+v", got, want)
		}
	})

	t.Run("OrderPerPublisher", func(t *testing.T) {
		b := newBroker(t)
		r := startSuiteRun(t, b)
		const n = 500
		obj := r.prefix + "c:ordered"
		for v := int64(1); v <= n; v++ {
			if err := b.Publish(context.Background(), Frame{Object: obj, Version: v, Data: []byte(fmt.Sprint(v))}); err != nil {
				t.Fatalf("Publish %d: %v", v, err)
			}
		}
		got := r.waitFor(t, obj, n)
		for i, f := range got {
			if f.Version != int64(i+1) || string(f.Data) != fmt.Sprint(i+1) {
				t.Fatalf("frame %d has version %d data %q: out of order", i, f.Version, f.Data)
			}
		}
	})

	t.Run("ConcurrentPublishers", func(t *testing.T) {
		b := newBroker(t)
		r := startSuiteRun(t, b)
		const publishers, n = 16, 200
		var wg sync.WaitGroup
		errs := make(chan error, publishers)
		for p := range publishers {
			wg.Go(func() {
				obj := fmt.Sprintf("%sc:%d", r.prefix, p)
				for v := int64(1); v <= n; v++ {
					if err := b.Publish(context.Background(), Frame{Object: obj, Version: v}); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("Publish: %v", err)
		}
		for p := range publishers {
			obj := fmt.Sprintf("%sc:%d", r.prefix, p)
			got := r.waitFor(t, obj, n)
			for i, f := range got {
				if f.Version != int64(i+1) {
					t.Fatalf("%s: frame %d has version %d (lost or reordered)", obj, i, f.Version)
				}
			}
		}
	})

	t.Run("RunReturnsWhenContextEnds", func(t *testing.T) {
		b := newBroker(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- b.Run(ctx, func(Frame) {}, func() {}) }()
		time.Sleep(20 * time.Millisecond)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run returned %v after its context ended, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
	})
}

// suiteRun collects what a running Broker.Run delivers.
type suiteRun struct {
	prefix string
	mu     sync.Mutex
	frames map[string][]Frame
	more   chan struct{} // 1-buffered: something arrived
}

const suiteWait = 10 * time.Second

// startSuiteRun starts b.Run until the test ends, and returns once a probe
// frame has gone through (a broker may need time to subscribe).
func startSuiteRun(t *testing.T, b Broker) *suiteRun {
	t.Helper()
	var key [8]byte
	_, _ = rand.Read(key[:])
	r := &suiteRun{
		prefix: "suite-" + hex.EncodeToString(key[:]) + "-",
		frames: make(map[string][]Frame),
		more:   make(chan struct{}, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, r.deliver, func() {}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(suiteWait):
			t.Error("Run did not return after its context ended")
		}
	})

	probe := r.prefix + "probe"
	deadline := time.Now().Add(suiteWait)
	for v := int64(1); ; v++ {
		if err := b.Publish(context.Background(), Frame{Object: probe, Version: v}); err != nil {
			t.Fatalf("Publish probe: %v", err)
		}
		if r.waitUntil(20*time.Millisecond, func() bool { return len(r.frames[probe]) > 0 }) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatal("no frame reached Run")
		}
	}
}

func (r *suiteRun) deliver(f Frame) {
	r.mu.Lock()
	r.frames[f.Object] = append(r.frames[f.Object], f)
	r.mu.Unlock()
	select {
	case r.more <- struct{}{}:
	default:
	}
}

// waitUntil waits up to d for cond, evaluated under r.mu.
func (r *suiteRun) waitUntil(d time.Duration, cond func() bool) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-r.more:
		case <-timer.C:
			r.mu.Lock()
			defer r.mu.Unlock()
			return cond()
		}
	}
}

// waitFor waits for n frames of object, then a little more to catch
// duplicates, and returns them all.
func (r *suiteRun) waitFor(t *testing.T, object string, n int) []Frame {
	t.Helper()
	if !r.waitUntil(suiteWait, func() bool { return len(r.frames[object]) >= n }) {
		r.mu.Lock()
		got := len(r.frames[object])
		r.mu.Unlock()
		t.Fatalf("%s: %d frames delivered, want %d", object, got, n)
	}
	time.Sleep(20 * time.Millisecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	got := append([]Frame(nil), r.frames[object]...)
	if len(got) != n {
		t.Fatalf("%s: %d frames delivered, want %d", object, len(got), n)
	}
	return got
}
