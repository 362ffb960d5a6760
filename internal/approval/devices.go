package approval

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"net/url"
	"time"

	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/clicktopurchase/approvald/internal/jws"
	"github.com/clicktopurchase/approvald/push"
)

// CreateEnrollmentRequest is the body of POST /v1/enrollments.
type CreateEnrollmentRequest struct {
	UserID       string `json:"user_id"`
	UserEmail    string `json:"user_email,omitempty"`
	AuthorizedBy string `json:"authorized_by,omitempty"`
}

// CreatedEnrollment is the answer to POST /v1/enrollments.
type CreatedEnrollment struct {
	Enrollment *Enrollment
	Code       string // XXXX-XXXX
	EnrollURI  string
	WatchToken string
}

// CreateEnrollment starts linking a device. A user who has an active
// device must present an approved link_device challenge (step-up).
func (s *Service) CreateEnrollment(ctx context.Context, a Actor, req CreateEnrollmentRequest) (*CreatedEnrollment, error) {
	if err := validUserID(req.UserID); err != nil {
		return nil, err
	}
	if err := validEmail(req.UserEmail); err != nil {
		return nil, err
	}
	if len(req.AuthorizedBy) > 64 {
		return nil, invalid("authorized_by is not a challenge id")
	}
	now := s.clock()
	if err := s.checkLock(ctx, req.UserID, now); err != nil {
		return nil, err
	}
	devices, err := s.store.ActiveDevices(ctx, req.UserID)
	if err != nil {
		return nil, internal("devices", err)
	}
	stepUpMethod := ""
	if req.AuthorizedBy != "" {
		c, err := s.store.GetChallenge(ctx, req.AuthorizedBy)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, internal("get challenge", err)
		}
		if err != nil || !s.validStepUp(c, req.UserID, now) {
			return nil, Errorf(CodeStepUpRequired, "authorized_by must be an approved link_device challenge of this user, decided within the last 10 minutes and not used before")
		}
		stepUpMethod = c.Method
	} else if len(devices) > 0 {
		return nil, Errorf(CodeStepUpRequired, "the user already has a linked device: approve a link_device challenge first and pass its id as authorized_by")
	}
	code := auth.NewEnrollmentCode()
	e := &Enrollment{
		ID: auth.NewID(), UserID: req.UserID, CodeHash: auth.HashSecret(code), Status: EnrollPending,
		CreatedAt: now, ExpiresAt: now.Add(s.rules.EnrollmentTTL), UserEmail: req.UserEmail,
		AuthorizedBy: req.AuthorizedBy, StepUpMethod: stepUpMethod, APIKeyName: a.Name,
	}
	ended, err := s.store.CreateEnrollment(ctx, e, req.AuthorizedBy, now.Add(-s.rules.StepUpWindow),
		withStepUp(a.audit("enrollment.created", "enrollment", e.ID, e.UserID, now), req.AuthorizedBy, stepUpMethod))
	if isLost(err) {
		return nil, Errorf(CodeStepUpRequired, "authorized_by was already used")
	}
	if err != nil {
		return nil, internal("create enrollment", err)
	}
	for i := range ended {
		s.publishEnrollment(ctx, &ended[i])
	}
	if req.UserEmail != "" {
		if err := s.store.SetUserEmail(ctx, req.UserID, req.UserEmail, now); err != nil {
			s.log.Warn("remember user email", "err", err)
		}
	}
	uri := "ctpapprove://link?code=" + code + "&url=" + url.QueryEscape(s.rules.PublicURL)
	return &CreatedEnrollment{Enrollment: e, Code: auth.FormatCode(code), EnrollURI: uri,
		WatchToken: s.watch.Mint(KindEnrollment, e.ID)}, nil
}

func (s *Service) validStepUp(c *Challenge, userID string, now time.Time) bool {
	return c.UserID == userID && c.Action == ActionLinkDevice && c.Status == StatusApproved &&
		c.DecidedAt != nil && !c.DecidedAt.Before(now.Add(-s.rules.StepUpWindow)) && c.StepUpUsedAt == nil
}

// GetEnrollment returns an enrollment for the RP.
func (s *Service) GetEnrollment(ctx context.Context, id string) (*Enrollment, error) {
	e, err := s.store.GetEnrollment(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, Errorf(CodeNotFound, "no such enrollment")
	}
	if err != nil {
		return nil, internal("get enrollment", err)
	}
	return e, nil
}

// PushRegistration is the push member of a device registration.
type PushRegistration struct {
	Provider string `json:"provider"`
	Token    string `json:"token,omitempty"`
}

// LinkDeviceRequest is the body of POST /v1/devices.
type LinkDeviceRequest struct {
	Code      string           `json:"code"`
	Name      string           `json:"name"`
	Platform  string           `json:"platform"`
	PublicKey *jws.JWK         `json:"public_key"`
	Push      PushRegistration `json:"push"`
	Proof     string           `json:"proof"`
}

// LinkedDevice is the answer to POST /v1/devices.
type LinkedDevice struct {
	DeviceID string `json:"device_id"`
	UserID   string `json:"user_id"`
	Audience string `json:"audience"`
}

func validPush(p PushRegistration) error {
	switch p.Provider {
	case "fcm", "apns":
		if p.Token == "" || len(p.Token) > 4096 || !printable(p.Token, 4096) {
			return invalid("push.token is required for fcm and apns (at most 4096 printable characters)")
		}
	case "none":
		if p.Token != "" {
			return invalid("push.token must be empty with provider none")
		}
	default:
		return invalid("push.provider must be fcm, apns or none")
	}
	return nil
}

// LinkDevice links the caller's device with an enrollment code. Failed
// codes count against the caller's IP (and all callers together); the
// limit is checked before the code.
func (s *Service) LinkDevice(ctx context.Context, ip string, req LinkDeviceRequest) (*LinkedDevice, error) {
	now := s.clock()
	ipKey := IPKey(ip)
	// The attempt is counted as a failed code before the code is looked at,
	// in the same step as the limit check, so that concurrent guesses cannot
	// all pass a limit that none of them has reached yet. Every outcome but
	// a wrong, used or expired code gives the count back.
	claim, ok, err := s.store.ClaimCodeAttempt(ctx, ipKey, now, now.Add(-s.rules.CodeWindow), s.rules.CodeFailuresPerIP, s.rules.CodeFailuresTotal)
	if err != nil {
		return nil, internal("code failures", err)
	}
	if !ok {
		return nil, rateLimited("too many wrong enrollment codes; try again later", s.rules.CodeWindow)
	}
	failed := false
	defer func() {
		if !failed {
			if err := s.store.ReleaseCodeAttempt(context.WithoutCancel(ctx), claim); err != nil {
				s.log.Error("release code attempt", "err", err)
			}
		}
	}()
	wrongCode := func() error {
		failed = true
		return Errorf(CodeInvalidCode, "the code is wrong, used or expired")
	}
	if !printable(req.Name, 64) {
		return nil, invalid("name must be 1 to 64 printable characters")
	}
	switch req.Platform {
	case "ios", "android", "other":
	default:
		return nil, invalid("platform must be ios, android or other")
	}
	if err := validPush(req.Push); err != nil {
		return nil, err
	}
	if req.PublicKey == nil {
		return nil, invalid("public_key is required")
	}
	pub, err := jws.PublicKeyFromJWK(*req.PublicKey)
	if err != nil {
		return nil, invalid("public_key: %v", err)
	}
	if req.Code == "" || len(req.Code) > 64 {
		return nil, invalid("code is required")
	}
	proofCode, err := auth.VerifyEnrollmentProof(req.Proof, pub, now)
	if err != nil {
		return nil, invalid("proof must be a JWS over {code, iat} signed by public_key, made within 5 minutes")
	}
	code, ok := auth.NormalizeCode(req.Code)
	if !ok {
		return nil, wrongCode()
	}
	if proofCode != code {
		return nil, invalid("the proof's code does not match the code")
	}
	e, err := s.store.EnrollmentByCodeHash(ctx, auth.HashSecret(code))
	if errors.Is(err, ErrNotFound) {
		return nil, wrongCode()
	}
	if err != nil {
		return nil, internal("find enrollment", err)
	}
	if e.Status != EnrollPending || !e.ExpiresAt.After(now) {
		return nil, wrongCode()
	}
	jwk := jws.JWKFromPublicKey(pub)
	keyJSON, _ := json.Marshal(jwk)
	dev := &Device{
		ID: auth.NewID(), UserID: e.UserID, Name: req.Name, Platform: req.Platform, PublicKey: string(keyJSON),
		PushProvider: req.Push.Provider, PushToken: req.Push.Token, Status: DeviceActive, CreatedAt: now,
		EnrollmentID: e.ID, LinkIP: ip,
	}
	a := Actor{Type: ActorDevice, Name: dev.ID, IP: ip}
	res, err := s.store.LinkDevice(ctx, Link{EnrollmentID: e.ID, Device: dev, MaxDevices: s.rules.MaxDevicesPerUser, At: now,
		Audit: withStepUp(a.audit("device.linked", "device", dev.ID, e.UserID, now), e.AuthorizedBy, e.StepUpMethod)})
	switch {
	case errors.Is(err, ErrStepUpRequired):
		ended, err := s.store.EndEnrollment(ctx, e.ID, now, a.audit("enrollment.ended_step_up", "enrollment", e.ID, e.UserID, now))
		if err == nil {
			s.publishEnrollment(ctx, ended)
		} else if !isLost(err) {
			s.log.Error("end enrollment", "err", err)
		}
		return nil, Errorf(CodeInvalidCode, "the code is wrong, used or expired")
	case isLost(err):
		return nil, wrongCode()
	case err != nil:
		return nil, internal("link device", err)
	}
	s.publishEnrollment(ctx, res.Enrollment)
	// The retired devices hear it first, then stop receiving pushes.
	s.pushSilent(res.Retired, push.Message{Kind: push.KindRetired})
	s.noticeNewDevice(ctx, res.Enrollment, dev)
	return &LinkedDevice{DeviceID: dev.ID, UserID: dev.UserID, Audience: s.rules.PublicURL}, nil
}

// deviceKeys is the key lookup for device JWS verification; it keeps the
// device it read so that the caller need not read it again.
type deviceKeys struct {
	s   *Service
	dev *Device
}

func (k *deviceKeys) lookup(ctx context.Context, id string) (*ecdsa.PublicKey, error) {
	if id == "" || len(id) > 64 {
		return nil, ErrNotFound
	}
	d, err := k.s.store.GetDevice(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if err != nil {
		return nil, &storageError{err}
	}
	var j jws.JWK
	if err := json.Unmarshal([]byte(d.PublicKey), &j); err != nil {
		return nil, err
	}
	k.dev = d
	return jws.PublicKeyFromJWK(j)
}

func (s *Service) rememberJTI(ctx context.Context, c *auth.DeviceClaims) error {
	fresh, err := s.store.RememberJTI(ctx, c.Iss, c.Jti, time.Unix(c.Exp, 0).Add(time.Minute))
	if err != nil {
		return internal("replay cache", err)
	}
	if !fresh {
		return Errorf(CodeUnauthorized, "this assertion was already used")
	}
	return nil
}

// AuthenticateDevice checks a device assertion (signature, audience,
// lifetime, replay) and returns the active device it names.
func (s *Service) AuthenticateDevice(ctx context.Context, assertion string) (*Device, error) {
	now := s.clock()
	keys := &deviceKeys{s: s}
	claims, err := auth.VerifyAssertion(ctx, assertion, keys.lookup, s.rules.PublicURL, now)
	if se := (*storageError)(nil); errors.As(err, &se) {
		return nil, internal("device key", se.err)
	}
	if err != nil {
		return nil, Errorf(CodeUnauthorized, "a valid device assertion is required")
	}
	if err := s.rememberJTI(ctx, claims); err != nil {
		return nil, err
	}
	d := keys.dev
	if d.Status != DeviceActive {
		return nil, Errorf(CodeUnauthorized, "this device is no longer linked")
	}
	if d.LastSeenAt == nil || now.Sub(*d.LastSeenAt) > time.Minute {
		if err := s.store.TouchDevice(ctx, d.ID, now); err != nil {
			s.log.Warn("touch device", "err", err)
		}
	}
	return d, nil
}

// DeviceChallenges lists the pending push challenges of the device's user;
// with wait > 0 and none pending, it holds until one arrives or wait passes.
func (s *Service) DeviceChallenges(ctx context.Context, d *Device, wait time.Duration) ([]Challenge, error) {
	now := s.clock()
	n, err := s.store.Hit(ctx, "device:"+d.ID, time.Minute, now)
	if err != nil {
		return nil, internal("rate", err)
	}
	if n > s.rules.DeviceRequestsPerMinute {
		return nil, rateLimited("too many requests from this device", time.Minute-now.Sub(now.Truncate(time.Minute)))
	}
	var sub Subscription
	if wait > 0 {
		sub = s.events.Subscribe(userKey(d.UserID))
		defer sub.Close()
	}
	deadline := time.NewTimer(max(wait, 0))
	defer deadline.Stop()
	for {
		list, err := s.store.PendingChallenges(ctx, d.UserID, s.clock())
		if err != nil {
			return nil, internal("pending", err)
		}
		out := list[:0]
		for _, c := range list {
			if c.HasMethod(MethodPush) {
				out = append(out, c)
			}
		}
		if len(out) > 0 || wait <= 0 {
			return out, nil
		}
		select {
		case <-sub.C():
		case <-deadline.C:
			return out, nil
		case <-ctx.Done():
			return out, nil
		case <-s.events.Stopping():
			return out, nil
		}
	}
}

// ListDevices lists a user's active devices.
func (s *Service) ListDevices(ctx context.Context, userID string) ([]Device, error) {
	if err := validUserID(userID); err != nil {
		return nil, err
	}
	d, err := s.store.ActiveDevices(ctx, userID)
	if err != nil {
		return nil, internal("devices", err)
	}
	return d, nil
}

// RemoveDevice unlinks a device for the RP, optionally authorised by a
// step-up challenge, which is then used up.
func (s *Service) RemoveDevice(ctx context.Context, a Actor, userID, deviceID, authorizedBy string) error {
	if err := validUserID(userID); err != nil {
		return err
	}
	now := s.clock()
	if authorizedBy != "" {
		c, err := s.store.GetChallenge(ctx, authorizedBy)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return internal("get challenge", err)
		}
		if err != nil || !s.validStepUp(c, userID, now) {
			return Errorf(CodeStepUpRequired, "authorized_by must be an approved link_device challenge of this user, decided within the last 10 minutes and not used before")
		}
	}
	audit := a.audit("device.removed", "device", deviceID, userID, now)
	if authorizedBy != "" {
		audit.Detail, _ = json.Marshal(map[string]string{"authorized_by": authorizedBy})
	}
	_, err := s.store.RemoveDevice(ctx, userID, deviceID, authorizedBy, now.Add(-s.rules.StepUpWindow), now, audit)
	switch {
	case errors.Is(err, ErrNotFound):
		return Errorf(CodeNotFound, "no such linked device for this user")
	case isLost(err):
		return Errorf(CodeStepUpRequired, "authorized_by was already used")
	case err != nil:
		return internal("remove device", err)
	}
	return nil
}

// UnlinkSelf removes the calling device.
func (s *Service) UnlinkSelf(ctx context.Context, d *Device, ip string) error {
	now := s.clock()
	a := Actor{Type: ActorDevice, Name: d.ID, IP: ip}
	_, err := s.store.RemoveDevice(ctx, d.UserID, d.ID, "", time.Time{}, now, a.audit("device.removed", "device", d.ID, d.UserID, now))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return internal("unlink", err)
	}
	return nil
}

// SetPushToken records the device's new push registration.
func (s *Service) SetPushToken(ctx context.Context, d *Device, ip string, p PushRegistration) error {
	if err := validPush(p); err != nil {
		return err
	}
	now := s.clock()
	a := Actor{Type: ActorDevice, Name: d.ID, IP: ip}
	if err := s.store.SetPushToken(ctx, d.ID, p.Provider, p.Token, a.audit("device.push_token", "device", d.ID, d.UserID, now)); err != nil {
		return internal("set push token", err)
	}
	return nil
}

// storageError marks a key lookup that failed for want of the database,
// so that it answers 500, not 401.
type storageError struct{ err error }

func (e *storageError) Error() string { return "storage: " + e.err.Error() }
func (e *storageError) Unwrap() error { return e.err }

// withStepUp records in an audit entry the step-up that authorised it.
func withStepUp(e AuditEntry, authorizedBy, method string) AuditEntry {
	if method != "" {
		e.Detail, _ = json.Marshal(map[string]string{"authorized_by": authorizedBy, "step_up_method": method})
	}
	return e
}
