package redisbroker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/clicktopurchase/approvald/realtime"
)

// Setting is the name of the configuration setting that New parses; errors
// about the URL name it.
const Setting = "APPROVALD_REDIS_URL"

// Defaults of the options.
const (
	DefaultPrefix         = "approvald:"
	DefaultPublishTimeout = time.Second
	DefaultResyncInterval = 2 * time.Second
)

const (
	// healthInterval is how long Run waits for a message before it sends
	// a PING, and then how long it waits for the answer.
	healthInterval = 2 * time.Second
	minBackoff     = 100 * time.Millisecond
	maxBackoff     = 2 * time.Second
)

// Option changes a default of New.
type Option func(*config)

type config struct {
	prefix         string
	publishTimeout time.Duration
	resyncInterval time.Duration
}

// WithPrefix sets the prefix of the channel name (DefaultPrefix): frames go
// to prefix+"frames". Instances that must see each other's frames use the
// same prefix.
func WithPrefix(prefix string) Option {
	return func(c *config) { c.prefix = prefix }
}

// WithPublishTimeout bounds each Publish (DefaultPublishTimeout), in
// addition to its context. A value <= 0 keeps the default.
func WithPublishTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.publishTimeout = d
		}
	}
}

// WithResyncInterval sets how often Run calls resync while it is not
// subscribed (DefaultResyncInterval). A value <= 0 keeps the default.
func WithResyncInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.resyncInterval = d
		}
	}
}

// Broker is a realtime.Broker over Redis pub/sub. Its methods are safe for
// concurrent use.
type Broker struct {
	client  *redis.Client
	log     *slog.Logger
	channel string
	cfg     config

	subscribed     atomic.Int64  // Runs currently subscribed
	everSubscribed atomic.Bool   // a Run has subscribed at least once
	reconnects     atomic.Uint64 // subscriptions after a Run's first one
}

var _ realtime.Broker = (*Broker)(nil)

// New returns a Broker for the Redis at rawURL, the value of
// APPROVALD_REDIS_URL: redis://[[user]:password@]host[:port][/db] or
// rediss://... for TLS (go-redis's query options are accepted too). It does
// not connect; use Ping to check that Redis answers. A nil log discards log
// records. Errors name the setting and never contain the password.
func New(rawURL string, log *slog.Logger, opts ...Option) (*Broker, error) {
	ropts, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	// Let context deadlines bound reads and writes, so that Publish and
	// Ping end with their context even when Redis stops answering.
	ropts.ContextTimeoutEnabled = true
	ropts.Dialer = newDialer(ropts)
	// One dial per attempt: go-redis already retries a failed command
	// (max_retries), and its five dials with pauses per attempt would make
	// a Publish to a stopped Redis wait out its whole timeout and report
	// only "context deadline exceeded" instead of the refused connection.
	ropts.DialerRetries = 1

	cfg := config{
		prefix:         DefaultPrefix,
		publishTimeout: DefaultPublishTimeout,
		resyncInterval: DefaultResyncInterval,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Broker{
		client:  redis.NewClient(ropts),
		log:     log.With("component", "redisbroker"),
		channel: cfg.prefix + "frames",
		cfg:     cfg,
	}, nil
}

// parseURL parses a Redis URL without ever putting its password in an error.
func parseURL(rawURL string) (*redis.Options, error) {
	if strings.TrimSpace(rawURL) == "" {
		return nil, fmt.Errorf("%s is empty", Setting)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse's error quotes the whole URL, password included.
		return nil, fmt.Errorf("%s is not a valid URL (want redis://[:password@]host:port/db or rediss://...)", Setting)
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("%s: scheme %q is not supported (want redis:// or rediss://)", Setting, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%s: no host", Setting)
	}
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		msg := err.Error()
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		if name := u.User.Username(); name != "" && strings.Contains(msg, name) {
			msg = strings.ReplaceAll(msg, name, "xxxxx")
		}
		return nil, fmt.Errorf("%s: %s", Setting, strings.TrimPrefix(msg, "redis: "))
	}
	return opts, nil
}

// sessionKey marks the contexts of a Run's session; its value is the
// session's context, and connections dialled under it are closed when that
// context ends.
type sessionKey struct{}

// newDialer returns go-redis's dialer made to honour the context: the
// default one ignores it for TLS, and go-redis cannot interrupt the
// handshake (HELLO, AUTH, SELECT) of a PubSub connection, which it does
// under the PubSub's lock, so Run could not return promptly while a server
// hangs. Connections of a session are closed when the session's context
// ends, which ends any such wait.
func newDialer(opts *redis.Options) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := &net.Dialer{Timeout: opts.DialTimeout}
		var (
			c   net.Conn
			err error
		)
		if opts.TLSConfig == nil {
			c, err = d.DialContext(ctx, network, addr)
		} else {
			c, err = (&tls.Dialer{NetDialer: d, Config: opts.TLSConfig}).DialContext(ctx, network, addr)
		}
		if err != nil {
			return nil, err
		}
		if session, ok := ctx.Value(sessionKey{}).(context.Context); ok {
			context.AfterFunc(session, func() { _ = c.Close() })
		}
		return c, nil
	}
}

// Addr returns the host:port of the Redis server, for logs.
func (b *Broker) Addr() string { return b.client.Options().Addr }

// Ping checks that Redis answers, within ctx; for readiness checks.
func (b *Broker) Ping(ctx context.Context) error {
	if err := b.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisbroker: ping %s: %w", b.Addr(), err)
	}
	return nil
}

// Close closes the connections to Redis. A Run still running then returns
// an error; cancel its context first for an orderly shutdown.
func (b *Broker) Close() error {
	return b.client.Close()
}

// Connected reports whether a Run is subscribed to the channel now.
func (b *Broker) Connected() bool { return b.subscribed.Load() > 0 }

// Reconnects returns how many times a Run subscribed again after its first
// subscription (a metric of broker reconnections).
func (b *Broker) Reconnects() uint64 { return b.reconnects.Load() }

// ErrDisconnected is returned by Publish while the broker's subscription
// is down (Redis is unreachable).
var ErrDisconnected = errors.New("not connected to Redis")

// Publish sends f to every instance's Run, this one included. It gives up
// after the publish timeout or when ctx ends, whichever comes first, and
// at once with ErrDisconnected while a Run that had subscribed is not.
func (b *Broker) Publish(ctx context.Context, f realtime.Frame) error {
	if f.Object == "" {
		return errors.New("redisbroker: publish: frame without object")
	}
	if b.everSubscribed.Load() && !b.Connected() {
		// Redis is away: fail at once rather than spend the caller's time
		// in dial retries; the hub delivers locally and publishes again
		// later, and other instances re-read the database meanwhile.
		return fmt.Errorf("redisbroker: publish %s: %w", f.Object, ErrDisconnected)
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.publishTimeout)
	defer cancel()
	if err := b.client.Publish(ctx, b.channel, encode(f)).Err(); err != nil {
		return fmt.Errorf("redisbroker: publish %s: %w", f.Object, err)
	}
	return nil
}

// Run subscribes to the channel and calls deliver for each frame until ctx
// ends, then returns nil. It reconnects with backoff when the connection is
// lost, calls resync after each confirmed subscription (the first one
// included), and calls resync every resync interval while it is not
// subscribed. It returns an error only if the Broker is closed.
func (b *Broker) Run(ctx context.Context, deliver func(realtime.Frame), resync func()) error {
	r := &run{b: b, deliver: deliver, resync: resync}

	tickCtx, stopTicks := context.WithCancel(ctx)
	var ticks sync.WaitGroup
	ticks.Go(func() { r.resyncWhileDown(tickCtx) })
	defer func() {
		stopTicks()
		ticks.Wait()
	}()

	backoff := minBackoff
	var downSince time.Time
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil {
			return nil
		}
		subscribed, err := r.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, redis.ErrClosed) {
			return fmt.Errorf("redisbroker: run: %w", err)
		}
		if subscribed {
			backoff = minBackoff
			downSince = time.Now()
			b.log.Warn("redis subscription lost; retrying", "addr", b.Addr(), "err", err)
		} else if downSince.IsZero() {
			downSince = time.Now()
			b.log.Warn("cannot subscribe to redis; retrying", "addr", b.Addr(), "err", err)
		} else {
			b.log.Debug("redis subscribe attempt failed", "addr", b.Addr(), "attempt", attempt,
				"down_for", time.Since(downSince).Round(time.Millisecond), "err", err)
		}

		// Wait a random time in [backoff/2, backoff).
		wait := backoff/2 + rand.N(backoff/2)
		backoff = min(2*backoff, maxBackoff)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// run is the state of one call of Run.
type run struct {
	b       *Broker
	deliver func(realtime.Frame)

	resyncMu sync.Mutex // serialises calls of resync
	resync   func()

	up     atomic.Bool // subscribed now
	everUp bool        // subscribed at least once (Run's goroutine only)
}

func (r *run) callResync() {
	if r.resync == nil {
		return
	}
	r.resyncMu.Lock()
	defer r.resyncMu.Unlock()
	r.resync()
}

// resyncWhileDown calls resync every resync interval while r is not
// subscribed, until ctx ends.
func (r *run) resyncWhileDown(ctx context.Context) {
	t := time.NewTicker(r.b.cfg.resyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !r.up.Load() {
				r.b.log.Debug("redis unavailable: resync from the database")
				r.callResync()
			}
		}
	}
}

// subscribed records a confirmed subscription and resyncs: frames published
// before it may have been missed (while disconnected, or, for the first one,
// by watchers that subscribed before Run did). again is true when go-redis
// re-subscribed within the same session.
func (r *run) subscribed(again bool) {
	if !again {
		r.up.Store(true)
		r.b.subscribed.Add(1)
		r.b.everSubscribed.Store(true)
	}
	if r.everUp {
		r.b.reconnects.Add(1)
		r.b.log.Info("redis subscription restored; resync", "addr", r.b.Addr(), "channel", r.b.channel)
	} else {
		r.b.log.Info("subscribed to redis", "addr", r.b.Addr(), "channel", r.b.channel)
	}
	r.everUp = true
	r.callResync()
}

func (r *run) unsubscribed() {
	r.up.Store(false)
	r.b.subscribed.Add(-1)
}

// session subscribes on a new connection and delivers frames until the
// connection fails or ctx ends. It reports whether the subscription was
// confirmed, and why the session ended.
func (r *run) session(ctx context.Context) (confirmed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ctx = context.WithValue(ctx, sessionKey{}, ctx)
	ps := r.b.client.Subscribe(ctx)
	defer ps.Close()
	// ReceiveTimeout does not watch ctx: closing the PubSub interrupts it.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	defer func() {
		if confirmed {
			r.unsubscribed()
		}
	}()

	if err := ps.Subscribe(ctx, r.b.channel); err != nil {
		return false, err
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, healthInterval)
		if err != nil {
			if !isTimeout(err) || ctx.Err() != nil {
				return confirmed, err
			}
			if pinged || !confirmed {
				return confirmed, fmt.Errorf("no answer from redis for %s", healthInterval)
			}
			pctx, cancel := context.WithTimeout(ctx, healthInterval)
			err := ps.Ping(pctx)
			cancel()
			if err != nil {
				return confirmed, fmt.Errorf("health check: %w", err)
			}
			pinged = true
			continue
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Message:
			if m.Channel != r.b.channel {
				continue
			}
			f, err := decode(m.Payload)
			if err != nil {
				r.b.log.Warn("dropped a frame in an unknown format", "bytes", len(m.Payload))
				continue
			}
			r.deliver(f)
		case *redis.Subscription:
			if m.Channel != r.b.channel {
				continue
			}
			if m.Kind != "subscribe" {
				return confirmed, fmt.Errorf("unexpected %s", m.Kind)
			}
			again := confirmed
			confirmed = true
			r.subscribed(again)
		case *redis.Pong:
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
