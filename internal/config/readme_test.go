package config

import (
	"os"
	"strings"
	"testing"
)

// The README's settings table must name every setting, with its default.
func TestREADMEListsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, s := range Settings {
		row := "| `" + s.Name + "` | "
		i := strings.Index(readme, row)
		if i < 0 {
			t.Errorf("README has no row for %s", s.Name)
			continue
		}
		line := readme[i:]
		line = line[:strings.IndexByte(line, '\n')]
		if !strings.Contains(line, s.Default) {
			t.Errorf("README row for %s does not give the default %q: %s", s.Name, s.Default, line)
		}
	}
}
