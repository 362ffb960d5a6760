package apptest

import (
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/realtime/redisbroker"
	"github.com/clicktopurchase/approvald/realtime/redisbroker/redistest"
	"github.com/gorilla/websocket"
)

// Several instances in one test: stopping one of them early, the shared
// test Redis, and a redis-server of the test's own that it can kill
// and restart.

// DefaultRedisURL is the Redis used when APPROVALD_TEST_REDIS_URL is unset.
const DefaultRedisURL = redistest.DefaultURL

// RedisURL returns the shared test Redis (APPROVALD_TEST_REDIS_URL, default
// DefaultRedisURL) after checking that it answers; if it does not, the test
// is skipped, or fails when APPROVALD_TEST_REQUIRE_SERVICES=1. Instances of
// different tests on it share one channel: they receive each other's frames,
// which is harmless (frames are keyed by random ids and versioned).
func RedisURL(t testing.TB) string {
	t.Helper()
	return redistest.URL(t, func(u string) (redistest.Client, error) { return redisbroker.New(u, nil) })
}

// Stop shuts the instance down as SIGTERM does (stop accepting, close the
// watch sockets with 1001, finish the requests in flight) and waits for it;
// it returns what Serve returned. It is idempotent; every instance is
// stopped this way when its test ends.
func (e *Env) Stop() error {
	s := e.stop
	s.once.Do(func() {
		s.cancel()
		s.err = <-s.done
		if s.app.Redis != nil {
			_ = s.app.Redis.Close()
		}
	})
	return s.err
}

// WaitSubscribed waits until the instance's Redis broker is subscribed to
// its channel (the test fails after 10 s).
func (e *Env) WaitSubscribed() {
	e.t.Helper()
	if e.App.Redis == nil {
		e.t.Fatal("apptest: WaitSubscribed on an instance without APPROVALD_REDIS_URL")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !e.App.Redis.Connected() {
		if time.Now().After(deadline) {
			e.t.Fatalf("apptest: %s did not subscribe to Redis within 10 s", e.URL)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// MustWatchNoOrigin opens a watch socket without an Origin header (as a
// non-browser client does; instances whose public URL is not their own
// address refuse MustWatch's Origin) or fails the test.
func (e *Env) MustWatchNoOrigin(token string) *websocket.Conn {
	e.t.Helper()
	c, resp, err := e.Watch(token, "")
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		e.t.Fatalf("watch %s: %v (status %d)", e.URL, err, status)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// RedisServer is a redis-server process of the test's own, on its own port,
// which the test can kill and restart.
type RedisServer = redistest.Server

// StartRedis starts redis-server on a free port below 32768, killed when
// the test ends. Without a redis-server binary the test is skipped (or
// fails when APPROVALD_TEST_REQUIRE_SERVICES=1).
func StartRedis(t testing.TB) *RedisServer {
	t.Helper()
	return redistest.Start(t)
}
