// Package storetest makes fresh, real databases for tests: a SQLite file in
// the test's temporary directory, or a new PostgreSQL database on the server
// named by APPROVALD_TEST_POSTGRES_URL (default
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable), dropped when the
// test ends. When that server does not answer the test is skipped, unless
// APPROVALD_TEST_REQUIRE_SERVICES=1, which makes it fail.
//
//	for _, dialect := range storetest.Dialects() {
//		t.Run(dialect, func(t *testing.T) {
//			st := storetest.Open(t, dialect)
//			...
//		})
//	}
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/store"
)

// DefaultPostgresURL is the server used when APPROVALD_TEST_POSTGRES_URL is unset.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// Dialects lists the dialects to run a store test against.
func Dialects() []string { return []string{store.SQLite, store.Postgres} }

// Open returns a migrated store on a fresh database of dialect, closed and
// removed when the test ends.
func Open(t testing.TB, dialect string) *store.Store {
	t.Helper()
	st := OpenURL(t, URL(t, dialect))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("storetest: migrate: %v", err)
	}
	return st
}

// OpenURL opens (without migrating) the database at url, closed when the
// test ends.
func OpenURL(t testing.TB, url string) *store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatalf("storetest: open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// URL returns the URL of a fresh, empty database of dialect (no schema),
// removed when the test ends.
func URL(t testing.TB, dialect string) string {
	t.Helper()
	switch dialect {
	case store.SQLite:
		return "sqlite:" + filepath.Join(t.TempDir(), "approvald.db")
	case store.Postgres:
		return postgresURL(t)
	}
	t.Fatalf("storetest: unknown dialect %q", dialect)
	return ""
}

func postgresURL(t testing.TB) string {
	server := os.Getenv("APPROVALD_TEST_POSTGRES_URL")
	if server == "" {
		server = DefaultPostgresURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := store.Open(ctx, server)
	if err != nil {
		if os.Getenv("APPROVALD_TEST_REQUIRE_SERVICES") == "1" {
			t.Fatalf("storetest: PostgreSQL required: %v", err)
		}
		t.Skipf("storetest: PostgreSQL not available (set APPROVALD_TEST_POSTGRES_URL): %v", err)
	}
	defer admin.Close()

	var b [8]byte
	rand.Read(b[:])
	name := "approvald_test_" + hex.EncodeToString(b[:])
	if _, err := admin.DB().ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("storetest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := store.Open(ctx, server)
		if err != nil {
			t.Errorf("storetest: drop database %s: %v", name, err)
			return
		}
		defer admin.Close()
		if _, err := admin.DB().ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("storetest: drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}
