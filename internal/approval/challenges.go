package approval

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"net"
	"strings"
	"time"

	"github.com/clicktopurchase/approvald/internal/auth"
)

// CreateChallengeRequest is the body of POST /v1/challenges.
type CreateChallengeRequest struct {
	UserID         string          `json:"user_id"`
	Action         string          `json:"action"`
	Context        json.RawMessage `json:"context,omitempty"`
	UserEmail      string          `json:"user_email,omitempty"`
	IP             string          `json:"ip,omitempty"`
	UserAgent      string          `json:"user_agent,omitempty"`
	Methods        []string        `json:"methods,omitempty"`
	NumberMatching *bool           `json:"number_matching,omitempty"`
	TTLSeconds     *int            `json:"ttl_seconds,omitempty"`
}

// CreatedChallenge is the result of CreateChallenge.
type CreatedChallenge struct {
	Challenge  *Challenge
	WatchToken string
}

func (s *Service) numberMatching(action string, asked bool) bool {
	return asked || action == ActionLinkDevice || s.rules.NumberMatchingAll || s.rules.NumberMatching[action]
}

// CreateChallenge validates req, applies the lock and the anti-fatigue
// limits, and stores a new challenge. With an idempotency key seen before
// (scope = the API key) it returns the earlier challenge.
func (s *Service) CreateChallenge(ctx context.Context, a Actor, scope, idemKey string, req CreateChallengeRequest) (*CreatedChallenge, error) {
	if err := validUserID(req.UserID); err != nil {
		return nil, err
	}
	if !actionRE.MatchString(req.Action) {
		return nil, invalid("action must match ^[a-z][a-z0-9_.-]{0,63}$")
	}
	ctxJSON, err := normalizeContext(req.Context)
	if err != nil {
		return nil, err
	}
	if err := validEmail(req.UserEmail); err != nil {
		return nil, err
	}
	if req.IP != "" && net.ParseIP(req.IP) == nil {
		return nil, invalid("ip must be a valid IPv4 or IPv6 address")
	}
	if req.UserAgent != "" && !printable(req.UserAgent, 512) {
		return nil, invalid("user_agent must be at most 512 printable characters")
	}
	methods := req.Methods
	if methods == nil {
		methods = []string{MethodPush, MethodEmail}
		if req.Action == ActionLinkDevice {
			methods = []string{MethodPush}
		}
	}
	if len(methods) == 0 || len(methods) > 2 {
		return nil, invalid("methods must list push, email or both")
	}
	seen := map[string]bool{}
	for _, m := range methods {
		if (m != MethodPush && m != MethodEmail) || seen[m] {
			return nil, invalid("methods must list push, email or both, each once")
		}
		seen[m] = true
	}
	ttl := 180
	if req.TTLSeconds != nil {
		ttl = *req.TTLSeconds
		if ttl < 30 || ttl > 600 {
			return nil, invalid("ttl_seconds must be between 30 and 600")
		}
	}
	if idemKey != "" && (len(idemKey) > 255 || !printable(idemKey, 255)) {
		return nil, invalid("Idempotency-Key must be 1 to 255 printable characters")
	}
	now := s.clock()
	var devices []Device
	if seen[MethodPush] {
		devices, err = s.store.ActiveDevices(ctx, req.UserID)
		if err != nil {
			return nil, internal("devices", err)
		}
	}
	ip := ""
	if req.IP != "" {
		ip = net.ParseIP(req.IP).String()
	}
	c := &Challenge{
		ID: auth.NewID(), UserID: req.UserID, Action: req.Action, Context: ctxJSON,
		UserEmail: req.UserEmail, RequesterIP: ip, RequesterUA: req.UserAgent,
		RequesterKey: req.UserID, Methods: strings.Join(methods, ","), Status: StatusPending,
		CreatedAt: now, ExpiresAt: now.Add(time.Duration(ttl) * time.Second), APIKeyName: a.Name,
	}
	if ip != "" {
		// The spec's requester is the pair (user_id, ip), the address as
		// given (normalised); the /64 grouping is for the IP failure limits.
		c.RequesterKey = req.UserID + "|" + ip
	}
	switch {
	case !seen[MethodPush]:
		c.DeliveryPush = DeliveryDisabled
	case len(devices) == 0:
		c.DeliveryPush = DeliveryNoDevice
	default:
		c.DeliveryPush = DeliverySent
		c.PushDevices = len(devices)
	}
	wantNumber := s.numberMatching(req.Action, req.NumberMatching != nil && *req.NumberMatching)
	if idemKey == "" {
		// No replay is possible: refuse before taking the user's lock.
		if err := s.checkLock(ctx, req.UserID, now); err != nil {
			return nil, err
		}
		if seen[MethodPush] && len(devices) == 0 && len(methods) == 1 {
			return nil, Errorf(CodeNoDevice, "the user has no linked device and push is the only method")
		}
	}
	n := NewChallenge{
		Challenge: c, Since: now.Add(-s.rules.LimitWindow),
		Audit: a.audit("challenge.created", "challenge", c.ID, c.UserID, now),
		// Check runs only for a new challenge: a retry with a known
		// Idempotency-Key gets the first answer whatever changed since.
		Check: func(k ChallengeCounts) error {
			if idemKey != "" {
				if err := s.checkLock(ctx, req.UserID, now); err != nil {
					return err
				}
				if seen[MethodPush] && len(devices) == 0 && len(methods) == 1 {
					return Errorf(CodeNoDevice, "the user has no linked device and push is the only method")
				}
			}
			if k.RequesterPending >= s.rules.RequesterMaxPending || k.UserPending >= s.rules.UserMaxPending {
				return rateLimited("too many pending challenges for this user", time.Minute)
			}
			if k.RequesterRecent >= s.rules.RequesterMaxRecent || k.UserRecent >= s.rules.UserMaxRecent {
				return rateLimited("too many challenges for this user recently", s.rules.LimitWindow)
			}
			c.Number = ""
			if wantNumber {
				num, err := s.pickNumber(k.Numbers)
				if err != nil {
					return err
				}
				c.Number = num
			}
			return nil
		},
	}
	if idemKey != "" {
		body, _ := json.Marshal(req)
		h := sha256.Sum256(body)
		n.IdemScope, n.IdemKey, n.IdemBodyHash = scope, idemKey, hex.EncodeToString(h[:])
		n.IdemExpiresAt = now.Add(24 * time.Hour)
	}
	stored, replayed, err := s.store.CreateChallenge(ctx, n)
	switch {
	case errors.Is(err, ErrIdemMismatch):
		return nil, invalid("this Idempotency-Key was used with a different body")
	case err != nil:
		var e *Error
		if errors.As(err, &e) {
			return nil, e
		}
		return nil, internal("create challenge", err)
	}
	if !replayed {
		s.metrics.ChallengeCreated(stored.Action)
		s.publishChallenge(ctx, stored)
		if len(devices) > 0 {
			state, pushed := s.pushChallenge(stored, devices)
			if state != stored.DeliveryPush || pushed != stored.PushDevices {
				if updated, err := s.store.SetDelivery(ctx, stored.ID, state, pushed, ""); err != nil {
					s.log.Error("record delivery", "challenge", stored.ID, "err", err)
				} else {
					stored = updated
					if !stored.Final() {
						s.publishChallenge(ctx, stored)
					}
				}
			}
		}
		if req.UserEmail != "" {
			if err := s.store.SetUserEmail(ctx, req.UserID, req.UserEmail, now); err != nil {
				s.log.Warn("remember user email", "err", err)
			}
		}
	}
	return &CreatedChallenge{Challenge: stored, WatchToken: s.watch.Mint(KindChallenge, stored.ID)}, nil
}

// pickNumber draws a number of the configured digits not in taken.
func (s *Service) pickNumber(taken map[string]bool) (string, error) {
	max := big.NewInt(1)
	for range s.rules.NumberDigits {
		max.Mul(max, big.NewInt(10))
	}
	for range 1000 {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", internal("random", err)
		}
		num := v.String()
		for len(num) < s.rules.NumberDigits {
			num = "0" + num
		}
		if !taken[num] {
			return num, nil
		}
	}
	return "", rateLimited("too many pending challenges for this user", time.Minute)
}

// GetChallenge returns a challenge; with wait > 0 it holds until the
// challenge is final or wait passes.
func (s *Service) GetChallenge(ctx context.Context, id string, wait time.Duration) (*Challenge, error) {
	var sub Subscription
	if wait > 0 {
		sub = s.events.Subscribe(challengeKey(id))
		defer sub.Close()
	}
	c, err := s.getChallenge(ctx, id)
	if err != nil || wait <= 0 {
		return c, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for !c.Final() {
		// Wake at expiry too: the sweeper publishes, but do not rely on it.
		untilExpiry := time.Until(c.ExpiresAt) + 50*time.Millisecond
		exp := time.NewTimer(max(untilExpiry, 10*time.Millisecond))
		select {
		case <-sub.C():
		case <-exp.C:
		case <-timer.C:
			exp.Stop()
			return c, nil
		case <-ctx.Done():
			exp.Stop()
			return c, nil
		case <-s.events.Stopping():
			exp.Stop()
			return c, nil
		}
		exp.Stop()
		if c, err = s.getChallenge(ctx, id); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (s *Service) getChallenge(ctx context.Context, id string) (*Challenge, error) {
	c, err := s.store.GetChallenge(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, Errorf(CodeNotFound, "no such challenge")
	}
	if err != nil {
		return nil, internal("get challenge", err)
	}
	if c.Status == StatusPending && !c.ExpiresAt.After(s.clock()) {
		// Past its time: expire it now rather than show pending until the
		// sweeper comes by (the same conditional update; one wins).
		if done, err := s.expire(ctx, c); err == nil {
			return done, nil
		} else if !isLost(err) {
			return nil, err
		}
		return s.store.GetChallenge(ctx, id)
	}
	return c, nil
}

// expire moves an overdue pending challenge to expired and tells watchers.
func (s *Service) expire(ctx context.Context, c *Challenge) (*Challenge, error) {
	now := s.clock()
	tok, err := s.resultToken(c, StatusExpired, "", now)
	if err != nil {
		return nil, err
	}
	done, err := s.store.Expire(ctx, c.ID, tok, now, system.audit("challenge.expired", "challenge", c.ID, c.UserID, now))
	if err != nil {
		if isLost(err) || errors.Is(err, ErrNotFound) {
			return nil, ErrLost
		}
		return nil, internal("expire", err)
	}
	s.finalized(ctx, done)
	return done, nil
}

// CancelChallenge cancels a pending challenge for the RP.
func (s *Service) CancelChallenge(ctx context.Context, a Actor, id string) (*Challenge, error) {
	c, err := s.getChallenge(ctx, id)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	if c.Final() || !c.ExpiresAt.After(now) {
		return nil, notPending(effectiveStatus(c, now))
	}
	done, err := s.finish(ctx, c, Decision{ID: id, Status: StatusCancelled, At: now,
		Audit: a.audit("challenge.cancelled", "challenge", id, c.UserID, now)})
	if isLost(err) {
		cur, gerr := s.getChallenge(ctx, id)
		if gerr != nil {
			return nil, gerr
		}
		return nil, notPending(effectiveStatus(cur, s.clock()))
	}
	return done, err
}

// effectiveStatus is the status a client should see: a pending challenge
// past its expiry is expired whether or not the sweeper has run.
func effectiveStatus(c *Challenge, now time.Time) string {
	if c.Status == StatusPending && !c.ExpiresAt.After(now) {
		return StatusExpired
	}
	return c.Status
}

// finish makes c final through the store's conditional update, then tells
// the watchers.
func (s *Service) finish(ctx context.Context, c *Challenge, d Decision) (*Challenge, error) {
	tok, err := s.resultToken(c, d.Status, d.Method, d.At)
	if err != nil {
		return nil, err
	}
	d.ResultToken = tok
	done, err := s.store.Decide(ctx, d)
	if err != nil {
		if isLost(err) {
			return nil, err
		}
		return nil, internal("decide", err)
	}
	s.finalized(ctx, done)
	return done, nil
}

// DecisionResult is the answer to a device's decision.
type DecisionResult struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// Decide applies a device's signed decision, checking in the protocol's
// order: the signature, the challenge and device, the status, the number.
func (s *Service) Decide(ctx context.Context, pathID, response, ip string) (*DecisionResult, error) {
	now := s.clock()
	keys := &deviceKeys{s: s}
	claims, err := auth.VerifyDecision(ctx, response, keys.lookup, s.rules.PublicURL, now)
	if se := (*storageError)(nil); errors.As(err, &se) {
		return nil, internal("device key", se.err)
	}
	if err != nil || claims.Cid != pathID {
		return nil, Errorf(CodeUnauthorized, "the decision is not validly signed for this challenge")
	}
	if err := s.rememberJTI(ctx, claims); err != nil {
		return nil, err
	}
	c, err := s.getChallenge(ctx, pathID)
	if err != nil {
		return nil, err
	}
	dev := keys.dev
	if dev.Status != DeviceActive || dev.UserID != c.UserID || !c.HasMethod(MethodPush) {
		return nil, Errorf(CodeForbidden, "this device may not decide this challenge")
	}
	if st := effectiveStatus(c, now); st == StatusExpired {
		return nil, Errorf(CodeExpired, "the challenge has expired")
	} else if st != StatusPending {
		return nil, notPending(st)
	}
	a := Actor{Type: ActorDevice, Name: dev.ID, IP: ip}
	status := StatusApproved
	if claims.Dec == "deny" {
		status = StatusDenied
	}
	if c.Number != "" && status == StatusApproved {
		if claims.Num == "" {
			return nil, invalid("this challenge needs the number shown in the browser (num)")
		}
		if subtle.ConstantTimeCompare([]byte(claims.Num), []byte(c.Number)) != 1 {
			return nil, s.numberMismatch(ctx, a, c, now)
		}
	}
	fraud := status == StatusDenied && claims.Fraud
	d := Decision{ID: c.ID, Status: status, Method: MethodPush, DeviceID: dev.ID,
		Fraud: fraud, At: now, Audit: a.audit("challenge."+status, "challenge", c.ID, c.UserID, now)}
	if fraud {
		d.LockUntil = now.Add(s.rules.FraudLock)
	}
	done, err := s.finish(ctx, c, d)
	if isLost(err) {
		return nil, s.lostAnswer(ctx, c.ID)
	}
	if err != nil {
		return nil, err
	}
	if fraud {
		s.fraudReported(ctx, a, done.UserID, done.ID)
	}
	return &DecisionResult{ID: done.ID, Status: done.Status}, nil
}

// lostAnswer is the error for a decision that lost the race.
func (s *Service) lostAnswer(ctx context.Context, id string) error {
	cur, err := s.getChallenge(ctx, id)
	if err != nil {
		return err
	}
	st := effectiveStatus(cur, s.clock())
	if st == StatusExpired {
		return Errorf(CodeExpired, "the challenge has expired")
	}
	return notPending(st)
}

// numberMismatch counts a wrong number; the last allowed attempt denies.
func (s *Service) numberMismatch(ctx context.Context, a Actor, c *Challenge, now time.Time) error {
	n, err := s.store.CountNumberMismatch(ctx, c.ID, now, a.audit("challenge.number_mismatch", "challenge", c.ID, c.UserID, now))
	if isLost(err) {
		return s.lostAnswer(ctx, c.ID)
	}
	if err != nil {
		return internal("count mismatch", err)
	}
	if n >= s.rules.MaxNumberAttempts {
		_, err := s.finish(ctx, c, Decision{ID: c.ID, Status: StatusDenied, Method: a.method(), DeviceID: a.deviceID(), At: now,
			Audit: a.audit("challenge.denied", "challenge", c.ID, c.UserID, now)})
		if err != nil && !isLost(err) {
			return err
		}
		return &Error{Code: CodeNumberMismatch, Detail: "wrong number; too many attempts, the challenge is denied"}
	}
	return &Error{Code: CodeNumberMismatch, Detail: "wrong number"}
}

func (a Actor) method() string {
	if a.Type == ActorLink {
		return MethodEmail
	}
	return MethodPush
}

func (a Actor) deviceID() string {
	if a.Type == ActorDevice {
		return a.Name
	}
	return ""
}

// fraudReported records a fraud report (the lock itself was written with
// the report's own change) and cancels every other pending challenge of
// the user, with the usual frames and resolved pushes.
func (s *Service) fraudReported(ctx context.Context, a Actor, userID, objectID string) {
	now := s.clock()
	if err := s.store.Audit(ctx, a.audit("fraud.reported", "user", objectID, userID, now)); err != nil {
		s.log.Error("audit fraud report", "err", err)
	}
	pending, err := s.store.PendingChallenges(ctx, userID, now)
	if err != nil {
		s.log.Error("list pending after fraud report", "err", err)
		return
	}
	for i := range pending {
		p := &pending[i]
		_, err := s.finish(ctx, p, Decision{ID: p.ID, Status: StatusCancelled, At: now,
			Audit: a.audit("challenge.cancelled", "challenge", p.ID, p.UserID, now)})
		if err != nil && !isLost(err) {
			s.log.Error("cancel after fraud report", "challenge", p.ID, "err", err)
		}
	}
}

// finalized tells watchers, the devices and the metrics that c is final.
func (s *Service) finalized(ctx context.Context, c *Challenge) {
	s.publishChallenge(ctx, c)
	s.pushResolved(ctx, c)
	end := c.ExpiresAt
	if c.DecidedAt != nil {
		end = *c.DecidedAt
	}
	s.metrics.ChallengeFinal(c.Action, c.Status, c.Method, end.Sub(c.CreatedAt))
}

// ExpireDue moves overdue challenges and enrollments to expired; it is
// safe to run on every instance at once.
func (s *Service) ExpireDue(ctx context.Context) error {
	now := s.clock()
	due, err := s.store.DueChallenges(ctx, now, 500)
	if err != nil {
		return internal("due challenges", err)
	}
	for i := range due {
		if _, err := s.expire(ctx, &due[i]); err != nil && !isLost(err) {
			return err
		}
	}
	ens, err := s.store.DueEnrollments(ctx, now, 500)
	if err != nil {
		return internal("due enrollments", err)
	}
	for i := range ens {
		e, err := s.store.EndEnrollment(ctx, ens[i].ID, now, system.audit("enrollment.expired", "enrollment", ens[i].ID, ens[i].UserID, now))
		if isLost(err) {
			continue
		}
		if err != nil {
			return internal("end enrollment", err)
		}
		s.publishEnrollment(ctx, e)
	}
	return nil
}
