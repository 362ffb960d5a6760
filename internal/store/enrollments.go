package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/clicktopurchase/approvald/internal/approval"
)

// CreateEnrollment inserts e (version 1; status pending unless set) under
// the user's lock, ends (expired, version+1) every other pending enrollment
// of the user and returns them, and writes the audit entry, in one
// transaction. With stepUpChallenge it first consumes that challenge
// (ConsumeStepUp's conditions, at e.CreatedAt) or returns ErrLost with nothing
// written; e.AuthorizedBy and e.StepUpMethod, when empty, are then taken from
// the challenge (its id and the method that approved it). ErrConflict when
// the code hash is taken.
func (s *Store) CreateEnrollment(ctx context.Context, e *approval.Enrollment, stepUpChallenge string, stepUpSince time.Time, audit approval.AuditEntry) ([]approval.Enrollment, error) {
	if e == nil || e.ID == "" || e.UserID == "" {
		return nil, errors.New("store: create enrollment: enrollment, its ID and UserID are required")
	}
	var (
		ended []approval.Enrollment
		out   *approval.Enrollment
	)
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		if err := s.lockUser(ctx, tx, e.UserID); err != nil {
			return err
		}
		ins := *e
		if ins.Status == "" {
			ins.Status = approval.EnrollPending
		}
		if stepUpChallenge != "" {
			c, err := s.consumeStepUp(ctx, tx, stepUpChallenge, e.UserID, stepUpSince, e.CreatedAt)
			if err != nil {
				return err
			}
			if ins.AuthorizedBy == "" {
				ins.AuthorizedBy = c.ID
			}
			if ins.StepUpMethod == "" {
				ins.StepUpMethod = c.Method
			}
		}
		var rows []enrollmentRow
		if err := tx.SelectContext(ctx, &rows, s.q(`UPDATE enrollments
			SET status = 'expired', ended_at = ?, version = version + 1
			WHERE user_id = ? AND status = 'pending' AND id <> ?
			RETURNING `+enrollmentCols), ms(e.CreatedAt), e.UserID, e.ID); err != nil {
			return fmt.Errorf("store: end pending enrollments: %w", err)
		}
		ended = enrollments(rows)
		var row enrollmentRow
		err := tx.QueryRowxContext(ctx, s.q(`INSERT INTO enrollments (`+enrollmentCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) RETURNING `+enrollmentCols),
			ins.ID, ins.UserID, ins.CodeHash, ins.Status, ms(ins.CreatedAt), ms(ins.ExpiresAt), nullMS(ins.EndedAt),
			ins.UserEmail, ins.AuthorizedBy, ins.StepUpMethod, ins.DeviceID, ins.DeviceName, ins.APIKeyName,
		).StructScan(&row)
		if _, ok := uniqueViolation(err); ok {
			return fmt.Errorf("store: insert enrollment %s: %w", e.ID, approval.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("store: insert enrollment %s: %w", e.ID, err)
		}
		out = row.enrollment()
		return s.writeAudit(ctx, tx, fill(audit, "enrollment", e.ID, e.UserID, e.CreatedAt))
	})
	if err != nil {
		return nil, err
	}
	*e = *out
	return ended, nil
}

// GetEnrollment returns the enrollment or ErrNotFound.
func (s *Store) GetEnrollment(ctx context.Context, id string) (*approval.Enrollment, error) {
	var row enrollmentRow
	if err := s.db.GetContext(ctx, &row, s.q(`SELECT `+enrollmentCols+` FROM enrollments WHERE id = ?`), id); err != nil {
		return nil, notFound(err, "enrollment "+id)
	}
	return row.enrollment(), nil
}

// EnrollmentByCodeHash returns the newest enrollment with the code hash,
// whatever its status, or ErrNotFound. (Codes are unique only among
// pending enrollments; the newest is the pending one if there is one.)
func (s *Store) EnrollmentByCodeHash(ctx context.Context, codeHash string) (*approval.Enrollment, error) {
	var row enrollmentRow
	if err := s.db.GetContext(ctx, &row, s.q(`SELECT `+enrollmentCols+` FROM enrollments WHERE code_hash = ? ORDER BY created_at DESC LIMIT 1`), codeHash); err != nil {
		return nil, notFound(err, "enrollment by code")
	}
	return row.enrollment(), nil
}

// LinkDevice links l.Device through the enrollment in one transaction,
// under the user's lock: it moves the enrollment pending→linked (ErrLost
// unless pending with expires_at > l.At; ErrNotFound if there is none),
// refuses with ErrStepUpRequired (nothing written) when the user has an
// active device and the enrollment has no AuthorizedBy, inserts the device
// (active, the enrollment's user, created at l.At unless set) and retires the
// oldest other active devices so that at most MaxDevices remain (MaxDevices
// below 1 counts as 1: the new device always stays).
func (s *Store) LinkDevice(ctx context.Context, l approval.Link) (*approval.LinkResult, error) {
	d := l.Device
	if d == nil || d.ID == "" {
		return nil, errors.New("store: link device: device and its ID are required")
	}
	var res *approval.LinkResult
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		res = nil
		var userID string
		err := tx.GetContext(ctx, &userID, s.q(`SELECT user_id FROM enrollments WHERE id = ?`), l.EnrollmentID)
		if err != nil {
			return notFound(err, "link: enrollment "+l.EnrollmentID)
		}
		if d.UserID != "" && d.UserID != userID {
			return fmt.Errorf("store: link: device user %q is not the enrollment's", d.UserID)
		}
		if err := s.lockUser(ctx, tx, userID); err != nil {
			return err
		}
		var er enrollmentRow
		err = tx.QueryRowxContext(ctx, s.q(`UPDATE enrollments
			SET status = 'linked', ended_at = ?, device_id = ?, device_name = ?, version = version + 1
			WHERE id = ? AND status = 'pending' AND expires_at > ?
			RETURNING `+enrollmentCols), ms(l.At), d.ID, d.Name, l.EnrollmentID, ms(l.At)).StructScan(&er)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("store: link: enrollment %s: %w", l.EnrollmentID, approval.ErrLost)
		}
		if err != nil {
			return fmt.Errorf("store: link: enrollment %s: %w", l.EnrollmentID, err)
		}
		active, err := s.activeDevices(ctx, tx, userID)
		if err != nil {
			return err
		}
		if len(active) > 0 && er.AuthorizedBy == "" {
			return fmt.Errorf("store: link: enrollment %s: %w", l.EnrollmentID, approval.ErrStepUpRequired)
		}
		created := d.CreatedAt
		if created.IsZero() {
			created = l.At
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO devices (`+deviceCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			d.ID, userID, d.Name, d.Platform, d.PublicKey, d.PushProvider, d.PushToken, d.PushTokenInvalid,
			approval.DeviceActive, ms(created), nullMS(d.LastSeenAt), nil, l.EnrollmentID, "", d.LinkIP,
		); err != nil {
			if _, ok := uniqueViolation(err); ok {
				return fmt.Errorf("store: link: device %s: %w", d.ID, approval.ErrConflict)
			}
			return fmt.Errorf("store: link: insert device %s: %w", d.ID, err)
		}
		// active is oldest first; the new device takes one of the places.
		keep := max(l.MaxDevices, 1) - 1
		var retired []approval.Device
		for i := 0; i < len(active)-keep; i++ {
			var dr deviceRow
			err := tx.QueryRowxContext(ctx, s.q(`UPDATE devices
				SET status = 'retired', ended_at = ?, retired_by = ?
				WHERE id = ? AND status = 'active' RETURNING `+deviceCols), ms(l.At), d.ID, active[i].ID).StructScan(&dr)
			if err != nil {
				return fmt.Errorf("store: link: retire device %s: %w", active[i].ID, err)
			}
			retired = append(retired, *dr.device())
		}
		res = &approval.LinkResult{Enrollment: er.enrollment(), Retired: retired}
		return s.writeAudit(ctx, tx, fill(l.Audit, "enrollment", l.EnrollmentID, userID, l.At))
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// EndEnrollment moves a pending enrollment to expired, with its audit entry;
// ErrLost when it was not pending, ErrNotFound when there is none.
func (s *Store) EndEnrollment(ctx context.Context, id string, at time.Time, audit approval.AuditEntry) (*approval.Enrollment, error) {
	var out *approval.Enrollment
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		var row enrollmentRow
		err := tx.QueryRowxContext(ctx, s.q(`UPDATE enrollments
			SET status = 'expired', ended_at = ?, version = version + 1
			WHERE id = ? AND status = 'pending'
			RETURNING `+enrollmentCols), ms(at), id).StructScan(&row)
		if errors.Is(err, sql.ErrNoRows) {
			return s.lostOrNotFound(ctx, tx, "enrollments", id, "end enrollment")
		}
		if err != nil {
			return fmt.Errorf("store: end enrollment %s: %w", id, err)
		}
		out = row.enrollment()
		return s.writeAudit(ctx, tx, fill(audit, "enrollment", id, row.UserID, at))
	})
	return out, err
}

// DueEnrollments lists pending enrollments whose expires_at <= now, the
// longest overdue first.
func (s *Store) DueEnrollments(ctx context.Context, now time.Time, limit int) ([]approval.Enrollment, error) {
	var rows []enrollmentRow
	if err := s.db.SelectContext(ctx, &rows, s.q(`SELECT `+enrollmentCols+` FROM enrollments
		WHERE status = 'pending' AND expires_at <= ? ORDER BY expires_at, id LIMIT ?`), ms(now), limit); err != nil {
		return nil, fmt.Errorf("store: due enrollments: %w", err)
	}
	return enrollments(rows), nil
}

// GetDevice returns the device whatever its status, or ErrNotFound.
func (s *Store) GetDevice(ctx context.Context, id string) (*approval.Device, error) {
	var row deviceRow
	if err := s.db.GetContext(ctx, &row, s.q(`SELECT `+deviceCols+` FROM devices WHERE id = ?`), id); err != nil {
		return nil, notFound(err, "device "+id)
	}
	return row.device(), nil
}

// ActiveDevices lists the user's active devices, oldest first.
func (s *Store) ActiveDevices(ctx context.Context, userID string) ([]approval.Device, error) {
	return s.activeDevices(ctx, s.db, userID)
}

func (s *Store) activeDevices(ctx context.Context, q sqlx.QueryerContext, userID string) ([]approval.Device, error) {
	var rows []deviceRow
	if err := sqlx.SelectContext(ctx, q, &rows, s.q(`SELECT `+deviceCols+` FROM devices
		WHERE user_id = ? AND status = 'active' ORDER BY created_at, id`), userID); err != nil {
		return nil, fmt.Errorf("store: active devices: %w", err)
	}
	return devices(rows), nil
}

// RemoveDevice moves an active device of the user to removed, with its audit
// entry (ErrNotFound when there is no such active device). With
// stepUpChallenge, that challenge is consumed in the same transaction
// (ConsumeStepUp's conditions; ErrLost and nothing removed otherwise).
func (s *Store) RemoveDevice(ctx context.Context, userID, deviceID, stepUpChallenge string, stepUpSince, at time.Time, audit approval.AuditEntry) (*approval.Device, error) {
	var out *approval.Device
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		if err := s.lockUser(ctx, tx, userID); err != nil {
			return err
		}
		var row deviceRow
		err := tx.QueryRowxContext(ctx, s.q(`UPDATE devices SET status = 'removed', ended_at = ?
			WHERE id = ? AND user_id = ? AND status = 'active'
			RETURNING `+deviceCols), ms(at), deviceID, userID).StructScan(&row)
		if err != nil {
			return notFound(err, "remove device "+deviceID)
		}
		if stepUpChallenge != "" {
			if _, err := s.consumeStepUp(ctx, tx, stepUpChallenge, userID, stepUpSince, at); err != nil {
				return err
			}
		}
		out = row.device()
		return s.writeAudit(ctx, tx, fill(audit, "device", deviceID, userID, at))
	})
	return out, err
}

// SetPushToken sets the device's push provider and token (valid again),
// with its audit entry; ErrNotFound when there is no such device.
func (s *Store) SetPushToken(ctx context.Context, deviceID, provider, token string, audit approval.AuditEntry) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error {
		var userID string
		err := tx.GetContext(ctx, &userID, s.q(`UPDATE devices
			SET push_provider = ?, push_token = ?, push_token_invalid = FALSE
			WHERE id = ? RETURNING user_id`), provider, token, deviceID)
		if err != nil {
			return notFound(err, "set push token of device "+deviceID)
		}
		return s.writeAudit(ctx, tx, fill(audit, "device", deviceID, userID, time.Time{}))
	})
}

// InvalidatePushToken marks the device's push token dead only if token is
// still its current, valid token; otherwise it changes nothing, writes no
// audit entry and returns nil.
func (s *Store) InvalidatePushToken(ctx context.Context, deviceID, token string, audit approval.AuditEntry) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error {
		var userID string
		err := tx.GetContext(ctx, &userID, s.q(`UPDATE devices SET push_token_invalid = TRUE
			WHERE id = ? AND push_token = ? AND push_token_invalid = FALSE RETURNING user_id`), deviceID, token)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("store: invalidate push token of device %s: %w", deviceID, err)
		}
		return s.writeAudit(ctx, tx, fill(audit, "device", deviceID, userID, time.Time{}))
	})
}

// TouchDevice records that the device was seen at at (never moving
// last_seen_at back). An unknown device is not an error.
func (s *Store) TouchDevice(ctx context.Context, deviceID string, at time.Time) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`UPDATE devices SET last_seen_at = ?
			WHERE id = ? AND (last_seen_at IS NULL OR last_seen_at < ?)`), ms(at), deviceID, ms(at))
		if err != nil {
			return fmt.Errorf("store: touch device %s: %w", deviceID, err)
		}
		return nil
	})
}
