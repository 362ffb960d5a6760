package auth

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID()
		if id[0] == '-' || id[0] == '_' {
			t.Fatalf("id %q begins with %q", id, id[0])
		}
		if len(id) != 23 {
			t.Fatalf("len(%q) = %d", id, len(id))
		}
		b, err := base64.RawURLEncoding.DecodeString(id)
		if err != nil || len(b) != 17 {
			t.Fatalf("%q: %v, %d bytes", id, err, len(b))
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}

func TestNewSecret(t *testing.T) {
	a, b := NewSecret("apk_"), NewSecret("apk_")
	if a == b {
		t.Fatal("two secrets are equal")
	}
	if !strings.HasPrefix(a, "apk_") || len(a) != 4+43 {
		t.Fatalf("secret %q", a)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(a, "apk_"))
	if err != nil || len(raw) != 32 {
		t.Fatalf("%v, %d bytes", err, len(raw))
	}
}

func TestHashSecret(t *testing.T) {
	// FIPS 180-2 test vector.
	if got := HashSecret("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("HashSecret(abc) = %s", got)
	}
	if HashSecret("apk_a") == HashSecret("apk_b") {
		t.Fatal("collision")
	}
}

func TestNewEnrollmentCode(t *testing.T) {
	used := map[rune]bool{}
	seen := map[string]bool{}
	for i := 0; i < 2000; i++ {
		c := NewEnrollmentCode()
		if len(c) != 8 {
			t.Fatalf("len(%q) = %d", c, len(c))
		}
		for _, r := range c {
			if !strings.ContainsRune(codeAlphabet, r) {
				t.Fatalf("%q has %q, not in the alphabet", c, r)
			}
			used[r] = true
		}
		if n, ok := NormalizeCode(c); !ok || n != c {
			t.Fatalf("NormalizeCode(%q) = %q, %v", c, n, ok)
		}
		if n, ok := NormalizeCode(FormatCode(c)); !ok || n != c {
			t.Fatalf("NormalizeCode(FormatCode(%q)) = %q, %v", c, n, ok)
		}
		seen[c] = true
	}
	// 16000 symbols: every one of the 32 should appear (chance of a miss ~1e-200).
	if len(used) != 32 {
		t.Fatalf("only %d of 32 symbols used", len(used))
	}
	if len(seen) < 1990 {
		t.Fatalf("only %d distinct codes in 2000", len(seen))
	}
	if strings.ContainsAny(codeAlphabet, "ILOU") || len(codeAlphabet) != 32 {
		t.Fatal("bad alphabet")
	}
}

func TestFormatCode(t *testing.T) {
	if got := FormatCode("K7QD9XMW"); got != "K7QD-9XMW" {
		t.Fatalf("FormatCode = %q", got)
	}
	if got := FormatCode("K7QD"); got != "K7QD" {
		t.Fatalf("FormatCode(short) = %q", got)
	}
}

func TestNormalizeCode(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"K7QD9XMW", "K7QD9XMW", true},
		{"K7QD-9XMW", "K7QD9XMW", true},
		{"k7qd-9xmw", "K7QD9XMW", true},
		{"K7QD 9XMW", "K7QD9XMW", true},
		{" k7qd - 9xmw ", "K7QD9XMW", true},
		{"--K7QD9XMW--", "K7QD9XMW", true},
		{"OOOOIIII", "00001111", true},
		{"oooolLiI", "00001111", true},
		{"K7QD-9XMO", "K7QD9XM0", true},
		{"K7QD-9XML", "K7QD9XM1", true},
		{"K7QD-9XMI", "K7QD9XM1", true},
		{"K7QD-9XMU", "", false}, // U is not in the alphabet
		{"u7qd9xmw", "", false},
		{"K7QD9XM", "", false},   // 7 chars
		{"K7QD9XMWA", "", false}, // 9 chars
		{"", "", false},
		{"--------", "", false},
		{"K7QD_9XMW", "", false}, // only '-' and ' ' are removed
		{"K7QD\t9XMW", "", false},
		{"K7QD.9XMW", "", false},
		{"K7QD9XM\u00e9", "", false},
		{"K7QD9XMı", "", false}, // dotless i: no Unicode case folding
		{"K7QD9XMſ", "", false}, // long s upper-cases to S in Unicode
		{strings.Repeat(" ", 100) + "K7QD9XMW", "", false},
	}
	for _, tc := range tests {
		got, ok := NormalizeCode(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("NormalizeCode(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
