package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

var errNotFound = errors.New("not found")

// fakeDB is the truth for the tests.
type fakeDB struct {
	mu     sync.Mutex
	frames map[string]Frame
	hook   func(object string) // runs during a load, after the state was read
	fail   bool
	loads  atomic.Int64
}

func newFakeDB() *fakeDB { return &fakeDB{frames: make(map[string]Frame)} }

func (d *fakeDB) Load(ctx context.Context, object string) (Frame, error) {
	d.loads.Add(1)
	d.mu.Lock()
	f, ok := d.frames[object]
	hook, fail := d.hook, d.fail
	d.mu.Unlock()
	if hook != nil {
		hook(object)
	}
	if fail {
		return Frame{}, errors.New("database down")
	}
	if !ok {
		return Frame{}, errNotFound
	}
	return f, nil
}

func (d *fakeDB) put(f Frame) {
	d.mu.Lock()
	d.frames[f.Object] = f
	d.mu.Unlock()
}

type state struct {
	ID    string `json:"id"`
	V     int64  `json:"v"`
	Final bool   `json:"final"`
}

func fr(object string, v int64, final bool) Frame {
	data, _ := json.Marshal(state{ID: object, V: v, Final: final})
	return Frame{Object: object, Version: v, Final: final, Data: data}
}

// change writes f to the database and publishes it, as the service does.
func change(t testing.TB, h *Hub, db *fakeDB, f Frame) {
	t.Helper()
	db.put(f)
	if err := h.Publish(context.Background(), f); err != nil {
		t.Errorf("Publish: %v", err) // may run outside the test goroutine
	}
}

// newTestHub returns a running hub over b (a MemoryBroker if nil).
func newTestHub(t testing.TB, db *fakeDB, b Broker, opts Options) *Hub {
	t.Helper()
	if b == nil {
		b = NewMemoryBroker()
	}
	h := NewHub(b, db.Load, nil)
	h.Options = opts
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.Run(ctx)
	}()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		h.Shutdown(sctx)
		cancel()
		<-done
	})
	return h
}

// serveWatch returns a server whose sockets watch the object in ?o=.
func serveWatch(t testing.TB, h *Hub) *httptest.Server {
	t.Helper()
	up := h.Upgrader(nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		h.Serve(conn, r.URL.Query().Get("o"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func dial(t testing.TB, srv *httptest.Server, object string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/?o="+object, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", object, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func readState(t testing.TB, c *websocket.Conn) state {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, data, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.TextMessage {
		t.Fatalf("message type %d, want text", typ)
	}
	var s state
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("frame %q: %v", data, err)
	}
	return s
}

func expectState(t testing.TB, c *websocket.Conn, object string, v int64, final bool) {
	t.Helper()
	want := state{ID: object, V: v, Final: final}
	if got := readState(t, c); got != want {
		t.Fatalf("got frame %+v, want %+v", got, want)
	}
}

func expectClose(t testing.TB, c *websocket.Conn, code int) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, data, err := c.ReadMessage()
	if err == nil {
		t.Fatalf("got frame %q, want close %d", data, code)
	}
	if !websocket.IsCloseError(err, code) {
		t.Fatalf("got %v, want close %d", err, code)
	}
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// hubHas reports whether a subscription of object holds version v.
func hubHas(h *Hub, object string, v int64) bool {
	sh := h.shard(object)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	for _, s := range sh.subs[object] {
		if f, ok := s.Latest(); ok && f.Version == v {
			return true
		}
	}
	return false
}

func TestSubscriptionKeepsNewestAndCoalesces(t *testing.T) {
	h := NewHub(NewMemoryBroker(), newFakeDB().Load, nil)
	sub := h.Subscribe("c:1")
	if _, ok := sub.Latest(); ok {
		t.Fatal("Latest before any frame reports a frame")
	}
	for _, f := range []Frame{fr("c:1", 2, false), fr("c:1", 1, false), fr("c:1", 3, false), fr("c:2", 9, false)} {
		h.deliver(f)
	}
	<-sub.C()
	select {
	case <-sub.C():
		t.Fatal("several frames gave several signals")
	default:
	}
	if f, _ := sub.Latest(); f.Version != 3 {
		t.Fatalf("Latest version %d, want 3", f.Version)
	}
	h.deliver(fr("c:1", 4, true))
	h.deliver(fr("c:1", 5, false)) // after Final: ignored
	if f, _ := sub.Latest(); f.Version != 4 || !f.Final {
		t.Fatalf("Latest %+v, want the final version 4", f)
	}
	sub.Close()
	sub.Close()
	if h.isWatched("c:1") {
		t.Fatal("closed subscription still indexed")
	}
}

func TestServeFirstFrameNewerForwardedOlderDropped(t *testing.T) {
	db := newFakeDB()
	h := newTestHub(t, db, nil, Options{})
	srv := serveWatch(t, h)
	db.put(fr("c:1", 1, false))
	c := dial(t, srv, "c:1")
	expectState(t, c, "c:1", 1, false)

	change(t, h, db, fr("c:1", 3, false))
	expectState(t, c, "c:1", 3, false)

	// Older and equal versions are dropped: the next frame is 4.
	_ = h.Publish(context.Background(), fr("c:1", 2, false))
	_ = h.Publish(context.Background(), fr("c:1", 3, false))
	change(t, h, db, fr("c:1", 4, false))
	expectState(t, c, "c:1", 4, false)

	// Final, then nothing but the close, even with a newer frame behind it.
	change(t, h, db, fr("c:1", 5, true))
	_ = h.Publish(context.Background(), fr("c:1", 6, false))
	expectState(t, c, "c:1", 5, true)
	expectClose(t, c, websocket.CloseNormalClosure)
	eventually(t, "socket count 0", func() bool { return h.Sockets() == 0 })
}

func TestServeFramesFromOtherInstances(t *testing.T) {
	db := newFakeDB()
	b := NewMemoryBroker()
	h := newTestHub(t, db, b, Options{})
	srv := serveWatch(t, h)
	db.put(fr("e:1", 1, false))
	c := dial(t, srv, "e:1")
	expectState(t, c, "e:1", 1, false)
	// Another instance publishes: the frame comes through the broker.
	db.put(fr("e:1", 2, true))
	if err := b.Publish(context.Background(), fr("e:1", 2, true)); err != nil {
		t.Fatal(err)
	}
	expectState(t, c, "e:1", 2, true)
	expectClose(t, c, websocket.CloseNormalClosure)
}

func TestServeAlreadyFinal(t *testing.T) {
	db := newFakeDB()
	h := newTestHub(t, db, nil, Options{})
	srv := serveWatch(t, h)
	db.put(fr("c:done", 4, true))
	c := dial(t, srv, "c:done")
	expectState(t, c, "c:done", 4, true)
	expectClose(t, c, websocket.CloseNormalClosure)
}

func TestServeSubscribeThenRead(t *testing.T) {
	db := newFakeDB()
	h := newTestHub(t, db, nil, Options{})
	srv := serveWatch(t, h)
	db.put(fr("c:race", 1, false))
	var once sync.Once
	// The decision lands after the load read the state but before it
	// returned: its frame reaches the hub during the load, and the load
	// returns the stale state.
	db.hook = func(object string) {
		once.Do(func() {
			change(t, h, db, fr("c:race", 2, true))
			for !hubHas(h, "c:race", 2) {
				time.Sleep(time.Millisecond)
			}
		})
	}
	c := dial(t, srv, "c:race")
	expectState(t, c, "c:race", 2, true)
	expectClose(t, c, websocket.CloseNormalClosure)
}

func TestServeLoadFailureCloses1011(t *testing.T) {
	db := newFakeDB()
	db.fail = true
	h := newTestHub(t, db, nil, Options{})
	srv := serveWatch(t, h)
	c := dial(t, srv, "c:1")
	expectClose(t, c, websocket.CloseInternalServerErr)
}

// dropBroker loses published frames while drop is set, like a broker whose
// connection broke, and calls resync when told it reconnected.
type dropBroker struct {
	mem       *MemoryBroker
	drop      atomic.Bool
	dropped   atomic.Int64
	reconnect chan struct{}
}

func (b *dropBroker) Publish(ctx context.Context, f Frame) error {
	if b.drop.Load() {
		b.dropped.Add(1)
		return nil
	}
	return b.mem.Publish(ctx, f)
}

func (b *dropBroker) Run(ctx context.Context, deliver func(Frame), resync func()) error {
	done := make(chan error, 1)
	go func() { done <- b.mem.Run(ctx, deliver, nil) }()
	for {
		select {
		case <-ctx.Done():
			return <-done
		case <-b.reconnect:
			b.drop.Store(false)
			resync()
		}
	}
}

func TestResyncDeliversWhatTheBrokerDropped(t *testing.T) {
	db := newFakeDB()
	b := &dropBroker{mem: NewMemoryBroker(), reconnect: make(chan struct{})}
	h := newTestHub(t, db, b, Options{})
	srv := serveWatch(t, h)
	db.put(fr("c:1", 1, false))
	db.put(fr("c:2", 1, false))
	c1 := dial(t, srv, "c:1")
	c2 := dial(t, srv, "c:2")
	expectState(t, c1, "c:1", 1, false)
	expectState(t, c2, "c:2", 1, false)

	// Another instance decides c:1 while this one's broker link is down.
	b.drop.Store(true)
	db.put(fr("c:1", 2, true))
	if err := b.Publish(context.Background(), fr("c:1", 2, true)); err != nil {
		t.Fatal(err)
	}
	if b.dropped.Load() != 1 {
		t.Fatal("the broker did not drop the frame")
	}
	loads := db.loads.Load()
	b.reconnect <- struct{}{}
	expectState(t, c1, "c:1", 2, true)
	expectClose(t, c1, websocket.CloseNormalClosure)
	eventually(t, "c:2 reloaded", func() bool { return db.loads.Load() >= loads+2 })

	// c:2 did not change: its next frame is the next real change.
	change(t, h, db, fr("c:2", 2, false))
	expectState(t, c2, "c:2", 2, false)
}

func TestShutdownGoingAway(t *testing.T) {
	db := newFakeDB()
	h := NewHub(NewMemoryBroker(), db.Load, nil)
	srv := serveWatch(t, h)
	var conns []*websocket.Conn
	for i := range 3 {
		obj := fmt.Sprintf("c:%d", i)
		db.put(fr(obj, 1, false))
		c := dial(t, srv, obj)
		expectState(t, c, obj, 1, false)
		conns = append(conns, c)
	}
	db.put(fr("c:w", 1, false))
	waited := make(chan Frame, 1)
	go func() {
		f, _ := h.Wait(context.Background(), "c:w")
		waited <- f
	}()
	eventually(t, "Wait subscribed", func() bool { return h.isWatched("c:w") })

	// The browsers read (and so answer the close) while Shutdown waits.
	closed := make(chan error, len(conns))
	for _, c := range conns {
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _, err := c.ReadMessage()
			closed <- err
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.Shutdown(ctx)
	if n := h.Sockets(); n != 0 {
		t.Fatalf("%d sockets after Shutdown", n)
	}
	for range conns {
		if err := <-closed; !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("got %v, want close 1001", err)
		}
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return on Shutdown")
	}
	// A socket that arrives after Shutdown is turned away at once.
	c := dial(t, srv, "c:0")
	expectClose(t, c, websocket.CloseGoingAway)
}

func TestPingDropsSilentPeer(t *testing.T) {
	db := newFakeDB()
	h := newTestHub(t, db, nil, Options{PingInterval: 20 * time.Millisecond, PongWait: 200 * time.Millisecond})
	srv := serveWatch(t, h)
	db.put(fr("c:1", 1, false))

	// A live peer: gorilla answers pings while it reads.
	live := dial(t, srv, "c:1")
	var pings atomic.Int64
	live.SetPingHandler(func(data string) error {
		pings.Add(1)
		return live.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	liveErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := live.ReadMessage(); err != nil {
				liveErr <- err
				return
			}
		}
	}()

	// A silent peer: reads, but never answers a ping.
	silent := dial(t, srv, "c:1")
	silent.SetPingHandler(func(string) error { return nil })
	expectState(t, silent, "c:1", 1, false)
	start := time.Now()
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := silent.ReadMessage()
	if err == nil || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("silent peer read %v, want the server to drop it", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("silent peer dropped after %v, before PongWait", d)
	}
	eventually(t, "one socket left", func() bool { return h.Sockets() == 1 })

	time.Sleep(400 * time.Millisecond) // two PongWaits
	select {
	case err := <-liveErr:
		t.Fatalf("live peer dropped: %v", err)
	default:
	}
	if h.Sockets() != 1 || pings.Load() < 5 {
		t.Fatalf("sockets %d, pings %d: want the live peer kept and pinged", h.Sockets(), pings.Load())
	}
}

func TestServeClientCloseAndReadLimit(t *testing.T) {
	db := newFakeDB()
	h := newTestHub(t, db, nil, Options{})
	srv := serveWatch(t, h)
	db.put(fr("c:1", 1, false))

	c := dial(t, srv, "c:1")
	expectState(t, c, "c:1", 1, false)
	if err := c.WriteMessage(websocket.TextMessage, []byte("ignored")); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")); err != nil {
		t.Fatal(err)
	}
	expectClose(t, c, websocket.CloseNormalClosure) // the server's echo
	eventually(t, "socket count 0", func() bool { return h.Sockets() == 0 })

	big := dial(t, srv, "c:1")
	expectState(t, big, "c:1", 1, false)
	if err := big.WriteMessage(websocket.TextMessage, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	expectClose(t, big, websocket.CloseMessageTooBig)
	eventually(t, "socket count 0", func() bool { return h.Sockets() == 0 })
}

func TestWait(t *testing.T) {
	db := newFakeDB()
	h := newTestHub(t, db, nil, Options{})
	db.put(fr("c:1", 1, false))

	t.Run("Final", func(t *testing.T) {
		go func() {
			time.Sleep(30 * time.Millisecond)
			change(t, h, db, fr("c:1", 2, true))
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		f, err := h.Wait(ctx, "c:1")
		if err != nil || f.Version != 2 || !f.Final {
			t.Fatalf("Wait = %+v, %v; want the final version 2", f, err)
		}
		// Already final: at once.
		start := time.Now()
		f, err = h.Wait(ctx, "c:1")
		if err != nil || f.Version != 2 || time.Since(start) > time.Second {
			t.Fatalf("Wait on a final object = %+v, %v after %v", f, err, time.Since(start))
		}
	})
	t.Run("Timeout", func(t *testing.T) {
		db.put(fr("c:p", 3, false))
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		f, err := h.Wait(ctx, "c:p")
		if err != nil || f.Version != 3 || f.Final {
			t.Fatalf("Wait = %+v, %v; want the pending version 3", f, err)
		}
	})
	t.Run("SubscribeThenRead", func(t *testing.T) {
		db.put(fr("c:r", 1, false))
		var once sync.Once
		db.mu.Lock()
		db.hook = func(string) { once.Do(func() { change(t, h, db, fr("c:r", 2, true)) }) }
		db.mu.Unlock()
		defer func() { db.mu.Lock(); db.hook = nil; db.mu.Unlock() }()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		f, err := h.Wait(ctx, "c:r")
		if err != nil || !f.Final {
			t.Fatalf("Wait = %+v, %v; want the final frame published during the load", f, err)
		}
	})
	t.Run("LoadError", func(t *testing.T) {
		if _, err := h.Wait(context.Background(), "c:missing"); !errors.Is(err, errNotFound) {
			t.Fatalf("Wait on a missing object: %v", err)
		}
	})
}

func TestWaitChange(t *testing.T) {
	db := newFakeDB()
	h := newTestHub(t, db, nil, Options{})

	got := make(chan bool, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got <- h.WaitChange(ctx, "u:alice")
	}()
	eventually(t, "WaitChange subscribed", func() bool { return h.isWatched("u:alice") })
	change(t, h, db, fr("u:bob", 1, false)) // someone else's list
	change(t, h, db, fr("u:alice", 1, false))
	if !<-got {
		t.Fatal("WaitChange = false after a change")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if h.WaitChange(ctx, "u:alice") {
		t.Fatal("WaitChange = true without a change")
	}
	if h.isWatched("u:alice") {
		t.Fatal("WaitChange left its subscription behind")
	}
}

func TestThousandSockets(t *testing.T) {
	const n = 1000
	db := newFakeDB()
	h := newTestHub(t, db, nil, Options{})
	srv := serveWatch(t, h)
	for i := range n {
		db.put(fr(fmt.Sprintf("c:%d", i), 1, false))
	}

	conns := make([]*websocket.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := atomic.Int64{}
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+fmt.Sprintf("/?o=c:%d", i), nil)
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
				if _, _, err := c.ReadMessage(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	if got := h.Sockets(); got != n {
		t.Fatalf("Sockets() = %d, want %d", got, n)
	}

	for i := range n {
		change(t, h, db, fr(fmt.Sprintf("c:%d", i), 2, true))
	}
	var failed atomic.Int64
	for i := range n {
		wg.Go(func() {
			c := conns[i]
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, data, err := c.ReadMessage()
			var s state
			if err != nil || json.Unmarshal(data, &s) != nil || s.V != 2 || !s.Final {
				failed.Add(1)
				return
			}
			if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d sockets did not get their final frame and close 1000", f, n)
	}
	eventually(t, "socket count 0", func() bool { return h.Sockets() == 0 })
}

// failBroker refuses every publish, like a broker that is down.
type failBroker struct{ *MemoryBroker }

func (*failBroker) Publish(context.Context, Frame) error { return errors.New("broker down") }

func TestPublishDeliversLocallyWhenTheBrokerFails(t *testing.T) {
	db := newFakeDB()
	h := newTestHub(t, db, &failBroker{NewMemoryBroker()}, Options{})
	srv := serveWatch(t, h)
	db.put(fr("c:1", 1, false))
	c := dial(t, srv, "c:1")
	expectState(t, c, "c:1", 1, false)
	db.put(fr("c:1", 2, true))
	if err := h.Publish(context.Background(), fr("c:1", 2, true)); err == nil {
		t.Fatal("Publish hid the broker's error")
	}
	expectState(t, c, "c:1", 2, true)
	expectClose(t, c, websocket.CloseNormalClosure)
}
