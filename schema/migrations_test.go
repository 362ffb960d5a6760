package schema

import (
	"slices"
	"strings"
	"testing"
)

func TestMigrations(t *testing.T) {
	var names [][]string
	for _, d := range []string{DialectSQLite, DialectPostgres} {
		ms, err := Migrations(d)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 0 {
			t.Fatalf("%s: no migrations", d)
		}
		var n []string
		for i, m := range ms {
			if m.Version != i+1 || strings.TrimSpace(m.SQL) == "" {
				t.Fatalf("%s: migration %d = %+v", d, i, m.Name)
			}
			upper := strings.ToUpper(m.SQL)
			if strings.Contains(upper, "BEGIN;") || strings.Contains(upper, "COMMIT;") {
				t.Fatalf("%s/%s manages its own transaction", d, m.Name)
			}
			n = append(n, m.Name)
		}
		names = append(names, n)
	}
	if !slices.Equal(names[0], names[1]) {
		t.Fatalf("the dialects' migrations differ: %v and %v", names[0], names[1])
	}
	if _, err := Migrations("mysql"); err == nil {
		t.Fatal("unknown dialect accepted")
	}
}
