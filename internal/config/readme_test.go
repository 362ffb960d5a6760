package config

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the README's settings table from Settings")

const (
	tableStart = "<!-- settings table: every entry of internal/config.Settings; a test keeps it complete -->\n"
	tableEnd   = "\n\n"
)

func settingsTable() string {
	var b strings.Builder
	b.WriteString("| variable | default | meaning |\n| --- | --- | --- |\n")
	for _, s := range Settings {
		def := s.Default
		if !strings.HasPrefix(def, "(") && !strings.Contains(def, " ") {
			def = "`" + def + "`"
		}
		b.WriteString("| `" + s.Name + "` | " + def + " | " + s.Doc + " |\n")
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// The README's settings table is Settings, row for row
// (go test ./internal/config -run README -update rewrites it).
func TestREADMEListsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i := strings.Index(readme, tableStart)
	if i < 0 {
		t.Fatal("README has no settings table marker")
	}
	i += len(tableStart)
	j := strings.Index(readme[i:], tableEnd)
	if j < 0 {
		t.Fatal("README's settings table has no end")
	}
	want := settingsTable()
	if got := readme[i : i+j]; got != want {
		if *update {
			if err := os.WriteFile("../../README.md", []byte(readme[:i]+want+readme[i+j:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("README's settings table is not Settings; run go test ./internal/config -run README -update\ngot:\n%s\nwant:\n%s", got, want)
	}
}
