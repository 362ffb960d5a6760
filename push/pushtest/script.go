package pushtest

import (
	"context"
	"sync"
	"time"
)

// scripted is a failure F queued for the next n requests.
type scripted[F any] struct {
	n int
	f F
}

// script is what both fakes share: the failures and hang scripted for them
// and the log of requests (M) they received. Its methods are safe for
// concurrent use.
type script[F, M any] struct {
	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every new request
	msgs      []M
	count     int
	record    bool
	failNext  []scripted[F]
	failToken map[string]F
	hang      time.Duration
}

func newScript[F, M any]() *script[F, M] {
	return &script[F, M]{changed: make(chan struct{}), record: true, failToken: make(map[string]F)}
}

// queueFailure queues failure f for the next n requests.
func (s *script[F, M]) queueFailure(n int, f F) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = append(s.failNext, scripted[F]{n: n, f: f})
}

// setTokenFailure makes every request for token fail with f.
func (s *script[F, M]) setTokenFailure(token string, f F) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failToken[token] = f
}

// clearTokenFailure undoes setTokenFailure.
func (s *script[F, M]) clearTokenFailure(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.failToken, token)
}

func (s *script[F, M]) setHang(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hang = d
}

func (s *script[F, M]) setRecording(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.record = on
}

// reset forgets the recorded requests and every scripted failure and hang.
func (s *script[F, M]) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs, s.count, s.failNext, s.hang = nil, 0, nil, 0
	s.failToken = make(map[string]F)
}

func (s *script[F, M]) messages() []M {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]M(nil), s.msgs...)
}

func (s *script[F, M]) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// WaitFor waits until at least n requests have arrived or timeout passes.
func (s *script[F, M]) WaitFor(n int, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		s.mu.Lock()
		c, ch := s.count, s.changed
		s.mu.Unlock()
		if c >= n {
			return true
		}
		select {
		case <-ch:
		case <-t.C:
			return false
		}
	}
}

// arrive counts a request for token and records msg() (when recording). When
// pick is set it also picks the scripted failure for it: the token's own,
// else the head of the queue. It returns that failure, the hang to apply and
// the index of the message in the log (-1 when not recorded), for answered.
func (s *script[F, M]) arrive(token string, pick bool, msg func() M) (f F, failed bool, hang time.Duration, idx int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	hang = s.hang
	if pick {
		if f, failed = s.failToken[token]; !failed && len(s.failNext) > 0 {
			f, failed = s.failNext[0].f, true
			if s.failNext[0].n--; s.failNext[0].n <= 0 {
				s.failNext = s.failNext[1:]
			}
		}
	}
	s.count++
	idx = -1
	if s.record {
		s.msgs = append(s.msgs, msg())
		idx = len(s.msgs) - 1
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return f, failed, hang, idx
}

// answered applies set to the logged request idx (from arrive), if it is
// still there.
func (s *script[F, M]) answered(idx int, set func(*M)) {
	if idx < 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if idx < len(s.msgs) {
		set(&s.msgs[idx])
	}
}

// wait sleeps for hang (if any). It reports false when the client (ctx) or
// the fake (done) went away first.
func wait(ctx context.Context, done <-chan struct{}, hang time.Duration) bool {
	if hang <= 0 {
		return true
	}
	t := time.NewTimer(hang)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-done:
		return false
	}
}
