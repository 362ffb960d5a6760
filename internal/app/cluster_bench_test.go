package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/gorilla/websocket"
)

const (
	idleSockets = 10_000
	// clientsEnv makes TestClusterBenchClients the benchmark's client process.
	clientsEnv = "APPROVALD_BENCH_CLIENTS"
)

// BenchmarkClusterDecisionToBrowser measures, with two instances sharing
// PostgreSQL and Redis and 10,000 idle watch sockets spread over both, the
// time from a phone sending its decision to instance A to the browser's
// socket on instance B receiving the final frame (p50, p99), and the
// memory each idle socket costs the server.
//
// The idle sockets' client ends live in a second process (this test binary
// run again as TestClusterBenchClients), so that each process stays within
// its file-descriptor limit and the memory measured here (HeapInuse +
// StackInuse after a GC, before and after the sockets open) is the
// server's alone; the client process reports its own.
//
//	go test -run '^$' -bench ClusterDecisionToBrowser -benchtime 500x ./internal/app/
func BenchmarkClusterDecisionToBrowser(b *testing.B) {
	raiseFDLimit(b, idleSockets+2000)
	redisURL := apptest.RedisURL(b)
	envs := startCluster(b, 2, redisURL)
	ea, eb := envs[0], envs[1]
	ctx := context.Background()

	// The idle sockets watch pending email-only challenges: 1,000 users
	// with 10 pending each (the per-user limit), each from 10 addresses
	// (one pending per requester).
	urls := make([]string, idleSockets)
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		failed  error
	)
	rp := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: 30 * time.Second}
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= idleSockets {
					return
				}
				e := envs[i%2]
				tok, err := createIdle(rp, e, i)
				if err != nil {
					errOnce.Do(func() { failed = err })
					return
				}
				urls[i] = "ws" + strings.TrimPrefix(envs[(i+1)%2].URL, "http") + "/v1/watch?token=" + tok
			}
		})
	}
	wg.Wait()
	if failed != nil {
		b.Fatal(failed)
	}
	rp.CloseIdleConnections()

	before := memInUse()
	clients := startClients(b, urls)
	deadline := time.Now().Add(60 * time.Second)
	for ea.App.Hub.Sockets()+eb.App.Hub.Sockets() < idleSockets {
		if time.Now().After(deadline) {
			b.Fatalf("%d sockets open on the servers, want %d", ea.App.Hub.Sockets()+eb.App.Hub.Sockets(), idleSockets)
		}
		time.Sleep(10 * time.Millisecond)
	}
	after := memInUse()
	b.Logf("server: %d idle sockets (A %d, B %d) took %d KiB of heap and stack in use: %.1f KiB each",
		idleSockets, ea.App.Hub.Sockets(), eb.App.Hub.Sockets(), int64(after-before)/1024, float64(after-before)/1024/idleSockets)
	b.Logf("client process: %.1f KiB each", clients.perSocket/1024)
	open := ea.App.Hub.Sockets() + eb.App.Hub.Sockets()

	const users = 100
	phones := make([]*deviceclient.Client, users)
	for i := range phones {
		phones[i] = ea.LinkDevice(fmt.Sprintf("dec-%d", i))
	}
	lat := make([]time.Duration, 0, 1000)
	i := 0
	for b.Loop() {
		b.StopTimer()
		u := i % users
		r := ea.Challenge(fmt.Sprintf("dec-%d", u), "login", map[string]any{"ip": fmt.Sprintf("192.0.2.%d", (i/users)%250+1)})
		i++
		sock, _, err := eb.Watch(r.Str("watch_token"), "")
		if err != nil {
			b.Fatalf("watch on B: %v", err)
		}
		if f, _ := apptest.Frame(b, sock, 5*time.Second); f["status"] != "pending" {
			b.Fatalf("first frame %v", f)
		}
		decided := make(chan error, 1)
		b.StartTimer()
		t0 := time.Now()
		go func() {
			_, err := phones[u].Decide(ctx, r.Str("id"), deviceclient.Decision{Approve: true})
			decided <- err
		}()
		f, _ := apptest.Frame(b, sock, 5*time.Second)
		lat = append(lat, time.Since(t0))
		if f["status"] != "approved" {
			b.Fatalf("frame on B: %v", f)
		}
		if err := <-decided; err != nil {
			b.Fatal(err)
		}
		sock.Close()
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	// After b.Loop, which resets the metrics reported before it.
	b.ReportMetric(float64(open), "open-sockets")
	b.ReportMetric(float64(after-before)/1024/idleSockets, "server-KiB/socket")
	b.ReportMetric(clients.perSocket/1024, "client-KiB/socket")
	clients.stop(b)
}

// createIdle creates idle challenge i on e and returns its watch token.
func createIdle(c *http.Client, e *apptest.Env, i int) (string, error) {
	body, _ := json.Marshal(map[string]any{"user_id": fmt.Sprintf("idle-%d", i/10), "action": "login",
		"methods": []string{"email"}, "ttl_seconds": 600, "ip": fmt.Sprintf("198.51.100.%d", i%10+1)})
	req, err := http.NewRequest("POST", e.URL+"/v1/challenges", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.APIKey)
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		WatchToken string `json:"watch_token"`
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(data, &out) != nil || out.WatchToken == "" {
		return "", fmt.Errorf("idle challenge %d: %d %s", i, resp.StatusCode, data)
	}
	return out.WatchToken, nil
}

// memInUse is the heap and stack in use after a full collection.
func memInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// raiseFDLimit raises the soft limit of open files to the hard limit and
// skips the benchmark if that is still below need.
func raiseFDLimit(tb testing.TB, need uint64) {
	tb.Helper()
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		tb.Fatal(err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			tb.Logf("raise RLIMIT_NOFILE to %d: %v", l.Max, err)
			_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
		}
	}
	if l.Cur < need {
		tb.Skipf("open files limited to %d, need %d (ulimit -n)", l.Cur, need)
	}
}

// clientProc is the process holding the idle sockets' client ends.
type clientProc struct {
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	perSocket float64 // the client process's own memory per socket, bytes
}

// startClients runs this test binary as TestClusterBenchClients, gives it
// urls, and waits until it holds every socket open.
func startClients(tb testing.TB, urls []string) *clientProc {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestClusterBenchClients$", "-test.count=1")
	cmd.Env = append(os.Environ(), clientsEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &clientProc{cmd: cmd, stdin: stdin}
	tb.Cleanup(func() { p.stop(tb) })
	go func() {
		w := bufio.NewWriter(stdin)
		for _, u := range urls {
			fmt.Fprintln(w, u)
		}
		fmt.Fprintln(w)
		_ = w.Flush()
	}()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "ready ") {
				ready <- line
			} else if strings.HasPrefix(line, "--- FAIL") || strings.HasPrefix(line, "    ") {
				tb.Log("client process: " + line)
			}
		}
		close(ready)
	}()
	select {
	case line, ok := <-ready:
		var n int
		var nbytes uint64
		if !ok {
			tb.Fatal("the client process ended before opening its sockets")
		}
		if _, err := fmt.Sscanf(line, "ready %d %d", &n, &nbytes); err != nil || n != len(urls) {
			tb.Fatalf("client process: %q", line)
		}
		p.perSocket = float64(nbytes) / float64(n)
	case <-time.After(5 * time.Minute):
		tb.Fatal("the client process did not open its sockets within 5 minutes")
	}
	return p
}

// stop closes the client process's input (it then closes its sockets and
// exits) and waits for it. It is idempotent.
func (p *clientProc) stop(tb testing.TB) {
	if p.stdin == nil {
		return
	}
	_ = p.stdin.Close()
	p.stdin = nil
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			tb.Errorf("client process: %v", err)
		}
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		tb.Error("client process did not exit")
	}
}

// TestClusterBenchClients is not a test of its own: it is the client
// process of BenchmarkClusterDecisionToBrowser (with APPROVALD_BENCH_CLIENTS=1).
// It reads watch URLs from stdin up to an empty line, opens each socket and
// reads its first frame, prints "ready <sockets> <bytes of heap and stack
// they take here>", keeps reading every socket (answering pings) and closes
// them all when stdin ends.
func TestClusterBenchClients(t *testing.T) {
	if os.Getenv(clientsEnv) != "1" {
		t.Skip("the client process of BenchmarkClusterDecisionToBrowser")
	}
	raiseFDLimit(t, idleSockets+100)
	in := bufio.NewReader(os.Stdin)
	var urls []string
	for {
		line, err := in.ReadString('\n')
		line = strings.TrimSpace(line)
		if line == "" || err != nil {
			break
		}
		urls = append(urls, line)
	}
	before := memInUse()
	conns := make([]*websocket.Conn, len(urls))
	dialer := &websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 512, WriteBufferSize: 512}
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		failed  error
	)
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(urls) {
					return
				}
				c, _, err := dialer.Dial(urls[i], nil)
				if err == nil {
					_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
					_, _, err = c.ReadMessage()
					_ = c.SetReadDeadline(time.Time{})
				}
				if err != nil {
					errOnce.Do(func() { failed = fmt.Errorf("socket %d: %w", i, err) })
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	if failed != nil {
		t.Fatal(failed)
	}
	var readers sync.WaitGroup
	for _, c := range conns {
		readers.Go(func() {
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		})
	}
	after := memInUse()
	fmt.Printf("ready %d %d\n", len(conns), after-before)
	_, _ = io.Copy(io.Discard, in)
	for _, c := range conns {
		_ = c.Close()
	}
	readers.Wait()
}
