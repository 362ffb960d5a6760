package realtime

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// A frame that no instance ever published (its writer died between the
// database write and the publish) still reaches a watcher through the
// periodic re-read of every watched object.
func TestSafetyResyncFindsUnpublishedChange(t *testing.T) {
	var mu sync.Mutex
	state := Frame{Object: "c:x", Version: 1, Data: []byte(`{"status":"pending"}`)}
	load := func(ctx context.Context, object string) (Frame, error) {
		mu.Lock()
		defer mu.Unlock()
		return state, nil
	}
	h := NewHub(NewMemoryBroker(), load, slog.New(slog.DiscardHandler))
	h.SetSafetyResync(50 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Run(ctx)
	sub := h.Subscribe("c:x")
	defer sub.Close()

	mu.Lock()
	state = Frame{Object: "c:x", Version: 2, Final: true, Data: []byte(`{"status":"approved"}`)}
	mu.Unlock()
	deadline := time.After(5 * time.Second)
	for {
		if f, ok := sub.Latest(); ok && f.Final && f.Version == 2 {
			return
		}
		select {
		case <-sub.C():
		case <-deadline:
			t.Fatal("the unpublished final state never reached the subscription")
		}
	}
}
