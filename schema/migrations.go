// Package schema holds what approvald's storage and API are built from: the
// database migrations, one folder per dialect, embedded in the binary.
//
// A migration is a file named NNNN_description.sql (NNNN its version,
// counted from 0001 without gaps). Each runs in its own transaction, so it
// must not contain BEGIN or COMMIT. Migrations are never edited once
// released: a change is a new file, written for both dialects.
package schema

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
)

//go:embed sqlite/*.sql
var sqliteFS embed.FS

//go:embed postgres/*.sql
var postgresFS embed.FS

// The dialects there are migrations for.
const (
	DialectSQLite   = "sqlite"
	DialectPostgres = "postgres"
)

// Migration is one versioned schema change.
type Migration struct {
	Version int
	Name    string // the file name
	SQL     string
}

// Migrations returns the migrations of dialect in version order.
func Migrations(dialect string) ([]Migration, error) {
	var fsys fs.FS
	switch dialect {
	case DialectSQLite:
		fsys = sqliteFS
	case DialectPostgres:
		fsys = postgresFS
	default:
		return nil, fmt.Errorf("schema: unknown dialect %q", dialect)
	}
	fsys, err := fs.Sub(fsys, dialect)
	if err != nil {
		return nil, err
	}
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, err
	}
	ms := make([]Migration, 0, len(names))
	for _, name := range names {
		prefix, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(prefix)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("schema: %s/%s: name is not NNNN_description.sql", dialect, name)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i, m := range ms {
		if m.Version != i+1 {
			return nil, fmt.Errorf("schema: %s/%s: expected version %d", dialect, m.Name, i+1)
		}
	}
	return ms, nil
}
