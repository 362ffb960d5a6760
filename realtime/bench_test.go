package realtime

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkPublishToSocket measures the latency from Hub.Publish to the
// browser having read the frame: through the memory broker, the hub and a
// real socket on loopback.
func BenchmarkPublishToSocket(b *testing.B) {
	db := newFakeDB()
	mem := NewMemoryBroker()
	h := newTestHub(b, db, mem, Options{})
	srv := serveWatch(b, h)
	db.put(fr("c:bench", 1, false))
	c := dial(b, srv, "c:bench")
	if _, _, err := c.ReadMessage(); err != nil {
		b.Fatal(err)
	}
	for { // wait until the hub's Run is subscribed to the broker
		mem.mu.Lock()
		ready := len(mem.runs) > 0
		mem.mu.Unlock()
		if ready {
			break
		}
		time.Sleep(time.Millisecond)
	}
	frames := make([]Frame, b.N)
	for i := range frames {
		frames[i] = fr("c:bench", int64(i)+2, false)
	}
	lat := make([]time.Duration, b.N)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		if err := h.Publish(ctx, frames[i]); err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.ReadMessage(); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(start)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2])/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100])/1e3, "p99-µs")
}

// BenchmarkIdleSocketMemory estimates the memory an idle watch socket holds
// on the server (heap and goroutine stacks, after GC). The clients are bare
// TCP connections that did the handshake by hand, so their own cost (a few
// hundred bytes each) is small; it is included in the figure. "handler" runs
// Serve in the HTTP handler, "goroutine" runs it in a new goroutine and
// returns from the handler. It measures once, whatever b.N.
func BenchmarkIdleSocketMemory(b *testing.B) {
	const n = 1000
	for _, mode := range []string{"handler", "goroutine"} {
		b.Run(mode, func(b *testing.B) {
			// One measurement whatever b.N: it opens n sockets.
			b.ReportMetric(idleSocketBytes(b, n, mode == "goroutine"), "bytes/socket")
		})
	}
}

func idleSocketBytes(b *testing.B, n int, async bool) float64 {
	db := newFakeDB()
	for i := range n {
		db.put(fr(fmt.Sprintf("c:%d", i), 1, false))
	}
	h := NewHub(NewMemoryBroker(), db.Load, nil)
	up := h.Upgrader(nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		if async {
			go h.Serve(conn, r.URL.Query().Get("o"))
			return
		}
		h.Serve(conn, r.URL.Query().Get("o"))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	before := heapAndStacks()
	conns := make([]net.Conn, 0, n)
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(c, "GET /?o=c:%d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", i)
		br := bufio.NewReaderSize(c, 1024)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			if line == "\r\n" {
				break
			}
		}
		conns = append(conns, c)
	}
	for h.Sockets() != n {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // first frames written, pumps gone
	after := heapAndStacks()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range conns {
		_ = c.Close()
	}
	h.Shutdown(ctx)
	return float64(after-before) / float64(n)
}

func heapAndStacks() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc + m.StackInuse
}
