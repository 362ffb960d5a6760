package approval

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Rules are the tunable limits and policies. Zero values are replaced by
// the protocol's defaults in NewService.
type Rules struct {
	PublicURL         string // the device audience and the result-token issuer
	NumberMatchingAll bool
	NumberMatching    map[string]bool // actions with number matching
	NumberDigits      int             // 3..6
	MaxDevicesPerUser int

	EnrollmentTTL                           time.Duration // 10 min
	StepUpWindow                            time.Duration // 10 min
	FraudLock                               time.Duration // 15 min
	WatchGrace                              time.Duration // a watch token dies this long after its object is final: 5 min
	LimitWindow                             time.Duration // anti-fatigue window: 10 min
	RequesterMaxPending, RequesterMaxRecent int           // 3, 10
	UserMaxPending, UserMaxRecent           int           // 10, 30
	CodeWindow                              time.Duration // 10 min
	CodeFailuresPerIP, CodeFailuresTotal    int           // 20, 1000
	DeviceRequestsPerMinute                 int           // 120
	MaxNumberAttempts                       int           // 3
}

func (r *Rules) defaults() {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	defD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	def(&r.NumberDigits, 3)
	def(&r.MaxDevicesPerUser, 1)
	defD(&r.EnrollmentTTL, 10*time.Minute)
	defD(&r.StepUpWindow, 10*time.Minute)
	defD(&r.FraudLock, 15*time.Minute)
	defD(&r.WatchGrace, 5*time.Minute)
	defD(&r.LimitWindow, 10*time.Minute)
	def(&r.RequesterMaxPending, 3)
	def(&r.RequesterMaxRecent, 10)
	def(&r.UserMaxPending, 10)
	def(&r.UserMaxRecent, 30)
	defD(&r.CodeWindow, 10*time.Minute)
	def(&r.CodeFailuresPerIP, 20)
	def(&r.CodeFailuresTotal, 1000)
	def(&r.DeviceRequestsPerMinute, 120)
	def(&r.MaxNumberAttempts, 3)
}

// Signer signs result tokens.
type Signer interface {
	Sign(claims any) (string, error)
}

// WatchTokens mints and checks the browser's watch tokens.
type WatchTokens interface {
	Mint(kind, objectID string) string
	Parse(token string) (kind, objectID string, err error)
}

// Events publishes state changes to watchers (on every instance) and lets
// long-polls wait for them.
type Events interface {
	Publish(ctx context.Context, object string, version int64, final bool, data []byte)
	// Subscribe registers interest before the caller reads state.
	Subscribe(object string) Subscription
	// Stopping is closed when the instance shuts down: long-polls answer
	// at once with the current state.
	Stopping() <-chan struct{}
}

// Subscription signals on C when a newer frame of its object arrived.
type Subscription interface {
	C() <-chan struct{}
	Close()
}

// Object keys for Events.
func challengeKey(id string) string  { return "c:" + id }
func enrollmentKey(id string) string { return "e:" + id }
func userKey(id string) string       { return "u:" + id }

// Watch-token kinds.
const (
	KindChallenge  = "c"
	KindEnrollment = "e"
)

// Service orchestrates challenges, enrollments and devices.
type Service struct {
	store  Store
	rules  Rules
	signer Signer
	watch  WatchTokens
	events Events
	log    *slog.Logger
	now    func() time.Time

	pushers  Pushers
	pushText PushText
	mailer   Mailer
	metrics  Metrics
	bg       sync.WaitGroup // background work: push retries
	bgCtx    context.Context
	bgStop   context.CancelFunc
}

// Deps are what a Service is built from.
type Deps struct {
	Store  Store
	Signer Signer
	Watch  WatchTokens
	Events Events
	Log    *slog.Logger
	Now    func() time.Time // for tests; time.Now by default
	// Pushers are the configured push providers; PushText what pushes say.
	Pushers  Pushers
	PushText PushText
	// Mailer sends the email link and the new-device notice.
	Mailer Mailer
	// Metrics counts what happens (nothing by default).
	Metrics Metrics
}

// Metrics is what the service counts; internal/metrics exports it.
type Metrics interface {
	ChallengeCreated(action string)
	ChallengeFinal(action, status, method string, sinceCreated time.Duration)
	Push(provider, kind, outcome string)
	Email(kind, outcome string)
}

type noMetrics struct{}

func (noMetrics) ChallengeCreated(string)                              {}
func (noMetrics) ChallengeFinal(string, string, string, time.Duration) {}
func (noMetrics) Push(string, string, string)                          {}
func (noMetrics) Email(string, string)                                 {}

// NewService builds a Service.
func NewService(d Deps, r Rules) *Service {
	r.defaults()
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	s := &Service{store: d.Store, rules: r, signer: d.Signer, watch: d.Watch, events: d.Events, log: d.Log, now: d.Now,
		pushers: d.Pushers, pushText: d.PushText, mailer: d.Mailer, metrics: d.Metrics}
	if s.metrics == nil {
		s.metrics = noMetrics{}
	}
	s.bgCtx, s.bgStop = context.WithCancel(context.Background())
	return s
}

// Rules returns the rules in force (defaults filled in).
func (s *Service) Rules() Rules { return s.rules }

// Store returns the service's store.
func (s *Service) Store() Store { return s.store }

func (s *Service) clock() time.Time { return s.now().UTC().Truncate(time.Millisecond) }

// Actor is who makes a call, for the audit log.
type Actor struct {
	Type string // ActorAPIKey, ActorDevice, ActorLink, ActorSystem
	Name string // API key name, device id, ...
	IP   string
	// KeyID is the API key's id (for ActorAPIKey): the scope of
	// idempotency keys, which a later key of the same name must not share.
	KeyID string
}

func (a Actor) audit(event, objType, objID, userID string, at time.Time) AuditEntry {
	return AuditEntry{At: at, ActorType: a.Type, Actor: a.Name, Event: event, ObjectType: objType, ObjectID: objID, UserID: userID, IP: a.IP}
}

var system = Actor{Type: ActorSystem, Name: "sweeper"}

// internal wraps an unexpected failure; httpapi answers 500/503 without detail.
func internal(op string, err error) error { return fmt.Errorf("%s: %w", op, err) }

func (s *Service) publishChallenge(ctx context.Context, c *Challenge) {
	s.events.Publish(ctx, challengeKey(c.ID), c.Version, c.Final(), c.WatchJSON())
	s.events.Publish(ctx, userKey(c.UserID), s.now().UnixNano(), false, nil)
}

func (s *Service) publishEnrollment(ctx context.Context, e *Enrollment) {
	s.events.Publish(ctx, enrollmentKey(e.ID), e.Version, e.Final(), e.WatchJSON())
}

// checkLock refuses while a fraud report locks the user.
func (s *Service) checkLock(ctx context.Context, userID string, now time.Time) error {
	until, err := s.store.UserLockedUntil(ctx, userID)
	if err != nil {
		return internal("read lock", err)
	}
	if until.After(now) {
		return &Error{Code: CodeUserLocked, Detail: "a fraud report locked this user; try again later", RetryAfter: roundUp(until.Sub(now))}
	}
	return nil
}

// resultToken signs the result token of a challenge becoming final at at.
func (s *Service) resultToken(c *Challenge, status, method string, at time.Time) (string, error) {
	amr := []string{}
	if method != "" {
		amr = []string{method}
	}
	claims := map[string]any{
		"iss": s.rules.PublicURL, "sub": c.UserID, "cid": c.ID, "act": c.Action, "st": status,
		"amr": amr, "iat": at.Unix(), "exp": at.Unix() + 300,
	}
	t, err := s.signer.Sign(claims)
	if err != nil {
		return "", internal("sign result", err)
	}
	return t, nil
}

func isLost(err error) bool { return errors.Is(err, ErrLost) }
