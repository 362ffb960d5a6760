package redisbroker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/realtime"
)

const defaultTestURL = "redis://127.0.0.1:6379/0"

// unavailable skips the test, or fails it when the CI requires services.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("APPROVALD_TEST_REQUIRE_SERVICES") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// testRedisURL returns the URL of the shared test Redis, skipping the test
// if it does not answer.
func testRedisURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("APPROVALD_TEST_REDIS_URL")
	if u == "" {
		u = defaultTestURL
	}
	b, err := New(u, nil)
	if err != nil {
		t.Fatalf("APPROVALD_TEST_REDIS_URL: %v", err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := b.Ping(ctx); err != nil {
		unavailable(t, "redis at %s does not answer: %v", b.Addr(), err)
	}
	return u
}

// uniquePrefix returns a channel prefix that no other test uses.
func uniquePrefix() string {
	return fmt.Sprintf("approvald-test-%016x:", rand.Uint64())
}

// newBroker returns a broker closed when the test ends.
func newBroker(t testing.TB, url string, opts ...Option) *Broker {
	t.Helper()
	b, err := New(url, testLogger(t), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// testLogger logs to stderr when APPROVALD_TEST_LOG=1, else discards.
func testLogger(testing.TB) *slog.Logger {
	if os.Getenv("APPROVALD_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// startRun runs b.Run until the test ends and checks that it returns nil.
func startRun(t testing.TB, b realtime.Broker, deliver func(realtime.Frame), resync func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, deliver, resync) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
}

// eventually waits up to d for cond, polling.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// collector records delivered frames.
type collector struct {
	mu     sync.Mutex
	frames []realtime.Frame
	more   chan struct{}
}

func newCollector() *collector { return &collector{more: make(chan struct{}, 1)} }

func (c *collector) deliver(f realtime.Frame) {
	c.mu.Lock()
	c.frames = append(c.frames, f)
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

// find returns the first delivered frame of object, if any.
func (c *collector) find(object string) (realtime.Frame, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.frames {
		if f.Object == object {
			return f, true
		}
	}
	return realtime.Frame{}, false
}

// waitProbe publishes probes with pub until one reaches c: a Run may
// need a moment to subscribe.
func waitProbe(t testing.TB, pub *Broker, c *collector) {
	t.Helper()
	obj := "probe:" + uniquePrefix()
	ok := eventually(10*time.Second, func() bool {
		_ = pub.Publish(context.Background(), realtime.Frame{Object: obj, Version: 1})
		select {
		case <-c.more:
		case <-time.After(50 * time.Millisecond):
		}
		_, ok := c.find(obj)
		return ok
	})
	if !ok {
		t.Fatal("no probe frame reached Run")
	}
}

// redisServer is a redis-server process of the test's own, on its own port.
type redisServer struct {
	t      testing.TB
	bin    string
	dir    string
	port   int
	proc   *os.Process
	exited chan error // receives the exit of proc
}

// startRedisServer starts redis-server on a free port below 32768.
func startRedisServer(t testing.TB) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		unavailable(t, "redis-server not found: %v", err)
	}
	s := &redisServer{t: t, bin: bin, dir: t.TempDir()}
	t.Cleanup(s.kill)
	for range 20 {
		s.port = freePort(t)
		err := s.start()
		if err == nil {
			return s
		}
		t.Logf("redis-server on port %d: %v; trying another port", s.port, err)
	}
	t.Fatal("could not start redis-server")
	return nil
}

// freePort returns a port in [20000, 32000) that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		p := 20000 + rand.N(12000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err == nil {
			_ = l.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

func (s *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

// start starts the server on s.port and waits until it answers PING.
func (s *redisServer) start() error {
	logf, err := os.OpenFile(filepath.Join(s.dir, "redis.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.bin,
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", s.dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("redis-server exited: %v", err)
		default:
		}
		if pingRaw(s.port) == nil {
			s.proc, s.exited = cmd.Process, exited
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-exited
	return errors.New("redis-server did not answer")
}

// kill stops the server with SIGKILL, if it runs, and waits for its exit.
func (s *redisServer) kill() {
	if s.proc == nil {
		return
	}
	_ = s.proc.Signal(syscall.SIGKILL)
	<-s.exited
	s.proc = nil
}

// pingRaw sends PING to a Redis on port and checks for +PONG.
func pingRaw(port int) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
