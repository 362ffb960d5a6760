package realtime

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const (
	readLimit       = 512  // bytes; the browser has nothing to say
	readBufferSize  = 256  // per socket, held while idle
	writeBufferSize = 2048 // pooled: held only while a frame is written
	closeGrace      = 2 * time.Second
	handshakeWait   = 10 * time.Second
)

// Upgrader returns a websocket.Upgrader for watch sockets: small read
// buffers, write buffers borrowed from a pool shared by every socket of the
// hub only while a frame is being written, and no compression, so that an
// idle socket costs little memory. checkOrigin decides on the Origin header
// (the caller's exact allow-list; a request without Origin should pass); nil
// keeps gorilla's same-origin check. A refused origin gets 403.
func (h *Hub) Upgrader(checkOrigin func(*http.Request) bool) *websocket.Upgrader {
	return &websocket.Upgrader{
		HandshakeTimeout:  handshakeWait,
		ReadBufferSize:    readBufferSize,
		WriteBufferSize:   writeBufferSize,
		WriteBufferPool:   &h.writePool,
		CheckOrigin:       checkOrigin,
		EnableCompression: false,
	}
}

// Sockets returns the number of open watch sockets, for metrics.
func (h *Hub) Sockets() int { return int(h.nsockets.Load()) }

// socket is one watch socket. Its Serve goroutine reads (to process pongs
// and the client's close); writes are made by a pump goroutine that exists
// only while there is something to write, so an idle socket has one
// goroutine.
type socket struct {
	h       *Hub
	conn    *websocket.Conn
	opts    Options
	sub     *Subscription
	closing atomic.Bool // a close frame was sent or the socket failed

	mu          sync.Mutex
	ready       bool // the initial load is done: frames may be sent
	running     bool // a pump goroutine is active
	done        bool // Serve is returning: start nothing more
	pingDue     bool
	closeCode   int // close requested, 0 if none
	closeSent   bool
	sent        bool
	sentVersion int64
	timer       *time.Timer
	pumps       sync.WaitGroup
}

// Serve runs one watch socket after the HTTP layer has authenticated the
// request and upgraded it (with Upgrader). It subscribes to object, loads its
// state, sends that frame at once and then every newer frame; after a Final
// frame it closes the socket with 1000. It pings every PingInterval and drops
// a peer whose pong does not come within PongWait; it discards what the
// client sends (at most 512 bytes a message), and a close from the client
// ends it. Shutdown closes it with 1001 (going away); a failed load closes it
// with 1011. Serve returns when the socket is closed; it owns conn.
//
// Serve blocks. Calling it in a new goroutine and returning from the HTTP
// handler lets net/http free the request's memory sooner; Shutdown waits for
// every Serve either way.
func (h *Hub) Serve(conn *websocket.Conn, object string) {
	s := &socket{h: h, conn: conn, opts: h.Options.withDefaults()}
	if !h.addSocket(s) {
		_ = conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseGoingAway, ""),
			time.Now().Add(s.opts.WriteWait))
		_ = conn.Close()
		return
	}
	defer h.removeSocket(s)

	conn.SetReadLimit(readLimit)
	// Before anything is written: the pump shortens the deadline once it
	// has sent a close, and the pong handler then leaves it alone.
	_ = conn.SetReadDeadline(time.Now().Add(s.opts.PongWait))
	conn.SetPongHandler(func(string) error {
		if s.closing.Load() {
			return nil // keep the close grace deadline
		}
		return conn.SetReadDeadline(time.Now().Add(s.opts.PongWait))
	})
	s.sub = h.subscribe(object, s.kick) // before the load: nothing falls between

	ctx, cancel := context.WithTimeout(h.base, loadTimeout)
	f, err := h.load(ctx, object)
	cancel()
	s.mu.Lock()
	if err != nil {
		if s.closeCode == 0 {
			h.log.Warn("realtime: watch load failed", "object", object, "err", err)
			s.closeCode = websocket.CloseInternalServerErr
		}
	} else {
		s.ready = true
	}
	s.mu.Unlock()
	if err == nil {
		f.Object = object
		s.sub.offer(f) // dropped if a newer frame came during the load
	}
	s.kick()

	s.mu.Lock()
	if !s.done {
		s.timer = time.AfterFunc(s.opts.PingInterval, s.pingTick)
	}
	s.mu.Unlock()

	var rerr error
	for {
		if _, _, rerr = conn.NextReader(); rerr != nil {
			break
		}
	}

	s.mu.Lock()
	s.done = true
	t := s.timer
	s.mu.Unlock()
	if t != nil {
		t.Stop()
	}
	s.sub.Close()
	_ = conn.Close() // unblocks a pump stuck in a write
	s.pumps.Wait()
	h.log.Debug("realtime: watch socket ended", "object", object, "err", rerr)
}

func (h *Hub) addSocket(s *socket) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.sockets[s] = struct{}{}
	h.serving.Add(1)
	h.nsockets.Add(1)
	return true
}

func (h *Hub) removeSocket(s *socket) {
	h.mu.Lock()
	delete(h.sockets, s)
	h.mu.Unlock()
	h.nsockets.Add(-1)
	h.serving.Done()
}

// Shutdown closes every watch socket with 1001 (going away), makes Wait and
// WaitChange return, refuses later sockets with 1001, and waits for every
// Serve to return or for ctx to end; then it drops the sockets that remain
// without waiting further.
func (h *Hub) Shutdown(ctx context.Context) {
	h.mu.Lock()
	h.closing = true
	socks := make([]*socket, 0, len(h.sockets))
	for s := range h.sockets {
		socks = append(socks, s)
	}
	h.mu.Unlock()
	for _, s := range socks {
		s.requestClose(websocket.CloseGoingAway)
	}
	h.stopOnce.Do(func() {
		close(h.stop)
		h.cancelBase() // after requestClose, so an aborted load closes with 1001
	})

	done := make(chan struct{})
	go func() {
		h.serving.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		h.mu.Lock()
		for s := range h.sockets {
			_ = s.conn.Close()
		}
		h.mu.Unlock()
	}
}

// kick makes sure a pump runs if there may be something to write.
func (s *socket) kick() {
	s.mu.Lock()
	s.startLocked()
	s.mu.Unlock()
}

func (s *socket) startLocked() {
	if s.running || s.done {
		return
	}
	s.running = true
	s.pumps.Add(1)
	go s.pump()
}

func (s *socket) requestClose(code int) {
	s.mu.Lock()
	if s.closeCode == 0 {
		s.closeCode = code
	}
	s.startLocked()
	s.mu.Unlock()
}

func (s *socket) pingTick() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done || s.closeSent {
		return
	}
	s.pingDue = true
	s.timer.Reset(s.opts.PingInterval)
	s.startLocked()
}

type workKind int

const (
	workNone workKind = iota
	workFrame
	workPing
	workClose
)

// nextLocked picks the next write: a requested close first, then the newest
// frame if it is newer than the one sent, then a due ping.
func (s *socket) nextLocked() (workKind, Frame, int) {
	if s.done || s.closeSent {
		return workNone, Frame{}, 0
	}
	if s.closeCode != 0 {
		s.closeSent = true
		return workClose, Frame{}, s.closeCode
	}
	if s.ready {
		if f, ok := s.sub.Latest(); ok && (!s.sent || f.Version > s.sentVersion) {
			s.sent, s.sentVersion = true, f.Version
			if f.Final {
				s.closeCode = websocket.CloseNormalClosure // written next
			}
			return workFrame, f, 0
		}
	}
	if s.pingDue {
		s.pingDue = false
		return workPing, Frame{}, 0
	}
	return workNone, Frame{}, 0
}

func (s *socket) pump() {
	defer s.pumps.Done()
	for {
		s.mu.Lock()
		kind, f, code := s.nextLocked()
		if kind == workNone {
			s.running = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()

		deadline := time.Now().Add(s.opts.WriteWait)
		var err error
		switch kind {
		case workFrame:
			_ = s.conn.SetWriteDeadline(deadline)
			err = s.conn.WriteMessage(websocket.TextMessage, f.Data)
		case workPing:
			err = s.conn.WriteControl(websocket.PingMessage, nil, deadline)
		case workClose:
			s.closing.Store(true)
			err = s.conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(code, ""), deadline)
			if err == nil {
				// Wait a little for the client's close, then give up.
				_ = s.conn.SetReadDeadline(time.Now().Add(min(closeGrace, s.opts.PongWait)))
			}
		}
		if err != nil {
			s.closing.Store(true)
			s.mu.Lock()
			s.closeSent = true // nothing more can be written
			s.mu.Unlock()
			_ = s.conn.Close() // ends the read loop
		}
	}
}
