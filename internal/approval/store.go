package approval

import (
	"context"
	"errors"
	"time"
)

// Store errors. Implementations return these (possibly wrapped).
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict") // a unique value (API key name) is taken
	// ErrLost means a conditional update changed nothing: the object was
	// no longer in the state the update required (another decision won,
	// it expired, the code was used).
	ErrLost = errors.New("lost the race")
)

// ChallengeCounts are the anti-fatigue figures for a new challenge, read
// inside the creating transaction under a per-user lock.
type ChallengeCounts struct {
	RequesterPending int // pending, unexpired challenges with the same RequesterKey
	RequesterRecent  int // challenges with the same RequesterKey created since Since
	UserPending      int // pending, unexpired challenges of the user
	UserRecent       int // challenges of the user created since Since
	// Numbers holds the numbers of the user's pending challenges.
	Numbers map[string]bool
}

// NewChallenge is what CreateChallenge needs beyond the challenge itself.
type NewChallenge struct {
	Challenge *Challenge // fully filled in except Number, which Check sets
	// Idempotency, when IdemKey is set: the scope (API key id) and the hash
	// of the request body. A second create with the same scope and key
	// returns the first challenge instead of inserting.
	IdemScope, IdemKey, IdemBodyHash string
	IdemExpiresAt                    time.Time
	// Since is the start of the limits' window.
	Since time.Time
	// Check is called inside the transaction, under a per-user lock, with
	// the current counts; it returns an error to refuse (nothing is
	// written) or sets Challenge.Number.
	Check func(ChallengeCounts) error
	Audit AuditEntry
}

// Decision is a conditional move of a pending, unexpired challenge to a
// final status.
type Decision struct {
	ID          string
	Status      string // approved, denied, cancelled
	Method      string // push, email, or "" for cancel
	DeviceID    string
	Fraud       bool
	ResultToken string
	At          time.Time
	Audit       AuditEntry
	// LockUntil, for a fraud report: the user is locked until then in the
	// same transaction.
	LockUntil time.Time
	// LinkHash, for a decision by email link: the link is used up in the
	// same transaction, and the decision is refused (ErrLost) if it was
	// used already.
	LinkHash string
}

// Link is the atomic linking of a device through an enrollment.
type Link struct {
	EnrollmentID string
	Device       *Device // to insert, status active
	MaxDevices   int     // after linking, the oldest active devices beyond this are retired
	// RequireStepUp: refuse (ErrStepUpRequired, nothing written) when the
	// user has an active device and the enrollment has no authorized_by.
	At    time.Time
	Audit AuditEntry
}

// ErrStepUpRequired is returned by LinkDevice when the user already has an
// active device and the enrollment carries no authorized_by.
var ErrStepUpRequired = errors.New("step-up required")

// LinkResult is what linking changed.
type LinkResult struct {
	Enrollment *Enrollment // now linked
	Retired    []Device    // devices retired by this link
}

// Store is the persistence approval needs. Every method that changes state
// is atomic: it writes its audit entry in the same transaction, and its
// conditional updates are the single place where races are settled.
// Objects carry a Version that every change increments.
type Store interface {
	// Secrets shared by every instance (signing key, watch-token key).
	// GetOrCreateSecret returns the stored value of name, storing
	// make()'s value first if there is none (the first writer wins).
	GetOrCreateSecret(ctx context.Context, name string, make func() ([]byte, error)) ([]byte, error)

	// API keys.
	CreateAPIKey(ctx context.Context, k *APIKey) error // ErrConflict if the name is taken by an unrevoked key
	APIKeyByHash(ctx context.Context, hash string) (*APIKey, error)
	ListAPIKeys(ctx context.Context) ([]APIKey, error)
	RevokeAPIKey(ctx context.Context, name string, at time.Time) error // ErrNotFound

	// Users.
	SetUserEmail(ctx context.Context, userID, email string, at time.Time) error
	UserEmail(ctx context.Context, userID string) (string, error)       // "" when none
	LockUser(ctx context.Context, userID string, until time.Time) error // extends, never shortens
	UserLockedUntil(ctx context.Context, userID string) (time.Time, error)

	// Enrollments. CreateEnrollment ends (status expired, version+1) every
	// other pending enrollment of the user and returns them; when
	// stepUpChallenge is set it consumes that challenge in the same
	// transaction (ConsumeStepUp's conditions) or returns ErrLost.
	CreateEnrollment(ctx context.Context, e *Enrollment, stepUpChallenge string, stepUpSince time.Time, audit AuditEntry) (ended []Enrollment, err error)
	GetEnrollment(ctx context.Context, id string) (*Enrollment, error)
	EnrollmentByCodeHash(ctx context.Context, codeHash string) (*Enrollment, error)
	// LinkDevice, in one transaction: moves the enrollment pending→linked
	// (only if unexpired at l.At, else ErrLost), refuses with
	// ErrStepUpRequired when the user has an active device and the
	// enrollment has no AuthorizedBy, inserts the device, and retires the
	// oldest active devices beyond MaxDevices.
	LinkDevice(ctx context.Context, l Link) (*LinkResult, error)
	// EndEnrollment moves a pending enrollment to expired (ErrLost if it
	// was not pending). Used by the sweeper and the step-up re-check.
	EndEnrollment(ctx context.Context, id string, at time.Time, audit AuditEntry) (*Enrollment, error)
	// DueEnrollments lists pending enrollments whose expires_at <= now.
	DueEnrollments(ctx context.Context, now time.Time, limit int) ([]Enrollment, error)

	// Devices.
	GetDevice(ctx context.Context, id string) (*Device, error)
	ActiveDevices(ctx context.Context, userID string) ([]Device, error) // oldest first
	// RemoveDevice moves an active device of the user to removed
	// (ErrNotFound when there is no such active device). When
	// stepUpChallenge is set it is consumed in the same transaction
	// (ConsumeStepUp's conditions; ErrLost and nothing removed otherwise).
	RemoveDevice(ctx context.Context, userID, deviceID, stepUpChallenge string, stepUpSince, at time.Time, audit AuditEntry) (*Device, error)
	SetPushToken(ctx context.Context, deviceID, provider, token string, audit AuditEntry) error
	// InvalidatePushToken marks the token dead only if it is still the
	// device's current token.
	InvalidatePushToken(ctx context.Context, deviceID, token string, audit AuditEntry) error
	TouchDevice(ctx context.Context, deviceID string, at time.Time) error

	// Challenges.
	// CreateChallenge inserts n.Challenge after n.Check accepts, or, when
	// the idempotency key was seen, returns the earlier challenge and
	// replayed=true (ErrIdemMismatch if its body hash differs).
	CreateChallenge(ctx context.Context, n NewChallenge) (c *Challenge, replayed bool, err error)
	GetChallenge(ctx context.Context, id string) (*Challenge, error)
	// Decide applies d only if the challenge is pending and expires_at > d.At;
	// else ErrLost. Returns the updated challenge.
	Decide(ctx context.Context, d Decision) (*Challenge, error)
	// Expire moves a pending challenge whose expires_at <= at to expired,
	// with its result token (ErrLost otherwise).
	Expire(ctx context.Context, id, resultToken string, at time.Time, audit AuditEntry) (*Challenge, error)
	DueChallenges(ctx context.Context, now time.Time, limit int) ([]Challenge, error)
	// ConsumeStepUp marks an approved link_device challenge of userID,
	// decided at or after since and never used, as used (at); ErrLost if
	// any condition fails. Returns the challenge.
	ConsumeStepUp(ctx context.Context, challengeID, userID string, since, at time.Time) (*Challenge, error)
	// CountNumberMismatch increments number_attempts of a pending,
	// unexpired challenge and returns the new count (ErrLost otherwise).
	CountNumberMismatch(ctx context.Context, id string, at time.Time, audit AuditEntry) (int, error)
	// PendingChallenges lists the user's pending, unexpired challenges
	// (oldest first).
	PendingChallenges(ctx context.Context, userID string, now time.Time) ([]Challenge, error)
	// SetDelivery records delivery.push (and the number of devices pushed
	// to, unless pushDevices < 0) or delivery.email; "" leaves a field
	// alone. Version+1.
	SetDelivery(ctx context.Context, id, push string, pushDevices int, email string) (*Challenge, error)

	// Email links. RequestEmail, in one transaction: counts one more email
	// on a pending, unexpired challenge with fewer than maxEmails sent
	// (ErrLost otherwise), moves expires_at to the later of itself and
	// newExpiry, sets delivery_email to "sending", and stores link.
	RequestEmail(ctx context.Context, id string, link EmailLink, newExpiry time.Time, maxEmails int, audit AuditEntry) (*Challenge, error)
	CreateEmailLink(ctx context.Context, link EmailLink) error
	GetEmailLink(ctx context.Context, hash string) (*EmailLink, error)
	// UndoDeviceLink, in one transaction: uses up a device link (ErrLost
	// if used or expired), removes its device if still active, reactivates
	// the devices whose retirement that device's linking caused, and locks
	// the user until lockUntil (when not zero).
	UndoDeviceLink(ctx context.Context, hash string, at, lockUntil time.Time, audit AuditEntry) (removed *Device, reactivated []Device, err error)

	// Replay cache: Remember returns false if (iss, jti) was already seen.
	RememberJTI(ctx context.Context, iss, jti string, expiresAt time.Time) (bool, error)

	// Failed enrollment codes, counted per IP key and overall.
	RecordCodeFailure(ctx context.Context, ipKey string, at time.Time) error
	CodeFailures(ctx context.Context, ipKey string, since time.Time) (perIP, total int, err error)
	// ClaimCodeAttempt counts one code attempt from ipKey at at as a
	// failure, unless ipKey already has perIPMax failures at or after since
	// or everyone together more than totalMax (ok false, nothing written).
	// The check and the count are one step for all callers, so concurrent
	// guesses cannot pass the limit together. ReleaseCodeAttempt(id) undoes
	// the claim of an attempt that turned out not to be a failure.
	ClaimCodeAttempt(ctx context.Context, ipKey string, at, since time.Time, perIPMax, totalMax int) (id int64, ok bool, err error)
	ReleaseCodeAttempt(ctx context.Context, id int64) error
	// Hit counts one event in a fixed window for key and returns the count
	// in the current window (per-device request limits).
	Hit(ctx context.Context, key string, window time.Duration, now time.Time) (int, error)

	// Audit writes an entry that is not part of another change.
	Audit(ctx context.Context, e AuditEntry) error
	AuditLog(ctx context.Context, objectID string) ([]AuditEntry, error)

	// Purge deletes replay entries, failures, counters and idempotency
	// keys that are past their lifetime.
	Purge(ctx context.Context, now time.Time) error
	Ping(ctx context.Context) error
	Close() error
}

// ErrIdemMismatch: an Idempotency-Key reused with a different body.
var ErrIdemMismatch = errors.New("idempotency key reused with a different body")
