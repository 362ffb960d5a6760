// Package store is the SQL implementation of approval.Store, for SQLite
// (modernc.org/sqlite, pure Go: the embedded default) and PostgreSQL
// (lib/pq). Queries are written once, with ? placeholders rebound for the
// dialect; the dialects differ only in the per-user lock and the migration
// lock. Times are stored as unix milliseconds and come back in UTC.
//
// Races are settled by conditional updates (UPDATE ... WHERE <state>
// RETURNING ...): of two callers, exactly one changes the row, the other gets
// approval.ErrLost. Creating a challenge, an enrollment or a link also takes
// a per-user lock (PostgreSQL advisory lock; SQLite write transactions are
// serialised anyway) so that the counts it checks stay true until it commits.
package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/schema"
)

// Dialects, as Dialect reports them.
const (
	SQLite   = schema.DialectSQLite
	Postgres = schema.DialectPostgres
)

// CodeFailureRetention is how long Purge keeps failed enrollment codes: longer
// than any window they are counted in.
const CodeFailureRetention = 24 * time.Hour

// maxTxAttempts bounds the retries of a transaction that PostgreSQL aborted
// for a deadlock or a serialisation failure, and of a challenge insert that
// hit another pending challenge's number.
const maxTxAttempts = 5

// Store is an approval.Store backed by SQLite or PostgreSQL. It is safe for
// concurrent use.
type Store struct {
	db      *sqlx.DB
	dialect string
	// writeGate serialises this process's SQLite write transactions, so
	// that they queue in order instead of polling SQLite's busy handler
	// (which may starve one waiter until busy_timeout). Other processes
	// sharing the file still wait on busy_timeout. nil for PostgreSQL.
	writeGate chan struct{}
	// webhooks: writeAudit also enqueues webhook events (EnableWebhooks).
	webhooks atomic.Bool
}

var _ approval.Store = (*Store)(nil)

// Open connects to the database named by dsn and checks that it answers:
//
//	sqlite:PATH, sqlite:///ABSOLUTE/PATH or a bare PATH   SQLite file (created if missing)
//	postgres://... or postgresql://...                     PostgreSQL (lib/pq URL syntax)
//
// Open does not change the schema: call Migrate.
func Open(ctx context.Context, dsn string) (*Store, error) {
	var (
		s   *Store
		err error
	)
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		s, err = openPostgres(dsn)
	case strings.HasPrefix(dsn, "sqlite:"):
		s, err = openSQLite(strings.TrimPrefix(strings.TrimPrefix(dsn, "sqlite:"), "//"))
	case strings.Contains(dsn, "://"):
		return nil, fmt.Errorf("store: unsupported database URL scheme in %q", redact(dsn))
	default:
		s, err = openSQLite(dsn)
	}
	if err != nil {
		return nil, err
	}
	if err := s.Ping(ctx); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store: %s database does not answer: %w", s.dialect, err)
	}
	return s, nil
}

func openSQLite(path string) (*Store, error) {
	if path == "" || path == ":memory:" {
		return nil, errors.New("store: sqlite needs a file path (an in-memory database is not shared between connections)")
	}
	// A file: URI, so escape what SQLite's URI parser would read.
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	dsn := "file:" + esc + "?" + strings.Join([]string{
		"_pragma=busy_timeout(10000)",
		"_pragma=journal_mode(WAL)",
		"_pragma=synchronous(NORMAL)",
		"_pragma=foreign_keys(1)",
		"_txlock=immediate",
	}, "&")
	db, err := sqlx.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	// WAL lets readers run beside the one writer; each connection has its
	// own page cache, so the pool is bounded.
	n := max(4, runtime.GOMAXPROCS(0))
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	return &Store{db: db, dialect: SQLite, writeGate: make(chan struct{}, 1)}, nil
}

func openPostgres(dsn string) (*Store, error) {
	db, err := sqlx.Open("postgres", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres %s: %w", redact(dsn), err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return &Store{db: db, dialect: Postgres}, nil
}

// redact hides the password of a database URL.
func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Dialect is SQLite or Postgres.
func (s *Store) Dialect() string { return s.dialect }

// DB is the underlying pool, for tests and tools.
func (s *Store) DB() *sqlx.DB { return s.db }

// Ping checks that the database answers (readiness).
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Close closes the pool.
func (s *Store) Close() error { return s.db.Close() }

// Migrate applies the migrations not yet applied, each in its own
// transaction, recording them in schema_migrations. Several instances may
// call it at once: on PostgreSQL they take turns under an advisory lock; on
// SQLite each migration's immediate transaction re-checks whether it was
// applied.
func (s *Store) Migrate(ctx context.Context) error {
	ms, err := schema.Migrations(s.dialect)
	if err != nil {
		return err
	}
	conn, err := s.db.Connx(ctx)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer conn.Close()
	if s.dialect == Postgres {
		const lock = "SELECT pg_advisory_lock(hashtextextended('approvald.migrate', 0))"
		if _, err := conn.ExecContext(ctx, lock); err != nil {
			return fmt.Errorf("store: migrate: lock: %w", err)
		}
		defer func() {
			// A fresh context: the lock must go even if ctx is done,
			// else the pooled connection keeps holding it.
			uctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			const unlock = "SELECT pg_advisory_unlock(hashtextextended('approvald.migrate', 0))"
			if _, err := conn.ExecContext(uctx, unlock); err != nil {
				conn.Raw(func(any) error { return driver.ErrBadConn }) // drop the connection, and its lock
			}
		}()
	}
	const create = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    BIGINT NOT NULL PRIMARY KEY,
	applied_at BIGINT NOT NULL)`
	if _, err := conn.ExecContext(ctx, create); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	for _, m := range ms {
		if err := s.applyMigration(ctx, conn, m); err != nil {
			return fmt.Errorf("store: migration %s/%s: %w", s.dialect, m.Name, err)
		}
	}
	return nil
}

func (s *Store) applyMigration(ctx context.Context, conn *sqlx.Conn, m schema.Migration) (err error) {
	tx, err := conn.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	var n int
	if err := tx.GetContext(ctx, &n, s.db.Rebind("SELECT COUNT(*) FROM schema_migrations WHERE version = ?"), m.Version); err != nil {
		return err
	}
	if n > 0 {
		return tx.Rollback()
	}
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, s.db.Rebind("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"),
		m.Version, ms(time.Now())); err != nil {
		return err
	}
	return tx.Commit()
}

// SchemaVersion is the highest applied migration, 0 before any.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	err := s.db.GetContext(ctx, &v, "SELECT MAX(version) FROM schema_migrations")
	if err != nil {
		return 0, fmt.Errorf("store: schema version: %w", err)
	}
	return int(v.Int64), nil
}

// q rebinds a query written with ? placeholders for the dialect.
func (s *Store) q(query string) string { return s.db.Rebind(query) }

// inTx runs fn in a write transaction and commits if fn returns nil. It
// retries the whole transaction when PostgreSQL aborted it for a deadlock or
// serialisation failure, so fn must be safe to run again.
func (s *Store) inTx(ctx context.Context, fn func(tx *sqlx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := s.tryTx(ctx, fn)
		if err == nil || attempt == maxTxAttempts || !retryable(err) {
			return err
		}
	}
}

func (s *Store) tryTx(ctx context.Context, fn func(tx *sqlx.Tx) error) error {
	if s.writeGate != nil {
		select {
		case s.writeGate <- struct{}{}:
			defer func() { <-s.writeGate }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

// lockUser serialises the transactions that create objects for userID
// (challenges, enrollments, links), until the transaction ends. SQLite
// write transactions are already serialised (BEGIN IMMEDIATE).
func (s *Store) lockUser(ctx context.Context, tx *sqlx.Tx, userID string) error {
	if s.dialect != Postgres {
		return nil
	}
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "user:"+userID); err != nil {
		return fmt.Errorf("store: lock user: %w", err)
	}
	return nil
}

func retryable(err error) bool {
	var pe *pq.Error
	if errors.As(err, &pe) {
		switch pe.SQLState() {
		case "40001", "40P01": // serialization_failure, deadlock_detected
			return true
		}
	}
	return false
}

// uniqueViolation reports whether err is a unique-constraint violation; index
// is the violated index (PostgreSQL) or SQLite's message naming the columns.
func uniqueViolation(err error) (index string, ok bool) {
	var pe *pq.Error
	if errors.As(err, &pe) && pe.SQLState() == "23505" {
		return pe.Constraint, true
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return se.Error(), true
		}
	}
	return "", false
}

// notFound maps sql.ErrNoRows to approval.ErrNotFound.
func notFound(err error, what string) error {
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("store: %s: %w", what, approval.ErrNotFound)
	}
	return fmt.Errorf("store: %s: %w", what, err)
}

// lostOrNotFound explains an update that changed nothing: ErrNotFound when
// the row does not exist, else ErrLost (it was not in the required state).
func (s *Store) lostOrNotFound(ctx context.Context, tx *sqlx.Tx, table, id, what string) error {
	var n int
	if err := tx.GetContext(ctx, &n, s.q("SELECT COUNT(*) FROM "+table+" WHERE id = ?"), id); err != nil {
		return fmt.Errorf("store: %s: %w", what, err)
	}
	if n == 0 {
		return fmt.Errorf("store: %s %s: %w", what, id, approval.ErrNotFound)
	}
	return fmt.Errorf("store: %s %s: %w", what, id, approval.ErrLost)
}

// ms is t in unix milliseconds.
func ms(t time.Time) int64 { return t.UnixMilli() }

// fromMS is the UTC time of unix milliseconds v.
func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

func nullMS(t *time.Time) sql.NullInt64 {
	if t == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: ms(*t), Valid: true}
}

func fromNullMS(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMS(v.Int64)
	return &t
}
