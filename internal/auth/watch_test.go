package auth

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func watchKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func TestWatchTokensRoundTrip(t *testing.T) {
	w, err := NewWatchTokens(watchKey(1))
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("z", 64)
	for _, tc := range []struct{ kind, id string }{
		{WatchChallenge, NewID()},
		{WatchEnrollment, NewID()},
		{WatchChallenge, long},
		{WatchEnrollment, "a.b~c"},
	} {
		a, b := w.Mint(tc.kind, tc.id), w.Mint(tc.kind, tc.id)
		if a == b {
			t.Fatal("two mints are equal")
		}
		for _, tok := range []string{a, b} {
			if len(tok) > 200 || !urlSafe(tok) {
				t.Fatalf("token %q: len %d", tok, len(tok))
			}
			kind, id, err := w.Parse(tok)
			if err != nil || kind != tc.kind || id != tc.id {
				t.Fatalf("Parse = %q, %q, %v; want %q, %q", kind, id, err, tc.kind, tc.id)
			}
		}
	}
	// Same key bytes, new instance (another server): still valid.
	w2, err := NewWatchTokens(watchKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := w2.Parse(w.Mint(WatchChallenge, "x")); err != nil {
		t.Fatalf("other instance, same key: %v", err)
	}
}

func TestWatchTokensRefuse(t *testing.T) {
	w, err := NewWatchTokens(watchKey(1))
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewWatchTokens(watchKey(2))
	if err != nil {
		t.Fatal(err)
	}
	tok := w.Mint(WatchChallenge, "chal_1")
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	// A 7-byte id makes the token 58 bytes, which base64 pads.
	rawPadded, err := base64.RawURLEncoding.DecodeString(w.Mint(WatchEnrollment, "enr_123"))
	if err != nil || len(rawPadded)%3 == 0 {
		t.Fatalf("setup: %v, %d bytes", err, len(rawPadded))
	}
	reenc := func(f func(b []byte) []byte) string {
		return base64.RawURLEncoding.EncodeToString(f(append([]byte(nil), raw...)))
	}

	cases := map[string]string{
		"empty":        "",
		"other key":    other.Mint(WatchChallenge, "chal_1"),
		"kind swapped": reenc(func(b []byte) []byte { b[1] = 'e'; return b }),
		"id changed":   reenc(func(b []byte) []byte { b[3] = 'C'; return b }),
		"truncated":    tok[:len(tok)-1],
		"mac dropped":  reenc(func(b []byte) []byte { return b[:len(b)-32] }),
		"extra byte":   reenc(func(b []byte) []byte { return append(b, 0) }),
		"padded":       tok + "=",
		"padded id":    base64.URLEncoding.EncodeToString(rawPadded),
		"newline":      tok[:10] + "\n" + tok[10:],
		"std alphabet": strings.NewReplacer("-", "+", "_", "/").Replace(tok) + "+",
		"too long":     strings.Repeat("A", 400),
	}
	// Structurally wrong bodies carrying a valid MAC (only the key holder
	// could make these; they must still be refused).
	forge := func(body []byte) string {
		return base64.RawURLEncoding.EncodeToString(append(body, w.mac(body)...))
	}
	nonce := make([]byte, watchNonceLen)
	id := []byte("chal_1")
	mk := func(ver, kind, n byte, id []byte, nonce []byte) []byte {
		b := []byte{ver, kind, n}
		b = append(b, id...)
		return append(b, nonce...)
	}
	cases["valid MAC, version 2"] = forge(mk(2, 'c', 6, id, nonce))
	cases["valid MAC, kind x"] = forge(mk(1, 'x', 6, id, nonce))
	cases["valid MAC, length byte too big"] = forge(mk(1, 'c', 7, id, nonce))
	cases["valid MAC, length byte too small"] = forge(mk(1, 'c', 5, id, nonce))
	cases["valid MAC, empty id"] = forge(mk(1, 'c', 0, nil, append(nonce, 0)))
	cases["valid MAC, short nonce"] = forge(mk(1, 'c', 6, id, nonce[:15]))
	if k, i, err := w.Parse(forge(mk(1, 'e', 6, id, nonce))); err != nil || k != "e" || i != "chal_1" {
		t.Fatalf("forge helper broken: %q %q %v", k, i, err)
	}
	for i := range raw {
		cases[fmt.Sprintf("bit flip at byte %d", i)] = reenc(func(b []byte) []byte { b[i] ^= 0x10; return b })
	}
	for name, c := range cases {
		kind, id, err := w.Parse(c)
		if err == nil {
			t.Errorf("%s: accepted as %q %q", name, kind, id)
			continue
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v does not wrap ErrInvalid", name, err)
		}
	}
	if _, _, err := w.Parse(tok); err != nil {
		t.Fatalf("control refused: %v", err)
	}
}

func TestNewWatchTokensKeyLength(t *testing.T) {
	if _, err := NewWatchTokens(make([]byte, 31)); err == nil {
		t.Fatal("31-byte key accepted")
	}
	if _, err := NewWatchTokens(nil); err == nil {
		t.Fatal("nil key accepted")
	}
	if _, err := NewWatchTokens(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	// The key is copied: changing the caller's slice changes nothing.
	k := watchKey(7)
	w, _ := NewWatchTokens(k)
	tok := w.Mint(WatchEnrollment, "enr_1")
	k[0] = 0
	if _, _, err := w.Parse(tok); err != nil {
		t.Fatalf("key not copied: %v", err)
	}
}

func TestWatchMintPanicsOnBadInput(t *testing.T) {
	w, _ := NewWatchTokens(watchKey(1))
	for _, tc := range []struct{ kind, id string }{
		{"x", "id"}, {"", "id"}, {"cc", "id"}, {WatchChallenge, ""}, {WatchChallenge, strings.Repeat("a", 65)},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Mint(%q, %q) did not panic", tc.kind, tc.id)
				}
			}()
			w.Mint(tc.kind, tc.id)
		}()
	}
}
