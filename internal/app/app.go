// Package app builds every part of approvald from a Config, checks each
// dependency before listening, runs, and shuts down in reverse order.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/clicktopurchase/approvald/internal/config"
	"github.com/clicktopurchase/approvald/internal/demo"
	"github.com/clicktopurchase/approvald/internal/httpapi"
	"github.com/clicktopurchase/approvald/internal/mail"
	"github.com/clicktopurchase/approvald/internal/metrics"
	"github.com/clicktopurchase/approvald/internal/store"
	"github.com/clicktopurchase/approvald/internal/web"
	"github.com/clicktopurchase/approvald/internal/webhook"
	"github.com/clicktopurchase/approvald/push/apns"
	"github.com/clicktopurchase/approvald/push/fcm"
	"github.com/clicktopurchase/approvald/realtime"
	"github.com/clicktopurchase/approvald/realtime/redisbroker"
	"github.com/redis/go-redis/v9"
)

// App is a running approvald instance.
type App struct {
	Config  *config.Config
	Store   *store.Store
	Service *approval.Service
	Hub     *realtime.Hub
	HTTP    *httpapi.Server
	Log     *slog.Logger
	Pushers approval.Pushers
	Redis   *redisbroker.Broker // nil without APPROVALD_REDIS_URL
	Metrics *metrics.Metrics
	// DevMail keeps the mails when no SMTP server is configured.
	DevMail *mail.Dev
	// Webhooks sends the webhook outbox; nil without APPROVALD_WEBHOOK_URL.
	Webhooks *webhook.Dispatcher

	// SweepInterval is how often overdue challenges are expired (default 250 ms).
	SweepInterval time.Duration
}

// Open builds an App: opens and migrates the store, loads the shared
// secrets, and wires the service, the hub and the HTTP surface.
func Open(ctx context.Context, cfg *config.Config, log *slog.Logger) (*App, error) {
	st, err := store.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("APPROVALD_DATABASE_URL: %w", err)
	}
	a, err := New(ctx, cfg, st, log)
	if err != nil {
		st.Close()
		return nil, err
	}
	return a, nil
}

// Option adjusts how an App is built.
type Option func(*options)

type options struct {
	now func() time.Time
}

// WithClock makes the App read time from now (tests travel in time).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// New builds an App on an open store (migrating it first).
func New(ctx context.Context, cfg *config.Config, st *store.Store, log *slog.Logger, opts ...Option) (*App, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if err := st.Migrate(ctx); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	keyPEM, err := st.GetOrCreateSecret(ctx, "result_signing_key", auth.GenerateSigningKey)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	signer, err := auth.NewSigner(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	watchKey, err := st.GetOrCreateSecret(ctx, "watch_token_key", func() ([]byte, error) {
		return []byte(auth.NewSecret("")), nil
	})
	if err != nil {
		return nil, fmt.Errorf("watch key: %w", err)
	}
	watch, err := auth.NewWatchTokens(watchKey)
	if err != nil {
		return nil, fmt.Errorf("watch key: %w", err)
	}
	pushers, err := openPushers(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var sender mail.Sender
	if cfg.SMTPURL != "" {
		if sender, err = mail.NewSMTP(cfg.SMTPURL, cfg.MailFrom); err != nil {
			return nil, err
		}
	}
	a := &App{Config: cfg, Store: st, Log: log, SweepInterval: 250 * time.Millisecond, Pushers: pushers}
	if sender == nil {
		a.DevMail = mail.NewDev(log, 50)
		sender = a.DevMail
	}
	m := &mailer{sender: sender, brand: cfg.Brand}
	var broker realtime.Broker = realtime.NewMemoryBroker()
	var reconnects func() uint64
	if cfg.RedisURL != "" {
		redisLogOnce.Do(func() { redis.SetLogger(redisLog{log}) })
		rb, err := redisbroker.New(cfg.RedisURL, log)
		if err != nil {
			return nil, err
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = rb.Ping(pctx)
		cancel()
		if err != nil {
			rb.Close()
			return nil, fmt.Errorf("APPROVALD_REDIS_URL: Redis does not answer: %w", err)
		}
		a.Redis, broker, reconnects = rb, rb, rb.Reconnects
	}
	var svc *approval.Service
	var hub *realtime.Hub
	a.Metrics = metrics.New(func() int { return hub.Sockets() }, reconnects)
	a.Hub = realtime.NewHub(broker, func(ctx context.Context, object string) (realtime.Frame, error) {
		w, err := svc.Load(ctx, object)
		if err != nil {
			return realtime.Frame{}, err
		}
		return realtime.Frame{Object: w.Object, Version: w.Version, Final: w.Final, Data: w.Data}, nil
	}, log)
	hub = a.Hub
	svc = approval.NewService(approval.Deps{Store: st, Signer: signer, Watch: watch, Events: events{a.Hub, log}, Log: log, Now: o.now,
		Pushers: pushers, PushText: approval.PushText{Titles: cfg.PushTitles, FullContext: cfg.PushFullContext}, Mailer: m,
		Metrics: a.Metrics},
		approval.Rules{
			PublicURL: cfg.PublicURL, NumberMatchingAll: cfg.NumberMatchingAll, NumberMatching: cfg.NumberMatching,
			NumberDigits: cfg.NumberMatchingDigits, MaxDevicesPerUser: cfg.MaxDevicesPerUser,
			CodeFailuresTotal: cfg.CodeFailuresTotal, DeviceRequestsPerMinute: cfg.DeviceRequestsPerMin,
		})
	a.Service = svc
	if cfg.WebhookURL != "" {
		if a.Webhooks, err = webhook.New(st, webhook.Options{URL: cfg.WebhookURL, Secret: []byte(cfg.WebhookSecret), Log: log, Now: o.now}); err != nil {
			return nil, fmt.Errorf("APPROVALD_WEBHOOK_URL: %w", err)
		}
		st.EnableWebhooks() // from now on changes enqueue their events
	}
	m.title = svc.ActionTitle
	a.HTTP = httpapi.New(svc, a.Hub, httpapi.Options{
		AllowedOrigins: cfg.AllowedOrigins, TrustedProxies: cfg.TrustedProxies, JWKS: signer.JWKS(),
		Ready:   a.Ready,
		Observe: a.Metrics.Request,
		Metrics: a.Metrics.Handler(),
	}, log)
	a.HTTP.Register(web.New(svc, cfg.Brand, log, a.HTTP.ClientIP).Register)
	if cfg.Demo {
		// The demo site is a relying party like any other: its own API key,
		// stored hashed; the key itself lives only in this process.
		key, name := auth.NewSecret("apk_"), "demo-"+auth.NewID()[:8]
		if err := st.CreateAPIKey(ctx, &approval.APIKey{ID: auth.NewID(), Name: name, Hash: auth.HashSecret(key), CreatedAt: time.Now().UTC()}); err != nil {
			return nil, fmt.Errorf("demo API key: %w", err)
		}
		log.Warn("DEMO MODE IS ON: anyone who can reach this instance can sign in to the demo site as any user, and "+
			"/demo/mail shows the live links of every mail. Never run --demo in production.",
			"site", cfg.PublicURL+"/demo/", "phone", cfg.PublicURL+"/demo/phone", "mailbox", a.DevMail != nil, "api_key", name)
		a.HTTP.Register(demo.New(demo.Options{PublicURL: cfg.PublicURL, APIKey: key, Brand: cfg.Brand, Mail: a.DevMail,
			ClientIP: a.HTTP.ClientIP, Log: log}).Register)
	}
	return a, nil
}

// openPushers builds the configured push providers; a provider without
// configuration is off (its devices' pushes are reported failed).
func openPushers(ctx context.Context, cfg *config.Config) (approval.Pushers, error) {
	p := approval.Pushers{}
	if cfg.FCMEnabled() {
		s, err := fcm.New(ctx, fcm.Config{CredentialsFile: cfg.FCMCredentialsFile, ProjectID: cfg.FCMProjectID, Endpoint: cfg.FCMEndpoint})
		if err != nil {
			return nil, err
		}
		p["fcm"] = s
	}
	if cfg.APNsEnabled() {
		s, err := apns.New(apns.Config{KeyFile: cfg.APNsKeyFile, KeyID: cfg.APNsKeyID, TeamID: cfg.APNsTeamID,
			Topic: cfg.APNsTopic, CertFile: cfg.APNsCertFile, Endpoint: cfg.APNsEndpoint})
		if err != nil {
			return nil, err
		}
		p["apns"] = s
	}
	return p, nil
}

// Ready reports whether the database and Redis (when configured) answer,
// naming the one that does not.
func (a *App) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var failed []string
	if err := a.Store.Ping(ctx); err != nil {
		failed = append(failed, "database unreachable")
	}
	if a.Redis != nil {
		if err := a.Redis.Ping(ctx); err != nil {
			failed = append(failed, "redis unreachable")
		}
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

// redisLog sends go-redis's own messages (failed dials while Redis is
// down) to our logger instead of its global stderr logger.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.Warn("redis: " + fmt.Sprintf(format, v...))
}

var redisLogOnce sync.Once

// events adapts the realtime hub to approval.Events.
type events struct {
	hub *realtime.Hub
	log *slog.Logger
}

func (e events) Publish(ctx context.Context, object string, version int64, final bool, data []byte) {
	if err := e.hub.Publish(ctx, realtime.Frame{Object: object, Version: version, Final: final, Data: data}); err != nil {
		e.log.Warn("publish", "object", object, "err", err)
	}
}

func (e events) Subscribe(object string) approval.Subscription { return e.hub.Subscribe(object) }

func (e events) Stopping() <-chan struct{} { return e.hub.Stopping() }

// Serve runs the instance on ln until ctx ends, then shuts down: stop
// accepting, close sockets with 1001, finish requests in flight, close the
// store.
func (a *App) Serve(ctx context.Context, ln net.Listener) error {
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	hubDone := make(chan error, 1)
	go func() { hubDone <- a.Hub.Run(runCtx) }()
	sweepDone := make(chan struct{})
	go func() { defer close(sweepDone); a.sweep(runCtx) }()
	webhooksDone := make(chan struct{})
	go func() {
		defer close(webhooksDone)
		if a.Webhooks != nil {
			a.Webhooks.Run(runCtx)
		}
	}()

	srv := &http.Server{Handler: a.HTTP.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		ErrorLog: slog.NewLogLogger(a.Log.Handler(), slog.LevelWarn)}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ln) }()
	a.Log.Info("approvald listening", "addr", ln.Addr().String(), "public_url", a.Config.PublicURL)

	var err error
	select {
	case <-ctx.Done():
	case err = <-srvDone:
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	go a.Hub.Shutdown(shutCtx)
	if serr := srv.Shutdown(shutCtx); serr != nil && err == nil {
		err = serr
	}
	a.Hub.Shutdown(shutCtx)
	a.Service.Close()
	stopRun()
	<-hubDone
	<-sweepDone
	<-webhooksDone
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close releases Redis and the store.
func (a *App) Close() error {
	if a.Redis != nil {
		a.Redis.Close()
	}
	return a.Store.Close()
}

func (a *App) sweep(ctx context.Context) {
	t := time.NewTicker(a.SweepInterval)
	defer t.Stop()
	lastPurge := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.Service.ExpireDue(ctx); err != nil && ctx.Err() == nil {
			a.Log.Error("sweep", "err", err)
		}
		if time.Since(lastPurge) > time.Minute {
			lastPurge = time.Now()
			if err := a.Store.Purge(ctx, time.Now()); err != nil && ctx.Err() == nil {
				a.Log.Error("purge", "err", err)
			}
		}
	}
}
