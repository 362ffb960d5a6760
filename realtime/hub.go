package realtime

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero fields of Options.
const (
	DefaultPingInterval = 25 * time.Second
	DefaultPongWait     = 60 * time.Second
	DefaultWriteWait    = 10 * time.Second
)

const (
	numShards      = 32
	loadTimeout    = 10 * time.Second
	resyncWorkers  = 8
	resyncAttempts = 4
	resyncBackoff  = 500 * time.Millisecond
	// A frame the broker refused is published again every
	// republishInterval, for at most republishFor.
	republishInterval = 500 * time.Millisecond
	republishFor      = time.Minute
)

// Options tunes the watch sockets of a Hub. A zero field takes its default.
// Set them before the first call to Serve; they are read by every socket.
type Options struct {
	// PingInterval is the time between pings on an idle socket
	// (DefaultPingInterval).
	PingInterval time.Duration
	// PongWait is how long a socket waits for a pong before it drops the
	// peer (DefaultPongWait). It should exceed PingInterval.
	PongWait time.Duration
	// WriteWait bounds every write to a socket (DefaultWriteWait).
	WriteWait time.Duration
}

// DefaultSafetyResync is how often Run re-reads every watched object from
// the database even while the broker is connected: a frame lost without
// an error (an instance that died between its write and its publish) then
// reaches its watchers late, not never. SetSafetyResync changes it.
const DefaultSafetyResync = 30 * time.Second

// SetSafetyResync sets the interval of the safety re-read (before Run).
func (h *Hub) SetSafetyResync(d time.Duration) { h.safetyResync.Store(int64(d)) }

func (o Options) withDefaults() Options {
	if o.PingInterval <= 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.PongWait <= 0 {
		o.PongWait = DefaultPongWait
	}
	if o.WriteWait <= 0 {
		o.WriteWait = DefaultWriteWait
	}

	return o
}

// Hub holds this instance's watchers, indexed by object key, and connects
// them to the Broker and the Loader.
type Hub struct {
	safetyResync atomic.Int64 // nanoseconds; 0 means DefaultSafetyResync
	// Options tunes the watch sockets; set it before the first Serve.
	Options Options

	broker Broker
	load   Loader
	log    *slog.Logger

	shards [numShards]shard

	mu       sync.Mutex // guards sockets and closing
	sockets  map[*socket]struct{}
	closing  bool
	serving  sync.WaitGroup // one per running Serve
	nsockets atomic.Int64

	stop       chan struct{} // closed by Shutdown
	stopOnce   sync.Once
	base       context.Context // cancelled by Shutdown; bounds socket loads
	cancelBase context.CancelFunc

	resyncMu      sync.Mutex
	resyncRunning bool
	resyncAgain   bool
	resyncs       sync.WaitGroup

	writePool sync.Pool // shared write buffers of every upgraded socket

	republishMu sync.Mutex
	republish   map[string]failedFrame // by object: the newest frame the broker refused
}

type failedFrame struct {
	f     Frame
	since time.Time
}

type shard struct {
	mu   sync.RWMutex
	subs map[string][]*Subscription
}

// NewHub returns a Hub that takes frames from b and reads the truth with
// load. A nil log discards log records.
func NewHub(b Broker, load Loader, log *slog.Logger) *Hub {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Hub{
		broker:    b,
		load:      load,
		log:       log,
		sockets:   make(map[*socket]struct{}),
		stop:      make(chan struct{}),
		republish: make(map[string]failedFrame),
	}
	h.base, h.cancelBase = context.WithCancel(context.Background())
	for i := range h.shards {
		h.shards[i].subs = make(map[string][]*Subscription)
	}
	return h
}

// Run runs the broker until ctx ends and forwards its frames to the
// watchers. When the broker reports a reconnection, Run reloads every watched
// object from the Loader in the background and delivers what is newer than
// what each watcher has. Run returns what the broker's Run returns, once any
// reload in progress has stopped. While it runs, frames the broker refused
// are published again.
func (h *Hub) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	rctx, stop := context.WithCancel(ctx)
	wg.Go(func() { h.republishLoop(rctx) })
	wg.Go(func() {
		every := time.Duration(h.safetyResync.Load())
		if every <= 0 {
			every = DefaultSafetyResync
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
				h.resync(rctx)
			}
		}
	})
	err := h.broker.Run(ctx, h.deliver, func() { h.resync(ctx) })
	stop()
	wg.Wait()
	h.resyncs.Wait()
	return err
}

// Publish sends f through the broker to every instance, this one included.
// The caller must have written the state to the database first. If the
// broker fails, f is still delivered to this instance's watchers and the
// broker's error is returned; Run keeps publishing f again in the
// background until the broker takes it (for up to a minute), since other
// instances that stayed subscribed would not otherwise learn of it (those
// that lost the broker too catch up on their resync).
func (h *Hub) Publish(ctx context.Context, f Frame) error {
	if f.Object == "" {
		return errors.New("realtime: publish: frame without object")
	}
	if err := h.broker.Publish(ctx, f); err != nil {
		h.deliver(f)
		h.republishMu.Lock()
		if old, ok := h.republish[f.Object]; !ok || f.Version >= old.f.Version {
			h.republish[f.Object] = failedFrame{f: f, since: time.Now()}
		}
		h.republishMu.Unlock()
		return err
	}
	return nil
}

// republishLoop publishes the refused frames again until ctx ends. A round
// stops at the first refusal: the broker is still down.
func (h *Hub) republishLoop(ctx context.Context) {
	t := time.NewTicker(republishInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.republishMu.Lock()
		frames := make([]failedFrame, 0, len(h.republish))
		for _, ff := range h.republish {
			frames = append(frames, ff)
		}
		h.republishMu.Unlock()
		for _, ff := range frames {
			if time.Since(ff.since) <= republishFor {
				if err := h.broker.Publish(ctx, ff.f); err != nil {
					break
				}
			}
			h.republishMu.Lock()
			if cur, ok := h.republish[ff.f.Object]; ok && cur.f.Version == ff.f.Version && cur.since.Equal(ff.since) {
				delete(h.republish, ff.f.Object)
			}
			h.republishMu.Unlock()
		}
	}
}

// deliver offers f to every subscription of its object. It never blocks.
func (h *Hub) deliver(f Frame) {
	sh := h.shard(f.Object)
	sh.mu.RLock()
	for _, s := range sh.subs[f.Object] {
		s.offer(f)
	}
	sh.mu.RUnlock()
}

func (h *Hub) shard(object string) *shard {
	// FNV-1a.
	var x uint32 = 2166136261
	for i := 0; i < len(object); i++ {
		x ^= uint32(object[i])
		x *= 16777619
	}
	return &h.shards[x%numShards]
}

// Stopping is closed when Shutdown begins: long-polls waiting on a
// Subscription should answer then with what they have.
func (h *Hub) Stopping() <-chan struct{} { return h.stop }

// Subscribe registers interest in object. Call it BEFORE reading the
// object's state (subscribe-then-read), so that no change can fall between
// the read and the subscription; then offer nothing yourself, just wait on C
// and read Latest. Close the subscription when done.
func (h *Hub) Subscribe(object string) *Subscription {
	return h.subscribe(object, nil)
}

func (h *Hub) subscribe(object string, wake func()) *Subscription {
	s := &Subscription{hub: h, object: object, c: make(chan struct{}, 1), wake: wake}
	sh := h.shard(object)
	sh.mu.Lock()
	sh.subs[object] = append(sh.subs[object], s)
	sh.mu.Unlock()
	return s
}

// watched returns the keys of every object with at least one subscription.
func (h *Hub) watched() []string {
	var keys []string
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		for k := range sh.subs {
			keys = append(keys, k)
		}
		sh.mu.RUnlock()
	}
	return keys
}

func (h *Hub) isWatched(object string) bool {
	sh := h.shard(object)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return len(sh.subs[object]) > 0
}

// Subscription is one watcher's interest in one object. It keeps only the
// newest frame it has received; delivery to it never blocks.
type Subscription struct {
	hub    *Hub
	object string
	c      chan struct{} // 1-buffered, coalescing
	wake   func()        // called after each accepted frame, outside mu

	mu     sync.Mutex
	latest Frame
	has    bool
	closed bool
}

// C is signalled, without blocking and coalescing several frames into one
// signal, when a newer frame has arrived. Read it with Latest. C is never
// closed.
func (s *Subscription) C() <-chan struct{} { return s.c }

// Latest returns the newest frame received since Subscribe, and false if
// none has arrived yet.
func (s *Subscription) Latest() (Frame, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest, s.has
}

// Close removes the subscription from the hub. It is idempotent.
func (s *Subscription) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()

	sh := s.hub.shard(s.object)
	sh.mu.Lock()
	subs := sh.subs[s.object]
	for i, x := range subs {
		if x == s {
			last := len(subs) - 1
			subs[i] = subs[last]
			subs[last] = nil
			subs = subs[:last]
			break
		}
	}
	if len(subs) == 0 {
		delete(sh.subs, s.object)
	} else {
		sh.subs[s.object] = subs
	}
	sh.mu.Unlock()
}

// offer keeps f if it is newer than the latest frame and nothing final came
// before it, and then signals. It reports whether f was kept.
func (s *Subscription) offer(f Frame) bool {
	s.mu.Lock()
	if s.closed || (s.has && (s.latest.Final || f.Version <= s.latest.Version)) {
		s.mu.Unlock()
		return false
	}
	s.latest, s.has = f, true
	s.mu.Unlock()
	select {
	case s.c <- struct{}{}:
	default:
	}
	if s.wake != nil {
		s.wake()
	}
	return true
}

// Wait subscribes to object, loads its state, and returns as soon as a Final
// frame is known, or when ctx ends or the hub shuts down, with the newest
// frame known (check its Final). The error is non-nil only when the load
// fails. It serves the RP's long-poll GET /v1/challenges/{id}?wait=N.
func (h *Hub) Wait(ctx context.Context, object string) (Frame, error) {
	sub := h.Subscribe(object)
	defer sub.Close()
	f, err := h.load(ctx, object)
	if err != nil {
		return Frame{}, err
	}
	f.Object = object
	sub.offer(f)
	for {
		latest, _ := sub.Latest()
		if latest.Final {
			return latest, nil
		}
		select {
		case <-sub.c:
		case <-ctx.Done():
			return latest, nil
		case <-h.stop:
			return latest, nil
		}
	}
}

// WaitChange subscribes to object and reports true when any frame for it
// arrives after the call, or false when ctx ends or the hub shuts down. It
// serves the device's pending-list long-poll on "u:<user>" keys.
//
// It sees only frames that arrive after it has subscribed: a caller that reads
// the list first and then calls WaitChange can miss a change made in between
// and wait for nothing. Such a caller should use Subscribe, read, and then
// wait on C instead. A resync may wake it without a real change (a spurious
// true), never the other way round.
func (h *Hub) WaitChange(ctx context.Context, object string) bool {
	sub := h.Subscribe(object)
	defer sub.Close()
	select {
	case <-sub.c:
		return true
	case <-ctx.Done():
		return false
	case <-h.stop:
		return false
	}
}

// resync reloads every watched object in the background. A request that
// comes while a reload runs makes it run once more afterwards, since the
// running one may have read some objects before the reconnection.
func (h *Hub) resync(ctx context.Context) {
	h.resyncMu.Lock()
	if h.resyncRunning {
		h.resyncAgain = true
		h.resyncMu.Unlock()
		return
	}
	h.resyncRunning = true
	h.resyncs.Add(1)
	h.resyncMu.Unlock()

	go func() {
		defer h.resyncs.Done()
		for {
			h.reloadAll(ctx)
			h.resyncMu.Lock()
			if !h.resyncAgain || ctx.Err() != nil {
				h.resyncRunning, h.resyncAgain = false, false
				h.resyncMu.Unlock()
				return
			}
			h.resyncAgain = false
			h.resyncMu.Unlock()
		}
	}()
}

// reloadAll loads every watched object and delivers the result, retrying
// failed loads with backoff while the object is still watched.
func (h *Hub) reloadAll(ctx context.Context) {
	start := time.Now()
	keys := h.watched()
	total := len(keys)
	backoff := resyncBackoff
	for attempt := 1; len(keys) > 0; attempt++ {
		keys = h.reload(ctx, keys)
		if len(keys) == 0 || attempt == resyncAttempts || ctx.Err() != nil {
			break
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		backoff *= 2
		still := keys[:0]
		for _, k := range keys {
			if h.isWatched(k) {
				still = append(still, k)
			}
		}
		keys = still
	}
	if len(keys) > 0 && ctx.Err() == nil {
		h.log.Warn("realtime: resync could not reload every object",
			"objects", total, "failed", len(keys))
		return
	}
	h.log.Info("realtime: resynced", "objects", total, "elapsed", time.Since(start))
}

// reload loads keys with a few workers and returns those that failed.
func (h *Hub) reload(ctx context.Context, keys []string) (failed []string) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next atomic.Int64
	)
	workers := min(resyncWorkers, len(keys))
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(keys) || ctx.Err() != nil {
					return
				}
				lctx, cancel := context.WithTimeout(ctx, loadTimeout)
				f, err := h.load(lctx, keys[i])
				cancel()
				if err != nil {
					h.log.Debug("realtime: resync load failed", "object", keys[i], "err", err)
					mu.Lock()
					failed = append(failed, keys[i])
					mu.Unlock()
					continue
				}
				f.Object = keys[i]
				h.deliver(f)
			}
		})
	}
	wg.Wait()
	return failed
}
