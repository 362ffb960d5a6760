package realtime

import (
	"context"
	"sync"
)

// memoryBacklog bounds the frames a MemoryBroker keeps while no Run is live.
const memoryBacklog = 1 << 16

// MemoryBroker is an in-process Broker for a single instance (and for tests).
//
// Publish appends the frame to the unbounded queue of every Run that is
// running and returns at once; each Run delivers its queue in order from its
// own goroutine, so a live Run never loses a frame and a slow deliver never
// blocks a publisher. Several concurrent Runs each receive every frame, like
// several instances sharing one Redis.
//
// Frames published while no Run is live (before the first starts, or between
// Runs) are kept, up to 65,536, and handed to the next Run that starts;
// frames beyond that are discarded, and that Run then calls resync once it
// has started. Frames still queued when a Run's context ends are discarded
// with it. Otherwise Run never calls resync.
type MemoryBroker struct {
	mu      sync.Mutex
	runs    map[*memoryRun]struct{}
	backlog []Frame // published while no Run was live
	missed  bool    // the backlog overflowed
}

type memoryRun struct {
	mu    sync.Mutex
	queue []Frame
	wake  chan struct{} // 1-buffered: "the queue is not empty"
}

// NewMemoryBroker returns a MemoryBroker with no Run yet.
func NewMemoryBroker() *MemoryBroker {
	return &MemoryBroker{runs: make(map[*memoryRun]struct{})}
}

// Publish queues f for every running Run, or for the next one if none is
// running. It fails only if ctx has ended.
func (b *MemoryBroker) Publish(ctx context.Context, f Frame) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.runs) == 0 {
		if len(b.backlog) < memoryBacklog {
			b.backlog = append(b.backlog, f)
		} else {
			b.missed = true
		}
		return nil
	}
	for r := range b.runs {
		r.mu.Lock()
		r.queue = append(r.queue, f)
		r.mu.Unlock()
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// Run delivers, in publication order, the frames kept while no Run was live
// and then every frame published until ctx ends, and returns nil.
func (b *MemoryBroker) Run(ctx context.Context, deliver func(Frame), resync func()) error {
	r := &memoryRun{wake: make(chan struct{}, 1)}
	b.mu.Lock()
	b.runs[r] = struct{}{}
	if len(b.backlog) > 0 {
		r.queue, b.backlog = b.backlog, nil
		r.wake <- struct{}{}
	}
	missed := b.missed
	b.missed = false
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.runs, r)
		b.mu.Unlock()
	}()
	if missed && resync != nil {
		resync()
	}

	var batch []Frame
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		}
		r.mu.Lock()
		batch, r.queue = r.queue, batch[:0]
		r.mu.Unlock()
		for i := range batch {
			deliver(batch[i])
			batch[i] = Frame{} // release Data
		}
	}
}
