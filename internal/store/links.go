package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/jmoiron/sqlx"
)

const linkCols = `hash, kind, challenge_id, device_id, user_id, created_at, expires_at, used_at`

type linkRow struct {
	Hash        string        `db:"hash"`
	Kind        string        `db:"kind"`
	ChallengeID string        `db:"challenge_id"`
	DeviceID    string        `db:"device_id"`
	UserID      string        `db:"user_id"`
	CreatedAt   int64         `db:"created_at"`
	ExpiresAt   int64         `db:"expires_at"`
	UsedAt      sql.NullInt64 `db:"used_at"`
}

func (r *linkRow) link() *approval.EmailLink {
	l := &approval.EmailLink{Hash: r.Hash, Kind: r.Kind, ChallengeID: r.ChallengeID, DeviceID: r.DeviceID,
		UserID: r.UserID, CreatedAt: fromMS(r.CreatedAt), ExpiresAt: fromMS(r.ExpiresAt)}
	if r.UsedAt.Valid {
		t := fromMS(r.UsedAt.Int64)
		l.UsedAt = &t
	}
	return l
}

func (s *Store) insertLink(ctx context.Context, tx *sqlx.Tx, l approval.EmailLink) error {
	_, err := tx.ExecContext(ctx, s.q(`INSERT INTO email_links (`+linkCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)`),
		l.Hash, l.Kind, l.ChallengeID, l.DeviceID, l.UserID, ms(l.CreatedAt), ms(l.ExpiresAt))
	if err != nil {
		return fmt.Errorf("store: insert email link: %w", err)
	}
	return nil
}

// RequestEmail counts one more email on a pending, unexpired challenge
// that has had fewer than maxEmails, extends its life to newExpiry (never
// shortens it), marks the email as being sent and stores the link, in one
// transaction; ErrLost when any condition fails, ErrNotFound when there is
// no such challenge.
func (s *Store) RequestEmail(ctx context.Context, id string, link approval.EmailLink, newExpiry time.Time, maxEmails int, audit approval.AuditEntry) (*approval.Challenge, error) {
	var out *approval.Challenge
	at := link.CreatedAt
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		var row challengeRow
		err := tx.QueryRowxContext(ctx, s.q(`UPDATE challenges
			SET emails_sent = emails_sent + 1,
				expires_at = CASE WHEN expires_at > ? THEN expires_at ELSE ? END,
				delivery_email = 'sending', version = version + 1
			WHERE id = ? AND status = 'pending' AND expires_at > ? AND emails_sent < ?
			RETURNING `+challengeCols), ms(newExpiry), ms(newExpiry), id, ms(at), maxEmails).StructScan(&row)
		if errors.Is(err, sql.ErrNoRows) {
			return s.lostOrNotFound(ctx, tx, "challenges", id, "request email")
		}
		if err != nil {
			return fmt.Errorf("store: request email %s: %w", id, err)
		}
		out = row.challenge()
		link.ChallengeID, link.UserID, link.ExpiresAt = id, row.UserID, out.ExpiresAt
		if err := s.insertLink(ctx, tx, link); err != nil {
			return err
		}
		return s.writeAudit(ctx, tx, fill(audit, "challenge", id, row.UserID, at))
	})
	return out, err
}

// CreateEmailLink stores a link.
func (s *Store) CreateEmailLink(ctx context.Context, link approval.EmailLink) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error { return s.insertLink(ctx, tx, link) })
}

// GetEmailLink returns the link with the hash, used or not, or ErrNotFound.
func (s *Store) GetEmailLink(ctx context.Context, hash string) (*approval.EmailLink, error) {
	var row linkRow
	if err := s.db.GetContext(ctx, &row, s.q(`SELECT `+linkCols+` FROM email_links WHERE hash = ?`), hash); err != nil {
		return nil, notFound(err, "email link")
	}
	return row.link(), nil
}

// useLink marks an unused link of kind used; ErrLost if it was used or is
// of another kind, ErrNotFound if there is none.
func (s *Store) useLink(ctx context.Context, tx *sqlx.Tx, hash, kind string, at time.Time) (*approval.EmailLink, error) {
	var row linkRow
	err := tx.QueryRowxContext(ctx, s.q(`UPDATE email_links SET used_at = ?
		WHERE hash = ? AND kind = ? AND used_at IS NULL RETURNING `+linkCols), ms(at), hash, kind).StructScan(&row)
	if errors.Is(err, sql.ErrNoRows) {
		var n int
		if err := tx.GetContext(ctx, &n, s.q(`SELECT COUNT(*) FROM email_links WHERE hash = ?`), hash); err != nil {
			return nil, fmt.Errorf("store: use email link: %w", err)
		}
		if n == 0 {
			return nil, fmt.Errorf("store: use email link: %w", approval.ErrNotFound)
		}
		return nil, fmt.Errorf("store: use email link: %w", approval.ErrLost)
	}
	if err != nil {
		return nil, fmt.Errorf("store: use email link: %w", err)
	}
	return row.link(), nil
}

// UndoDeviceLink uses up a device link, removes its device if it is still
// active, reactivates the devices that its linking retired, and (with a
// non-zero lockUntil) locks the user, in one transaction.
func (s *Store) UndoDeviceLink(ctx context.Context, hash string, at, lockUntil time.Time, audit approval.AuditEntry) (*approval.Device, []approval.Device, error) {
	var (
		removed     *approval.Device
		reactivated []approval.Device
	)
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		removed, reactivated = nil, nil
		l, err := s.useLink(ctx, tx, hash, approval.LinkDevice, at)
		if err != nil {
			return err
		}
		if !l.ExpiresAt.After(at) {
			return fmt.Errorf("store: undo device link: expired: %w", approval.ErrLost)
		}
		if err := s.lockUser(ctx, tx, l.UserID); err != nil {
			return err
		}
		var row deviceRow
		err = tx.QueryRowxContext(ctx, s.q(`UPDATE devices SET status = 'removed', ended_at = ?
			WHERE id = ? AND status = 'active' RETURNING `+deviceCols), ms(at), l.DeviceID).StructScan(&row)
		switch {
		case err == nil:
			removed = row.device()
		case errors.Is(err, sql.ErrNoRows):
		default:
			return fmt.Errorf("store: undo device link: %w", err)
		}
		var rows []deviceRow
		if err := tx.SelectContext(ctx, &rows, s.q(`UPDATE devices SET status = 'active', ended_at = NULL, retired_by = ''
			WHERE retired_by = ? AND status = 'retired' RETURNING `+deviceCols), l.DeviceID); err != nil {
			return fmt.Errorf("store: reactivate devices: %w", err)
		}
		for i := range rows {
			reactivated = append(reactivated, *rows[i].device())
		}
		if !lockUntil.IsZero() {
			if err := s.lockUserUntil(ctx, tx, l.UserID, lockUntil); err != nil {
				return err
			}
		}
		return s.writeAudit(ctx, tx, fill(audit, "device", l.DeviceID, l.UserID, at))
	})
	return removed, reactivated, err
}
