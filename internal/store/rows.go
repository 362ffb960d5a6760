package store

import (
	"database/sql"
	"encoding/json"

	"github.com/clicktopurchase/approvald/internal/approval"
)

// Rows as stored; each converts to its approval type.

const challengeCols = `id, user_id, action, context, user_email, requester_ip, requester_ua,
	requester_key, methods, number, status, created_at, expires_at, decided_at, method,
	device_id, fraud_reported, result_token, number_attempts, delivery_push, delivery_email,
	push_devices, emails_sent, step_up_used_at, api_key_name, version`

type challengeRow struct {
	ID             string        `db:"id"`
	UserID         string        `db:"user_id"`
	Action         string        `db:"action"`
	Context        string        `db:"context"`
	UserEmail      string        `db:"user_email"`
	RequesterIP    string        `db:"requester_ip"`
	RequesterUA    string        `db:"requester_ua"`
	RequesterKey   string        `db:"requester_key"`
	Methods        string        `db:"methods"`
	Number         string        `db:"number"`
	Status         string        `db:"status"`
	CreatedAt      int64         `db:"created_at"`
	ExpiresAt      int64         `db:"expires_at"`
	DecidedAt      sql.NullInt64 `db:"decided_at"`
	Method         string        `db:"method"`
	DeviceID       string        `db:"device_id"`
	FraudReported  bool          `db:"fraud_reported"`
	ResultToken    string        `db:"result_token"`
	NumberAttempts int           `db:"number_attempts"`
	DeliveryPush   string        `db:"delivery_push"`
	DeliveryEmail  string        `db:"delivery_email"`
	PushDevices    int           `db:"push_devices"`
	EmailsSent     int           `db:"emails_sent"`
	StepUpUsedAt   sql.NullInt64 `db:"step_up_used_at"`
	APIKeyName     string        `db:"api_key_name"`
	Version        int64         `db:"version"`
}

func (r *challengeRow) challenge() *approval.Challenge {
	var ctx json.RawMessage
	if r.Context != "" {
		ctx = json.RawMessage(r.Context)
	}
	return &approval.Challenge{
		ID:             r.ID,
		UserID:         r.UserID,
		Action:         r.Action,
		Context:        ctx,
		UserEmail:      r.UserEmail,
		RequesterIP:    r.RequesterIP,
		RequesterUA:    r.RequesterUA,
		RequesterKey:   r.RequesterKey,
		Methods:        r.Methods,
		Number:         r.Number,
		Status:         r.Status,
		CreatedAt:      fromMS(r.CreatedAt),
		ExpiresAt:      fromMS(r.ExpiresAt),
		DecidedAt:      fromNullMS(r.DecidedAt),
		Method:         r.Method,
		DeviceID:       r.DeviceID,
		FraudReported:  r.FraudReported,
		ResultToken:    r.ResultToken,
		NumberAttempts: r.NumberAttempts,
		DeliveryPush:   r.DeliveryPush,
		DeliveryEmail:  r.DeliveryEmail,
		PushDevices:    r.PushDevices,
		EmailsSent:     r.EmailsSent,
		StepUpUsedAt:   fromNullMS(r.StepUpUsedAt),
		APIKeyName:     r.APIKeyName,
		Version:        r.Version,
	}
}

func challenges(rows []challengeRow) []approval.Challenge {
	out := make([]approval.Challenge, len(rows))
	for i := range rows {
		out[i] = *rows[i].challenge()
	}
	return out
}

const enrollmentCols = `id, user_id, code_hash, status, created_at, expires_at, ended_at,
	user_email, authorized_by, step_up_method, device_id, device_name, api_key_name, version`

type enrollmentRow struct {
	ID           string        `db:"id"`
	UserID       string        `db:"user_id"`
	CodeHash     string        `db:"code_hash"`
	Status       string        `db:"status"`
	CreatedAt    int64         `db:"created_at"`
	ExpiresAt    int64         `db:"expires_at"`
	EndedAt      sql.NullInt64 `db:"ended_at"`
	UserEmail    string        `db:"user_email"`
	AuthorizedBy string        `db:"authorized_by"`
	StepUpMethod string        `db:"step_up_method"`
	DeviceID     string        `db:"device_id"`
	DeviceName   string        `db:"device_name"`
	APIKeyName   string        `db:"api_key_name"`
	Version      int64         `db:"version"`
}

func (r *enrollmentRow) enrollment() *approval.Enrollment {
	return &approval.Enrollment{
		ID:           r.ID,
		UserID:       r.UserID,
		CodeHash:     r.CodeHash,
		Status:       r.Status,
		CreatedAt:    fromMS(r.CreatedAt),
		ExpiresAt:    fromMS(r.ExpiresAt),
		EndedAt:      fromNullMS(r.EndedAt),
		UserEmail:    r.UserEmail,
		AuthorizedBy: r.AuthorizedBy,
		StepUpMethod: r.StepUpMethod,
		DeviceID:     r.DeviceID,
		DeviceName:   r.DeviceName,
		APIKeyName:   r.APIKeyName,
		Version:      r.Version,
	}
}

func enrollments(rows []enrollmentRow) []approval.Enrollment {
	out := make([]approval.Enrollment, len(rows))
	for i := range rows {
		out[i] = *rows[i].enrollment()
	}
	return out
}

const deviceCols = `id, user_id, name, platform, public_key, push_provider, push_token,
	push_token_invalid, status, created_at, last_seen_at, ended_at, enrollment_id, retired_by, link_ip`

type deviceRow struct {
	ID               string        `db:"id"`
	UserID           string        `db:"user_id"`
	Name             string        `db:"name"`
	Platform         string        `db:"platform"`
	PublicKey        string        `db:"public_key"`
	PushProvider     string        `db:"push_provider"`
	PushToken        string        `db:"push_token"`
	PushTokenInvalid bool          `db:"push_token_invalid"`
	Status           string        `db:"status"`
	CreatedAt        int64         `db:"created_at"`
	LastSeenAt       sql.NullInt64 `db:"last_seen_at"`
	EndedAt          sql.NullInt64 `db:"ended_at"`
	EnrollmentID     string        `db:"enrollment_id"`
	RetiredBy        string        `db:"retired_by"`
	LinkIP           string        `db:"link_ip"`
}

func (r *deviceRow) device() *approval.Device {
	return &approval.Device{
		ID:               r.ID,
		UserID:           r.UserID,
		Name:             r.Name,
		Platform:         r.Platform,
		PublicKey:        r.PublicKey,
		PushProvider:     r.PushProvider,
		PushToken:        r.PushToken,
		PushTokenInvalid: r.PushTokenInvalid,
		Status:           r.Status,
		CreatedAt:        fromMS(r.CreatedAt),
		LastSeenAt:       fromNullMS(r.LastSeenAt),
		EndedAt:          fromNullMS(r.EndedAt),
		EnrollmentID:     r.EnrollmentID,
		RetiredBy:        r.RetiredBy,
		LinkIP:           r.LinkIP,
	}
}

func devices(rows []deviceRow) []approval.Device {
	out := make([]approval.Device, len(rows))
	for i := range rows {
		out[i] = *rows[i].device()
	}
	return out
}

const apiKeyCols = `id, name, hash, created_at, revoked_at`

type apiKeyRow struct {
	ID        string        `db:"id"`
	Name      string        `db:"name"`
	Hash      string        `db:"hash"`
	CreatedAt int64         `db:"created_at"`
	RevokedAt sql.NullInt64 `db:"revoked_at"`
}

func (r *apiKeyRow) apiKey() *approval.APIKey {
	return &approval.APIKey{
		ID:        r.ID,
		Name:      r.Name,
		Hash:      r.Hash,
		CreatedAt: fromMS(r.CreatedAt),
		RevokedAt: fromNullMS(r.RevokedAt),
	}
}

const auditCols = `at, actor_type, actor, event, object_type, object_id, user_id, ip, detail`

type auditRow struct {
	At         int64  `db:"at"`
	ActorType  string `db:"actor_type"`
	Actor      string `db:"actor"`
	Event      string `db:"event"`
	ObjectType string `db:"object_type"`
	ObjectID   string `db:"object_id"`
	UserID     string `db:"user_id"`
	IP         string `db:"ip"`
	Detail     string `db:"detail"`
}

func (r *auditRow) entry() approval.AuditEntry {
	var detail json.RawMessage
	if r.Detail != "" {
		detail = json.RawMessage(r.Detail)
	}
	return approval.AuditEntry{
		At:         fromMS(r.At),
		ActorType:  r.ActorType,
		Actor:      r.Actor,
		Event:      r.Event,
		ObjectType: r.ObjectType,
		ObjectID:   r.ObjectID,
		UserID:     r.UserID,
		IP:         r.IP,
		Detail:     detail,
	}
}
