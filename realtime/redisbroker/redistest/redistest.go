// Package redistest holds test helpers for code that uses Redis: the
// shared test Redis (APPROVALD_TEST_REDIS_URL), and a redis-server process
// of the test's own that it can kill and restart.
//
// It imports only the standard library, so that the tests of any package,
// redisbroker's own included, can use it.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
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
)

// DefaultURL is the shared test Redis when APPROVALD_TEST_REDIS_URL is unset.
const DefaultURL = "redis://127.0.0.1:6379/0"

// Unavailable skips the test, or fails it when the services are required
// (APPROVALD_TEST_REQUIRE_SERVICES=1, as in CI).
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("APPROVALD_TEST_REQUIRE_SERVICES") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// Client is what URL needs of a Redis client (a *redisbroker.Broker is one).
type Client interface {
	Addr() string
	Ping(ctx context.Context) error
	Close() error
}

// URL returns the URL of the shared test Redis (APPROVALD_TEST_REDIS_URL,
// default DefaultURL) after checking, with a client from open, that it
// answers; if it does not, the test is skipped (see Unavailable). An error
// from open fails the test.
func URL(t testing.TB, open func(url string) (Client, error)) string {
	t.Helper()
	u := os.Getenv("APPROVALD_TEST_REDIS_URL")
	if u == "" {
		u = DefaultURL
	}
	c, err := open(u)
	if err != nil {
		t.Fatalf("APPROVALD_TEST_REDIS_URL: %v", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx); err != nil {
		Unavailable(t, "redis at %s does not answer (set APPROVALD_TEST_REDIS_URL): %v", c.Addr(), err)
	}
	return u
}

// Server is a redis-server process of the test's own, on its own port,
// which the test can kill and restart.
type Server struct {
	t      testing.TB
	bin    string
	dir    string
	port   int
	mu     sync.Mutex
	proc   *os.Process
	exited chan error // receives the exit of proc
}

// Start starts redis-server on a free port below 32768, killed when the
// test ends. Without a redis-server binary the test is skipped (see
// Unavailable).
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		Unavailable(t, "redis-server not found: %v", err)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	t.Cleanup(s.Kill)
	for range 20 {
		s.port = FreePort(t)
		err := s.start()
		if err == nil {
			return s
		}
		t.Logf("redis-server on port %d: %v; trying another port", s.port, err)
	}
	t.Fatal("could not start redis-server")
	return nil
}

// URL is the server's redis:// URL.
func (s *Server) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

// Port is the server's port.
func (s *Server) Port() int { return s.port }

// Kill stops the server with SIGKILL, if it runs, and waits for its exit.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	_ = s.proc.Signal(syscall.SIGKILL)
	<-s.exited
	s.proc = nil
}

// Restart starts the server again on the same port (an empty Redis); the
// test fails if it cannot.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("restart redis-server on port %d: %v", s.port, err)
	}
}

// start starts the server on s.port and waits until it answers PING.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New("already running")
	}
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
		if ping(s.port) == nil {
			s.proc, s.exited = cmd.Process, exited
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	<-exited
	return errors.New("redis-server did not answer")
}

// FreePort returns a port in [20000, 32000) that was free a moment ago.
func FreePort(t testing.TB) int {
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

// ping sends PING to a Redis on port and checks for +PONG.
func ping(port int) error {
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
