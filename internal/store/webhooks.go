package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/clicktopurchase/approvald/internal/approval"
)

// The webhook outbox. While webhooks are on (EnableWebhooks), writeAudit
// also enqueues every audit entry whose event is a webhook type, in the
// same transaction: an event exists exactly when its change committed. The
// dispatcher (internal/webhook) claims due events with a lease, sends them
// and records the outcome here.

// WebhookTypes are the audit events that are also webhook events.
var WebhookTypes = map[string]bool{
	"challenge.approved":  true,
	"challenge.denied":    true,
	"challenge.expired":   true,
	"challenge.cancelled": true,
	"fraud.reported":      true,
	"device.linked":       true,
	"device.removed":      true,
}

// WebhookEvent is one row of the outbox.
type WebhookEvent struct {
	ID        string // the event id receivers dedupe on
	Type      string
	ObjectID  string // the challenge or device
	UserID    string
	ActorType string
	Actor     string
	Detail    json.RawMessage // the audit entry's detail, nil when none
	CreatedAt time.Time
	// Attempts counts the attempts claimed so far, this one included: the
	// fence of the claim that returned it.
	Attempts      int
	NextAttemptAt time.Time
	LeaseUntil    *time.Time
	DeliveredAt   *time.Time
	FailedAt      *time.Time
	LastStatus    string
}

const webhookCols = `id, type, object_id, user_id, actor_type, actor, detail, created_at, attempts,
	next_attempt_at, lease_until, delivered_at, failed_at, last_status`

type webhookRow struct {
	ID            string        `db:"id"`
	Type          string        `db:"type"`
	ObjectID      string        `db:"object_id"`
	UserID        string        `db:"user_id"`
	ActorType     string        `db:"actor_type"`
	Actor         string        `db:"actor"`
	Detail        string        `db:"detail"`
	CreatedAt     int64         `db:"created_at"`
	Attempts      int           `db:"attempts"`
	NextAttemptAt int64         `db:"next_attempt_at"`
	LeaseUntil    sql.NullInt64 `db:"lease_until"`
	DeliveredAt   sql.NullInt64 `db:"delivered_at"`
	FailedAt      sql.NullInt64 `db:"failed_at"`
	LastStatus    string        `db:"last_status"`
}

func (r *webhookRow) event() WebhookEvent {
	var detail json.RawMessage
	if r.Detail != "" {
		detail = json.RawMessage(r.Detail)
	}
	return WebhookEvent{
		ID: r.ID, Type: r.Type, ObjectID: r.ObjectID, UserID: r.UserID, ActorType: r.ActorType, Actor: r.Actor,
		Detail: detail, CreatedAt: fromMS(r.CreatedAt), Attempts: r.Attempts, NextAttemptAt: fromMS(r.NextAttemptAt),
		LeaseUntil: fromNullMS(r.LeaseUntil), DeliveredAt: fromNullMS(r.DeliveredAt), FailedAt: fromNullMS(r.FailedAt),
		LastStatus: r.LastStatus,
	}
}

func webhookEvents(rows []webhookRow) []WebhookEvent {
	out := make([]WebhookEvent, len(rows))
	for i := range rows {
		out[i] = rows[i].event()
	}
	return out
}

// EnableWebhooks makes every later state change that is a webhook event
// also enqueue it. Call it before serving, on every instance, when a
// webhook URL is configured; without it nothing is enqueued, so rows do not
// pile up with nobody to send them.
func (s *Store) EnableWebhooks() { s.webhooks.Store(true) }

// WebhooksEnabled reports whether EnableWebhooks was called.
func (s *Store) WebhooksEnabled() bool { return s.webhooks.Load() }

// newEventID is 128 random bits in unpadded base64url, like every other id.
func newEventID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// enqueueWebhook adds e to the outbox in tx when webhooks are on and e is
// a webhook event; it is due at once.
func (s *Store) enqueueWebhook(ctx context.Context, tx *sqlx.Tx, e approval.AuditEntry) error {
	if !s.webhooks.Load() || !WebhookTypes[e.Event] {
		return nil
	}
	id, err := newEventID()
	if err != nil {
		return fmt.Errorf("store: webhook event id: %w", err)
	}
	_, err = tx.ExecContext(ctx, s.q(`INSERT INTO webhook_events
		(id, type, object_id, user_id, actor_type, actor, detail, created_at, attempts, next_attempt_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)`),
		id, e.Event, e.ObjectID, e.UserID, e.ActorType, e.Actor, string(e.Detail), ms(e.At), ms(e.At))
	if err != nil {
		return fmt.Errorf("store: enqueue webhook %s: %w", e.Event, err)
	}
	return nil
}

// ClaimWebhookEvents leases up to limit due events (undelivered, not
// failed, next_attempt_at <= now, no live lease) until now+lease, counting
// one more attempt on each, and returns them oldest first. It is one
// conditional update: of concurrent claimers (in any instance) each event
// goes to exactly one until its lease ends. Each event's Attempts fences
// the claim: a result recorded with an older count is ignored.
func (s *Store) ClaimWebhookEvents(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]WebhookEvent, error) {
	if limit <= 0 {
		return nil, nil
	}
	// Most polls find nothing: a plain read first spares them a write
	// transaction (on SQLite, the database's one write lock).
	var due []string
	if err := s.db.SelectContext(ctx, &due, s.q(`SELECT id FROM webhook_events
		WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ?
			AND (lease_until IS NULL OR lease_until <= ?)
		LIMIT 1`), ms(now), ms(now)); err != nil {
		return nil, fmt.Errorf("store: claim webhook events: %w", err)
	}
	if len(due) == 0 {
		return nil, nil
	}
	// The CTE is materialised so that its LIMIT holds (PostgreSQL may
	// otherwise run a subquery more than once). The outer conditions repeat
	// the inner ones: PostgreSQL re-checks them on the newest row version
	// when a concurrent claim updated the row first, and SKIP LOCKED lets
	// claimers pass each other instead of queueing. SQLite serialises write
	// transactions, so there the CTE sees the truth.
	lock := ""
	if s.dialect == Postgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	var rows []webhookRow
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		rows = nil
		return tx.SelectContext(ctx, &rows, s.q(`WITH due AS MATERIALIZED (
				SELECT id FROM webhook_events
				WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ?
					AND (lease_until IS NULL OR lease_until <= ?)
				ORDER BY created_at, id LIMIT ?`+lock+`)
			UPDATE webhook_events
			SET lease_until = ?, attempts = attempts + 1
			WHERE id IN (SELECT id FROM due)
				AND delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ?
				AND (lease_until IS NULL OR lease_until <= ?)
			RETURNING `+webhookCols),
			ms(now), ms(now), limit, ms(now.Add(lease)), ms(now), ms(now))
	})
	if err != nil {
		return nil, fmt.Errorf("store: claim webhook events: %w", err)
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].CreatedAt != rows[j].CreatedAt {
			return rows[i].CreatedAt < rows[j].CreatedAt
		}
		return rows[i].ID < rows[j].ID
	})
	return webhookEvents(rows), nil
}

// WebhookDelivered records the delivery of an event at at; false when it
// was already recorded delivered (a late duplicate). Delivery is recorded
// whichever claim sent it.
func (s *Store) WebhookDelivered(ctx context.Context, id string, at time.Time, status string) (bool, error) {
	return s.webhookUpdate(ctx, "delivered", `UPDATE webhook_events
		SET delivered_at = ?, lease_until = NULL, last_status = ?
		WHERE id = ? AND delivered_at IS NULL`, ms(at), status, id)
}

// WebhookRetry schedules the next attempt of an event at next, if the
// claim with attempts still holds it; false otherwise (changed nothing).
func (s *Store) WebhookRetry(ctx context.Context, id string, attempts int, next time.Time, status string) (bool, error) {
	return s.webhookUpdate(ctx, "retry", `UPDATE webhook_events
		SET next_attempt_at = ?, lease_until = NULL, last_status = ?
		WHERE id = ? AND attempts = ? AND delivered_at IS NULL AND failed_at IS NULL`, ms(next), status, id, attempts)
}

// WebhookFailed gives up on an event at at, if the claim with attempts
// still holds it; false otherwise (changed nothing).
func (s *Store) WebhookFailed(ctx context.Context, id string, attempts int, at time.Time, status string) (bool, error) {
	return s.webhookUpdate(ctx, "fail", `UPDATE webhook_events
		SET failed_at = ?, lease_until = NULL, last_status = ?
		WHERE id = ? AND attempts = ? AND delivered_at IS NULL AND failed_at IS NULL`, ms(at), status, id, attempts)
}

// WebhookRelease ends the lease of the claim with attempts without
// recording an outcome (an attempt cut short by shutdown): the event is due
// again at its next_attempt_at, for any instance.
func (s *Store) WebhookRelease(ctx context.Context, id string, attempts int) (bool, error) {
	return s.webhookUpdate(ctx, "release", `UPDATE webhook_events SET lease_until = NULL
		WHERE id = ? AND attempts = ? AND delivered_at IS NULL AND failed_at IS NULL`, id, attempts)
}

func (s *Store) webhookUpdate(ctx context.Context, what, query string, args ...any) (bool, error) {
	var n int64
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(query), args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store: webhook %s: %w", what, err)
	}
	return n == 1, nil
}

// GetWebhookEvent returns the event or ErrNotFound.
func (s *Store) GetWebhookEvent(ctx context.Context, id string) (*WebhookEvent, error) {
	var row webhookRow
	if err := s.db.GetContext(ctx, &row, s.q(`SELECT `+webhookCols+` FROM webhook_events WHERE id = ?`), id); err != nil {
		return nil, notFound(err, "webhook event "+id)
	}
	e := row.event()
	return &e, nil
}

// WebhookEvents lists the events about objectID, oldest first.
func (s *Store) WebhookEvents(ctx context.Context, objectID string) ([]WebhookEvent, error) {
	var rows []webhookRow
	if err := s.db.SelectContext(ctx, &rows, s.q(`SELECT `+webhookCols+` FROM webhook_events
		WHERE object_id = ? ORDER BY created_at, id`), objectID); err != nil {
		return nil, fmt.Errorf("store: webhook events: %w", err)
	}
	return webhookEvents(rows), nil
}

// PurgeWebhookEvents deletes delivered and failed events that ended before
// before, and returns how many.
func (s *Store) PurgeWebhookEvents(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`DELETE FROM webhook_events
			WHERE delivered_at < ? OR failed_at < ?`), ms(before), ms(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("store: purge webhook events: %w", err)
	}
	return n, nil
}
