package realtime

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// refusingBroker refuses publishes while refuse is set, like a Redis client
// whose connections are failing while other instances stay subscribed.
type refusingBroker struct {
	*MemoryBroker
	refuse atomic.Bool
}

func (b *refusingBroker) Publish(ctx context.Context, f Frame) error {
	if b.refuse.Load() {
		return errors.New("broker refused")
	}
	return b.MemoryBroker.Publish(ctx, f)
}

// A frame whose publish failed reaches the other instances once the broker
// takes frames again, although they never lost it (so never resync).
func TestRefusedFrameIsPublishedAgain(t *testing.T) {
	shared := NewMemoryBroker()
	db := newFakeDB()
	pub := &refusingBroker{MemoryBroker: shared}
	a := newTestHub(t, db, pub, Options{})
	b := newTestHub(t, db, shared, Options{})
	onA, onB := a.Subscribe("c:1"), b.Subscribe("c:1")
	defer onA.Close()
	defer onB.Close()

	pub.refuse.Store(true)
	db.put(fr("c:1", 2, true))
	if err := a.Publish(context.Background(), fr("c:1", 2, true)); err == nil {
		t.Fatal("Publish hid the broker's error")
	}
	eventually(t, "the frame on the publishing instance", func() bool { return hubHas(a, "c:1", 2) })
	time.Sleep(2 * republishInterval)
	if hubHas(b, "c:1", 2) {
		t.Fatal("the other instance got a frame the broker refused")
	}
	pub.refuse.Store(false)
	eventually(t, "the refused frame on the other instance", func() bool { return hubHas(b, "c:1", 2) })
	a.republishMu.Lock()
	left := len(a.republish)
	a.republishMu.Unlock()
	if left != 0 {
		t.Fatalf("%d frames still queued for republishing", left)
	}
}
