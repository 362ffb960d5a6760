package realtime

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestMemoryBroker(t *testing.T) {
	BrokerSuite(t, func(t *testing.T) Broker { return NewMemoryBroker() })
}

func TestMemoryBrokerKeepsFramesUntilRun(t *testing.T) {
	b := NewMemoryBroker()
	for v := int64(1); v <= 3; v++ {
		if err := b.Publish(context.Background(), Frame{Object: "c:1", Version: v}); err != nil {
			t.Fatalf("Publish without Run: %v", err)
		}
	}
	r := startSuiteRun(t, b)
	if err := b.Publish(context.Background(), Frame{Object: "c:1", Version: 4}); err != nil {
		t.Fatal(err)
	}
	for i, f := range r.waitFor(t, "c:1", 4) {
		if f.Version != int64(i+1) {
			t.Fatalf("frame %d has version %d", i, f.Version)
		}
	}
}

func TestMemoryBrokerBacklogOverflowResyncs(t *testing.T) {
	b := NewMemoryBroker()
	for v := range int64(memoryBacklog + 10) {
		_ = b.Publish(context.Background(), Frame{Object: "c:1", Version: v})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var n atomic.Int64
	resynced := make(chan struct{})
	go func() { _ = b.Run(ctx, func(Frame) { n.Add(1) }, func() { close(resynced) }) }()
	select {
	case <-resynced:
	case <-time.After(5 * time.Second):
		t.Fatal("no resync after frames were discarded")
	}
	for n.Load() != memoryBacklog {
		time.Sleep(time.Millisecond)
	}
}

func TestMemoryBrokerFansOutToEveryRun(t *testing.T) {
	b := NewMemoryBroker()
	r1 := startSuiteRun(t, b)
	r2 := startSuiteRun(t, b)
	for v := int64(1); v <= 100; v++ {
		if err := b.Publish(context.Background(), Frame{Object: "c:x", Version: v}); err != nil {
			t.Fatal(err)
		}
	}
	r1.waitFor(t, "c:x", 100)
	r2.waitFor(t, "c:x", 100)
}

func TestMemoryBrokerPublishHonoursContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if err := NewMemoryBroker().Publish(ctx, Frame{Object: "c:1"}); err == nil {
		t.Fatal("Publish with an ended context succeeded")
	}
}
