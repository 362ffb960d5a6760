// Package approval is the domain of approvald: challenges, enrollments and
// devices, the rules that govern them (limits, step-up, number matching,
// fraud locks) and the Service that orchestrates them. It knows nothing of
// HTTP, SQL or Redis: it declares the small interfaces it needs.
package approval

import (
	"encoding/json"
	"time"
)

// Challenge statuses. A challenge starts pending and reaches exactly one
// final status, which never changes.
const (
	StatusPending   = "pending"
	StatusApproved  = "approved"
	StatusDenied    = "denied"
	StatusExpired   = "expired"
	StatusCancelled = "cancelled"
)

// Enrollment statuses.
const (
	EnrollPending = "pending"
	EnrollLinked  = "linked"
	EnrollExpired = "expired"
)

// Device statuses. Only active devices receive pushes and may decide.
const (
	DeviceActive  = "active"
	DeviceRetired = "retired"
	DeviceRemoved = "removed"
)

// Methods a challenge may be decided by.
const (
	MethodPush  = "push"
	MethodEmail = "email"
)

// Delivery states reported in delivery.push / delivery.email.
const (
	DeliverySent     = "sent"
	DeliveryNoDevice = "no_device"
	DeliveryFailed   = "failed"
	DeliveryDisabled = "disabled"
	DeliveryPending  = "pending"
)

// ActionLinkDevice is the action whose approval authorises a device change.
const ActionLinkDevice = "link_device"

// Challenge is one request for approval.
type Challenge struct {
	ID             string
	UserID         string
	Action         string
	Context        json.RawMessage // a JSON object of strings, member order kept
	UserEmail      string
	RequesterIP    string
	RequesterUA    string
	RequesterKey   string // the limit key: user_id + "|" + ip, or user_id
	Methods        string // comma-separated: "push,email"
	Number         string // "" without number matching
	Status         string
	CreatedAt      time.Time
	ExpiresAt      time.Time
	DecidedAt      *time.Time
	Method         string
	DeviceID       string
	FraudReported  bool
	ResultToken    string
	NumberAttempts int
	DeliveryPush   string
	DeliveryEmail  string
	PushDevices    int
	EmailsSent     int
	StepUpUsedAt   *time.Time
	APIKeyName     string
	Version        int64
}

// HasMethod reports whether m is among the challenge's methods.
func (c *Challenge) HasMethod(m string) bool {
	for _, x := range splitMethods(c.Methods) {
		if x == m {
			return true
		}
	}
	return false
}

// Final reports whether the challenge has reached a final status.
func (c *Challenge) Final() bool { return c.Status != StatusPending }

// Enrollment is one attempt to link a device with a code.
type Enrollment struct {
	ID           string
	UserID       string
	CodeHash     string
	Status       string
	CreatedAt    time.Time
	ExpiresAt    time.Time
	EndedAt      *time.Time
	UserEmail    string
	AuthorizedBy string
	StepUpMethod string
	DeviceID     string
	DeviceName   string
	APIKeyName   string
	Version      int64
}

// Final reports whether the enrollment has reached a final status.
func (e *Enrollment) Final() bool { return e.Status != EnrollPending }

// Device is a linked phone (or the simulator).
type Device struct {
	ID               string
	UserID           string
	Name             string
	Platform         string
	PublicKey        string // JWK JSON
	PushProvider     string
	PushToken        string
	PushTokenInvalid bool
	Status           string
	CreatedAt        time.Time
	LastSeenAt       *time.Time
	EndedAt          *time.Time
	EnrollmentID     string
	RetiredBy        string // the device whose linking retired this one
	LinkIP           string
}

// APIKey is a relying party's credential; only its hash is stored.
type APIKey struct {
	ID        string
	Name      string
	Hash      string
	CreatedAt time.Time
	RevokedAt *time.Time
}

// Actor types in the audit log.
const (
	ActorAPIKey  = "api_key"
	ActorDevice  = "device"
	ActorLink    = "link"
	ActorBrowser = "browser" // the waiting page, with its watch token
	ActorSystem  = "system"
)

// AuditEntry is one state change: who, what, when, from where.
type AuditEntry struct {
	At         time.Time
	ActorType  string
	Actor      string
	Event      string
	ObjectType string
	ObjectID   string
	UserID     string
	IP         string
	Detail     json.RawMessage
}

// Email link kinds.
const (
	LinkChallenge = "challenge" // approves (or reports) a challenge
	LinkDevice    = "device"    // "This wasn't me" for a newly linked device
)

// EmailLink is a single-use link mailed to a user; only its hash is stored.
type EmailLink struct {
	Hash        string
	Kind        string
	ChallengeID string
	DeviceID    string
	UserID      string
	CreatedAt   time.Time
	ExpiresAt   time.Time // a challenge link dies with its challenge instead
	UsedAt      *time.Time
}
