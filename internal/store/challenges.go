package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/clicktopurchase/approvald/internal/approval"
)

// errNumberTaken: the insert hit the pending-number index; CreateChallenge
// runs its transaction again, and Check picks again.
var errNumberTaken = errors.New("number taken by another pending challenge")

// CreateChallenge inserts n.Challenge (status pending, version 1) after
// n.Check accepts the counts, with its audit entry, in one transaction under
// the user's lock. With an idempotency key, the key is claimed in the same
// transaction; a live key already claimed returns its challenge and
// replayed=true (nothing written, Check not called), or ErrIdemMismatch when
// the body hash differs. A concurrent create with the same key waits for
// the first and then replays it. An expired key is replaced.
func (s *Store) CreateChallenge(ctx context.Context, n approval.NewChallenge) (*approval.Challenge, bool, error) {
	c := n.Challenge
	if c == nil || c.ID == "" || c.UserID == "" {
		return nil, false, errors.New("store: create challenge: challenge, its ID and UserID are required")
	}
	for attempt := 1; ; attempt++ {
		var (
			out      *approval.Challenge
			replayed bool
		)
		err := s.inTx(ctx, func(tx *sqlx.Tx) error {
			out, replayed = nil, false
			if n.IdemKey != "" {
				prior, err := s.claimIdemKey(ctx, tx, n)
				if err != nil || prior != nil {
					out, replayed = prior, true
					return err
				}
			}
			if err := s.lockUser(ctx, tx, c.UserID); err != nil {
				return err
			}
			counts, err := s.challengeCounts(ctx, tx, c, n.Since)
			if err != nil {
				return err
			}
			if n.Check != nil {
				if err := n.Check(counts); err != nil {
					return err
				}
			}
			out, err = s.insertChallenge(ctx, tx, c)
			if err != nil {
				return err
			}
			return s.writeAudit(ctx, tx, fill(n.Audit, "challenge", c.ID, c.UserID, c.CreatedAt))
		})
		if errors.Is(err, errNumberTaken) && attempt < maxTxAttempts {
			continue
		}
		if errors.Is(err, errNumberTaken) {
			return nil, false, fmt.Errorf("store: create challenge: %w after %d attempts: %w", errNumberTaken, attempt, approval.ErrConflict)
		}
		if err != nil {
			return nil, false, err
		}
		return out, replayed, nil
	}
}

// claimIdemKey claims (scope, key) for n's challenge. It returns the
// earlier challenge when the key is already claimed and still live.
func (s *Store) claimIdemKey(ctx context.Context, tx *sqlx.Tx, n approval.NewChallenge) (*approval.Challenge, error) {
	now := ms(n.Challenge.CreatedAt)
	if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM idempotency_keys
		WHERE scope = ? AND idem_key = ? AND expires_at <= ?`), n.IdemScope, n.IdemKey, now); err != nil {
		return nil, fmt.Errorf("store: idempotency key: %w", err)
	}
	// On PostgreSQL, a concurrent claim of the same key makes this wait
	// until that transaction ends; then it inserts (the other rolled back)
	// or does nothing (it committed: replay it).
	res, err := tx.ExecContext(ctx, s.q(`INSERT INTO idempotency_keys
		(scope, idem_key, body_hash, challenge_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (scope, idem_key) DO NOTHING`),
		n.IdemScope, n.IdemKey, n.IdemBodyHash, n.Challenge.ID, now, ms(n.IdemExpiresAt))
	if err != nil {
		return nil, fmt.Errorf("store: idempotency key: %w", err)
	}
	if k, err := res.RowsAffected(); err != nil {
		return nil, fmt.Errorf("store: idempotency key: %w", err)
	} else if k == 1 {
		return nil, nil
	}
	var prior struct {
		BodyHash    string `db:"body_hash"`
		ChallengeID string `db:"challenge_id"`
	}
	if err := tx.GetContext(ctx, &prior, s.q(`SELECT body_hash, challenge_id FROM idempotency_keys
		WHERE scope = ? AND idem_key = ?`), n.IdemScope, n.IdemKey); err != nil {
		return nil, fmt.Errorf("store: idempotency key: %w", err)
	}
	if prior.BodyHash != n.IdemBodyHash {
		return nil, fmt.Errorf("store: idempotency key %q: %w", n.IdemKey, approval.ErrIdemMismatch)
	}
	var row challengeRow
	if err := tx.GetContext(ctx, &row, s.q(`SELECT `+challengeCols+` FROM challenges WHERE id = ?`), prior.ChallengeID); err != nil {
		return nil, notFound(err, "idempotent challenge "+prior.ChallengeID)
	}
	return row.challenge(), nil
}

func (s *Store) challengeCounts(ctx context.Context, tx *sqlx.Tx, c *approval.Challenge, since time.Time) (approval.ChallengeCounts, error) {
	var counts approval.ChallengeCounts
	now, from := ms(c.CreatedAt), ms(since)
	row := tx.QueryRowxContext(ctx, s.q(`SELECT
		(SELECT COUNT(*) FROM challenges WHERE requester_key = ? AND status = 'pending' AND expires_at > ?),
		(SELECT COUNT(*) FROM challenges WHERE requester_key = ? AND created_at >= ?),
		(SELECT COUNT(*) FROM challenges WHERE user_id = ? AND status = 'pending' AND expires_at > ?),
		(SELECT COUNT(*) FROM challenges WHERE user_id = ? AND created_at >= ?)`),
		c.RequesterKey, now, c.RequesterKey, from, c.UserID, now, c.UserID, from)
	if err := row.Scan(&counts.RequesterPending, &counts.RequesterRecent, &counts.UserPending, &counts.UserRecent); err != nil {
		return counts, fmt.Errorf("store: challenge counts: %w", err)
	}
	// Every pending challenge, expired by time or not: until the sweeper
	// ends it, its number is still taken in the unique index.
	var numbers []string
	if err := tx.SelectContext(ctx, &numbers, s.q(`SELECT number FROM challenges
		WHERE user_id = ? AND status = 'pending' AND number <> ''`), c.UserID); err != nil {
		return counts, fmt.Errorf("store: challenge numbers: %w", err)
	}
	counts.Numbers = make(map[string]bool, len(numbers))
	for _, x := range numbers {
		counts.Numbers[x] = true
	}
	return counts, nil
}

func (s *Store) insertChallenge(ctx context.Context, tx *sqlx.Tx, c *approval.Challenge) (*approval.Challenge, error) {
	status := c.Status
	if status == "" {
		status = approval.StatusPending
	}
	var row challengeRow
	err := tx.QueryRowxContext(ctx, s.q(`INSERT INTO challenges (`+challengeCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
		RETURNING `+challengeCols),
		c.ID, c.UserID, c.Action, string(c.Context), c.UserEmail, c.RequesterIP, c.RequesterUA,
		c.RequesterKey, c.Methods, c.Number, status, ms(c.CreatedAt), ms(c.ExpiresAt), nullMS(c.DecidedAt), c.Method,
		c.DeviceID, c.FraudReported, c.ResultToken, c.NumberAttempts, c.DeliveryPush, c.DeliveryEmail,
		c.PushDevices, c.EmailsSent, nullMS(c.StepUpUsedAt), c.APIKeyName,
	).StructScan(&row)
	if index, ok := uniqueViolation(err); ok {
		if strings.Contains(index, "challenges_pending_number") || strings.Contains(index, "challenges.number") {
			return nil, errNumberTaken
		}
		return nil, fmt.Errorf("store: insert challenge %s: %w", c.ID, approval.ErrConflict)
	}
	if err != nil {
		return nil, fmt.Errorf("store: insert challenge %s: %w", c.ID, err)
	}
	return row.challenge(), nil
}

// GetChallenge returns the challenge or ErrNotFound.
func (s *Store) GetChallenge(ctx context.Context, id string) (*approval.Challenge, error) {
	var row challengeRow
	if err := s.db.GetContext(ctx, &row, s.q(`SELECT `+challengeCols+` FROM challenges WHERE id = ?`), id); err != nil {
		return nil, notFound(err, "challenge "+id)
	}
	return row.challenge(), nil
}

// Decide moves a pending challenge whose expires_at > d.At to d.Status
// (approved, denied or cancelled), with its audit entry. ErrLost when it was
// not pending or had expired; ErrNotFound when there is no such challenge.
func (s *Store) Decide(ctx context.Context, d approval.Decision) (*approval.Challenge, error) {
	switch d.Status {
	case approval.StatusApproved, approval.StatusDenied, approval.StatusCancelled:
	default:
		return nil, fmt.Errorf("store: decide: status %q is not a decision", d.Status)
	}
	var out *approval.Challenge
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		if d.LinkHash != "" {
			l, err := s.useLink(ctx, tx, d.LinkHash, approval.LinkChallenge, d.At)
			if err != nil {
				return err
			}
			if l.ChallengeID != d.ID {
				return fmt.Errorf("store: decide: the link is for another challenge: %w", approval.ErrLost)
			}
		}
		var row challengeRow
		err := tx.QueryRowxContext(ctx, s.q(`UPDATE challenges
			SET status = ?, method = ?, device_id = ?, fraud_reported = ?, result_token = ?,
				decided_at = ?, version = version + 1
			WHERE id = ? AND status = 'pending' AND expires_at > ?
			RETURNING `+challengeCols),
			d.Status, d.Method, d.DeviceID, d.Fraud, d.ResultToken, ms(d.At), d.ID, ms(d.At)).StructScan(&row)
		if errors.Is(err, sql.ErrNoRows) {
			return s.lostOrNotFound(ctx, tx, "challenges", d.ID, "decide challenge")
		}
		if err != nil {
			return fmt.Errorf("store: decide challenge %s: %w", d.ID, err)
		}
		out = row.challenge()
		if !d.LockUntil.IsZero() {
			if err := s.lockUserUntil(ctx, tx, row.UserID, d.LockUntil); err != nil {
				return err
			}
		}
		return s.writeAudit(ctx, tx, fill(d.Audit, "challenge", d.ID, row.UserID, d.At))
	})
	return out, err
}

// Expire moves a pending challenge whose expires_at <= at to expired, with
// resultToken and its audit entry; ErrLost otherwise (ErrNotFound when there
// is no such challenge). decided_at stays empty: nobody decided.
func (s *Store) Expire(ctx context.Context, id, resultToken string, at time.Time, audit approval.AuditEntry) (*approval.Challenge, error) {
	var out *approval.Challenge
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		var row challengeRow
		err := tx.QueryRowxContext(ctx, s.q(`UPDATE challenges
			SET status = 'expired', result_token = ?, version = version + 1
			WHERE id = ? AND status = 'pending' AND expires_at <= ?
			RETURNING `+challengeCols), resultToken, id, ms(at)).StructScan(&row)
		if errors.Is(err, sql.ErrNoRows) {
			return s.lostOrNotFound(ctx, tx, "challenges", id, "expire challenge")
		}
		if err != nil {
			return fmt.Errorf("store: expire challenge %s: %w", id, err)
		}
		out = row.challenge()
		return s.writeAudit(ctx, tx, fill(audit, "challenge", id, row.UserID, at))
	})
	return out, err
}

// DueChallenges lists pending challenges whose expires_at <= now, the
// longest overdue first.
func (s *Store) DueChallenges(ctx context.Context, now time.Time, limit int) ([]approval.Challenge, error) {
	var rows []challengeRow
	if err := s.db.SelectContext(ctx, &rows, s.q(`SELECT `+challengeCols+` FROM challenges
		WHERE status = 'pending' AND expires_at <= ? ORDER BY expires_at, id LIMIT ?`), ms(now), limit); err != nil {
		return nil, fmt.Errorf("store: due challenges: %w", err)
	}
	return challenges(rows), nil
}

// ConsumeStepUp marks an approved link_device challenge of userID, decided
// at or after since and never used, as used at at; ErrLost otherwise.
func (s *Store) ConsumeStepUp(ctx context.Context, challengeID, userID string, since, at time.Time) (*approval.Challenge, error) {
	var out *approval.Challenge
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		var err error
		out, err = s.consumeStepUp(ctx, tx, challengeID, userID, since, at)
		return err
	})
	return out, err
}

func (s *Store) consumeStepUp(ctx context.Context, tx *sqlx.Tx, challengeID, userID string, since, at time.Time) (*approval.Challenge, error) {
	var row challengeRow
	err := tx.QueryRowxContext(ctx, s.q(`UPDATE challenges
		SET step_up_used_at = ?, version = version + 1
		WHERE id = ? AND user_id = ? AND action = ? AND status = 'approved'
			AND decided_at >= ? AND step_up_used_at IS NULL
		RETURNING `+challengeCols),
		ms(at), challengeID, userID, approval.ActionLinkDevice, ms(since)).StructScan(&row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: step-up challenge %s: %w", challengeID, approval.ErrLost)
	}
	if err != nil {
		return nil, fmt.Errorf("store: step-up challenge %s: %w", challengeID, err)
	}
	return row.challenge(), nil
}

// CountNumberMismatch increments number_attempts of a pending, unexpired
// challenge and returns the new count; ErrLost otherwise.
func (s *Store) CountNumberMismatch(ctx context.Context, id string, at time.Time, audit approval.AuditEntry) (int, error) {
	var n int
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		var row struct {
			Attempts int    `db:"number_attempts"`
			UserID   string `db:"user_id"`
		}
		err := tx.QueryRowxContext(ctx, s.q(`UPDATE challenges
			SET number_attempts = number_attempts + 1, version = version + 1
			WHERE id = ? AND status = 'pending' AND expires_at > ?
			RETURNING number_attempts, user_id`), id, ms(at)).StructScan(&row)
		if errors.Is(err, sql.ErrNoRows) {
			return s.lostOrNotFound(ctx, tx, "challenges", id, "count number mismatch")
		}
		if err != nil {
			return fmt.Errorf("store: count number mismatch %s: %w", id, err)
		}
		n = row.Attempts
		return s.writeAudit(ctx, tx, fill(audit, "challenge", id, row.UserID, at))
	})
	return n, err
}

// PendingChallenges lists the user's pending challenges with expires_at >
// now, oldest first.
func (s *Store) PendingChallenges(ctx context.Context, userID string, now time.Time) ([]approval.Challenge, error) {
	var rows []challengeRow
	if err := s.db.SelectContext(ctx, &rows, s.q(`SELECT `+challengeCols+` FROM challenges
		WHERE user_id = ? AND status = 'pending' AND expires_at > ? ORDER BY created_at, id`), userID, ms(now)); err != nil {
		return nil, fmt.Errorf("store: pending challenges: %w", err)
	}
	return challenges(rows), nil
}

// SetDelivery records delivery.push with the number of devices pushed to
// (when push != "") and delivery.email (when email != ""), version+1.
// With both empty it changes nothing and returns the challenge.
func (s *Store) SetDelivery(ctx context.Context, id, push string, pushDevices int, email string) (*approval.Challenge, error) {
	var (
		set  []string
		args []any
	)
	if push != "" {
		set = append(set, "delivery_push = ?")
		args = append(args, push)
		if pushDevices >= 0 {
			set = append(set, "push_devices = ?")
			args = append(args, pushDevices)
		}
	}
	if email != "" {
		set = append(set, "delivery_email = ?")
		args = append(args, email)
	}
	if len(set) == 0 {
		return s.GetChallenge(ctx, id)
	}
	var out *approval.Challenge
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		var row challengeRow
		err := tx.QueryRowxContext(ctx, s.q(`UPDATE challenges SET `+strings.Join(set, ", ")+`, version = version + 1
			WHERE id = ? RETURNING `+challengeCols), append(args, id)...).StructScan(&row)
		if err != nil {
			return notFound(err, "set delivery of challenge "+id)
		}
		out = row.challenge()
		return nil
	})
	return out, err
}
