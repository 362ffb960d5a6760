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

// GetOrCreateSecret returns the stored value of name. When there is none it
// stores generate()'s value first; of concurrent callers (in any instance) the
// first to commit wins and every caller returns that value.
func (s *Store) GetOrCreateSecret(ctx context.Context, name string, generate func() ([]byte, error)) ([]byte, error) {
	var v []byte
	err := s.db.GetContext(ctx, &v, s.q(`SELECT value FROM secrets WHERE name = ?`), name)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: secret %s: %w", name, err)
	}
	fresh, err := generate()
	if err != nil {
		return nil, fmt.Errorf("store: secret %s: %w", name, err)
	}
	err = s.inTx(ctx, func(tx *sqlx.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO secrets (name, value, created_at) VALUES (?, ?, ?)
			ON CONFLICT (name) DO NOTHING`), name, fresh, ms(time.Now())); err != nil {
			return err
		}
		return tx.GetContext(ctx, &v, s.q(`SELECT value FROM secrets WHERE name = ?`), name)
	})
	if err != nil {
		return nil, fmt.Errorf("store: secret %s: %w", name, err)
	}
	return v, nil
}

// CreateAPIKey stores k; ErrConflict when an unrevoked key has its name (or
// any key its ID or hash).
func (s *Store) CreateAPIKey(ctx context.Context, k *approval.APIKey) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO api_keys (`+apiKeyCols+`) VALUES (?, ?, ?, ?, ?)`),
			k.ID, k.Name, k.Hash, ms(k.CreatedAt), nullMS(k.RevokedAt))
		if _, ok := uniqueViolation(err); ok {
			return fmt.Errorf("store: api key %q: %w", k.Name, approval.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("store: api key %q: %w", k.Name, err)
		}
		return nil
	})
}

// APIKeyByHash returns the unrevoked key with this hash; a revoked or
// unknown key is ErrNotFound.
func (s *Store) APIKeyByHash(ctx context.Context, hash string) (*approval.APIKey, error) {
	var row apiKeyRow
	err := s.db.GetContext(ctx, &row, s.q(`SELECT `+apiKeyCols+` FROM api_keys
		WHERE hash = ? AND revoked_at IS NULL`), hash)
	if err != nil {
		return nil, notFound(err, "api key by hash")
	}
	return row.apiKey(), nil
}

// ListAPIKeys lists every key, revoked ones too, oldest first.
func (s *Store) ListAPIKeys(ctx context.Context) ([]approval.APIKey, error) {
	var rows []apiKeyRow
	if err := s.db.SelectContext(ctx, &rows, `SELECT `+apiKeyCols+` FROM api_keys ORDER BY created_at, name, id`); err != nil {
		return nil, fmt.Errorf("store: list api keys: %w", err)
	}
	out := make([]approval.APIKey, len(rows))
	for i := range rows {
		out[i] = *rows[i].apiKey()
	}
	return out, nil
}

// RevokeAPIKey revokes the unrevoked key named name; ErrNotFound when there
// is none.
func (s *Store) RevokeAPIKey(ctx context.Context, name string, at time.Time) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL`), ms(at), name)
		if err != nil {
			return fmt.Errorf("store: revoke api key %q: %w", name, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("store: revoke api key %q: %w", name, err)
		} else if n == 0 {
			return fmt.Errorf("store: revoke api key %q: %w", name, approval.ErrNotFound)
		}
		return nil
	})
}

// SetUserEmail records the user's latest known email address.
func (s *Store) SetUserEmail(ctx context.Context, userID, email string, at time.Time) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO users (user_id, email, email_updated_at) VALUES (?, ?, ?)
			ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, email_updated_at = excluded.email_updated_at`),
			userID, email, ms(at))
		if err != nil {
			return fmt.Errorf("store: set user email: %w", err)
		}
		return nil
	})
}

// UserEmail returns the user's email address, "" when none is known.
func (s *Store) UserEmail(ctx context.Context, userID string) (string, error) {
	var email string
	err := s.db.GetContext(ctx, &email, s.q(`SELECT email FROM users WHERE user_id = ?`), userID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("store: user email: %w", err)
	}
	return email, nil
}

// LockUser locks the user until until, or keeps a later lock.
func (s *Store) LockUser(ctx context.Context, userID string, until time.Time) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error { return s.lockUserUntil(ctx, tx, userID, until) })
}

// lockUserUntil extends (never shortens) the user's fraud lock in tx.
func (s *Store) lockUserUntil(ctx context.Context, tx *sqlx.Tx, userID string, until time.Time) error {
	_, err := tx.ExecContext(ctx, s.q(`INSERT INTO users (user_id, locked_until) VALUES (?, ?)
		ON CONFLICT (user_id) DO UPDATE SET locked_until = CASE
			WHEN excluded.locked_until > users.locked_until THEN excluded.locked_until
			ELSE users.locked_until END`), userID, ms(until))
	if err != nil {
		return fmt.Errorf("store: lock user: %w", err)
	}
	return nil
}

// UserLockedUntil returns the end of the user's lock, the zero time when
// the user was never locked.
func (s *Store) UserLockedUntil(ctx context.Context, userID string) (time.Time, error) {
	var until int64
	err := s.db.GetContext(ctx, &until, s.q(`SELECT locked_until FROM users WHERE user_id = ?`), userID)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && until == 0) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("store: user lock: %w", err)
	}
	return fromMS(until), nil
}

// RememberJTI records (iss, jti) until expiresAt and reports whether it was
// new: of concurrent callers with the same pair exactly one gets true.
func (s *Store) RememberJTI(ctx context.Context, iss, jti string, expiresAt time.Time) (bool, error) {
	var fresh bool
	if s.dialect == Postgres {
		// One statement, committed without waiting for the WAL flush: a
		// replay entry lost in a crash only lets a token that already did
		// its work be sent again within its few minutes of life, and every
		// effect it can have is itself settled by a durable conditional
		// update. It saves a disk flush on every device request.
		res, err := s.db.ExecContext(ctx, `INSERT INTO jti_seen (iss, jti, expires_at)
			SELECT $1, $2, $3 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
			ON CONFLICT (iss, jti) DO NOTHING`, iss, jti, ms(expiresAt))
		if err != nil {
			return false, fmt.Errorf("store: remember jti: %w", err)
		}
		n, err := res.RowsAffected()
		return n == 1, err
	}
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO jti_seen (iss, jti, expires_at) VALUES (?, ?, ?)
			ON CONFLICT (iss, jti) DO NOTHING`), iss, jti, ms(expiresAt))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		fresh = n == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store: remember jti: %w", err)
	}
	return fresh, nil
}

// RecordCodeFailure counts one wrong enrollment code from ipKey.
func (s *Store) RecordCodeFailure(ctx context.Context, ipKey string, at time.Time) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO code_failures (ip_key, at) VALUES (?, ?)`), ipKey, ms(at)); err != nil {
			return fmt.Errorf("store: record code failure: %w", err)
		}
		return nil
	})
}

// CodeFailures counts wrong codes at or after since: from ipKey, and from
// everyone.
func (s *Store) CodeFailures(ctx context.Context, ipKey string, since time.Time) (perIP, total int, err error) {
	err = s.db.QueryRowxContext(ctx, s.q(`SELECT
		(SELECT COUNT(*) FROM code_failures WHERE ip_key = ? AND at >= ?),
		(SELECT COUNT(*) FROM code_failures WHERE at >= ?)`), ipKey, ms(since), ms(since)).Scan(&perIP, &total)
	if err != nil {
		return 0, 0, fmt.Errorf("store: code failures: %w", err)
	}
	return perIP, total, nil
}

// ClaimCodeAttempt counts one enrollment-code attempt from ipKey at at as a
// failure and returns its id, unless ipKey already has perIPMax failures at
// or after since, or all clients together more than totalMax: then ok is
// false and nothing is written. Check and insert run under one lock for
// every instance (PostgreSQL advisory lock; SQLite write transactions are
// serialised), so concurrent attempts cannot pass the limit together.
func (s *Store) ClaimCodeAttempt(ctx context.Context, ipKey string, at, since time.Time, perIPMax, totalMax int) (int64, bool, error) {
	var (
		id int64
		ok bool
	)
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		id, ok = 0, false
		if s.dialect == Postgres {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('approvald.code_attempts', 0))"); err != nil {
				return err
			}
		}
		var perIP, total int
		if err := tx.QueryRowxContext(ctx, s.q(`SELECT
			(SELECT COUNT(*) FROM code_failures WHERE ip_key = ? AND at >= ?),
			(SELECT COUNT(*) FROM code_failures WHERE at >= ?)`), ipKey, ms(since), ms(since)).Scan(&perIP, &total); err != nil {
			return err
		}
		if perIP >= perIPMax || total > totalMax {
			return nil
		}
		if err := tx.GetContext(ctx, &id, s.q(`INSERT INTO code_failures (ip_key, at) VALUES (?, ?) RETURNING id`), ipKey, ms(at)); err != nil {
			return err
		}
		ok = true
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("store: claim code attempt: %w", err)
	}
	return id, ok, nil
}

// ReleaseCodeAttempt removes the failure a claim counted; an unknown id is
// not an error.
func (s *Store) ReleaseCodeAttempt(ctx context.Context, id int64) error {
	return s.inTx(ctx, func(tx *sqlx.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM code_failures WHERE id = ?`), id); err != nil {
			return fmt.Errorf("store: release code attempt: %w", err)
		}
		return nil
	})
}

// Hit counts one event for key in the fixed window (of length window,
// aligned to the unix epoch) that contains now, and returns the window's
// count so far.
func (s *Store) Hit(ctx context.Context, key string, window time.Duration, now time.Time) (int, error) {
	w := window.Milliseconds()
	if w <= 0 {
		return 0, fmt.Errorf("store: hit %q: window %v is shorter than a millisecond", key, window)
	}
	start := ms(now) / w * w
	var n int
	err := s.inTx(ctx, func(tx *sqlx.Tx) error {
		// A hit stamped in an older window than the stored one (clocks of
		// two instances apart) counts in the stored window.
		return tx.GetContext(ctx, &n, s.q(`INSERT INTO rate_counters (counter_key, window_start, hits, expires_at)
			VALUES (?, ?, 1, ?)
			ON CONFLICT (counter_key) DO UPDATE SET
				hits = CASE WHEN excluded.window_start > rate_counters.window_start
					THEN 1 ELSE rate_counters.hits + 1 END,
				window_start = CASE WHEN excluded.window_start > rate_counters.window_start
					THEN excluded.window_start ELSE rate_counters.window_start END,
				expires_at = CASE WHEN excluded.window_start > rate_counters.window_start
					THEN excluded.expires_at ELSE rate_counters.expires_at END
			RETURNING hits`), key, start, start+w)
	})
	if err != nil {
		return 0, fmt.Errorf("store: hit %q: %w", key, err)
	}
	return n, nil
}

// Audit writes an entry that is not part of another change.
func (s *Store) Audit(ctx context.Context, e approval.AuditEntry) error {
	if e.Event == "" {
		return errors.New("store: audit: entry has no event")
	}
	return s.inTx(ctx, func(tx *sqlx.Tx) error { return s.writeAudit(ctx, tx, e) })
}

// AuditLog lists the entries about objectID in the order they were written.
func (s *Store) AuditLog(ctx context.Context, objectID string) ([]approval.AuditEntry, error) {
	var rows []auditRow
	if err := s.db.SelectContext(ctx, &rows, s.q(`SELECT `+auditCols+` FROM audit_log
		WHERE object_id = ? ORDER BY id`), objectID); err != nil {
		return nil, fmt.Errorf("store: audit log: %w", err)
	}
	out := make([]approval.AuditEntry, len(rows))
	for i := range rows {
		out[i] = rows[i].entry()
	}
	return out, nil
}

// fill completes an audit entry from the change it records: the object, the
// user and the time, where the entry leaves them empty.
func fill(e approval.AuditEntry, objectType, objectID, userID string, at time.Time) approval.AuditEntry {
	if e.ObjectType == "" && e.ObjectID == "" {
		e.ObjectType, e.ObjectID = objectType, objectID
	}
	if e.UserID == "" {
		e.UserID = userID
	}
	if e.At.IsZero() {
		e.At = at
	}
	return e
}

// writeAudit inserts e in tx; an entry without an event is not written.
func (s *Store) writeAudit(ctx context.Context, tx *sqlx.Tx, e approval.AuditEntry) error {
	if e.Event == "" {
		return nil
	}
	if e.At.IsZero() {
		e.At = time.Now()
	}
	_, err := tx.ExecContext(ctx, s.q(`INSERT INTO audit_log (`+auditCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		ms(e.At), e.ActorType, e.Actor, e.Event, e.ObjectType, e.ObjectID, e.UserID, e.IP, string(e.Detail))
	if err != nil {
		return fmt.Errorf("store: audit %s: %w", e.Event, err)
	}
	return s.enqueueWebhook(ctx, tx, e) // the webhook outbox, when on: same transaction
}

// Purge deletes what has outlived its use at now: replay entries,
// idempotency keys and rate counters past their expiry, and failed codes
// older than CodeFailureRetention. Challenges, enrollments, devices and the
// audit log are kept. Call it periodically (the sweeper).
func (s *Store) Purge(ctx context.Context, now time.Time) error {
	stmts := []struct {
		query string
		arg   int64
	}{
		{`DELETE FROM jti_seen WHERE expires_at <= ?`, ms(now)},
		{`DELETE FROM idempotency_keys WHERE expires_at <= ?`, ms(now)},
		{`DELETE FROM rate_counters WHERE expires_at <= ?`, ms(now)},
		{`DELETE FROM code_failures WHERE at < ?`, ms(now.Add(-CodeFailureRetention))},
		// A challenge link dies with its challenge (minutes); a day's margin
		// covers every extension.
		{`DELETE FROM email_links WHERE expires_at < ?`, ms(now.Add(-24 * time.Hour))},
	}
	for _, st := range stmts {
		err := s.inTx(ctx, func(tx *sqlx.Tx) error {
			_, err := tx.ExecContext(ctx, s.q(st.query), st.arg)
			return err
		})
		if err != nil {
			return fmt.Errorf("store: purge: %w", err)
		}
	}
	if s.dialect == SQLite {
		// Keeps the query planner's statistics fresh (SQLite's advice
		// for long-lived connections); cheap when nothing changed.
		err := s.inTx(ctx, func(tx *sqlx.Tx) error {
			_, err := tx.ExecContext(ctx, "PRAGMA optimize")
			return err
		})
		if err != nil {
			return fmt.Errorf("store: purge: optimize: %w", err)
		}
	}
	return nil
}
