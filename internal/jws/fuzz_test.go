package jws

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"testing"
)

func FuzzParse(f *testing.F) {
	key := newKey(f)
	good, err := Sign(key, map[string]any{"kid": "d", "typ": "JWT"}, map[string]any{"iss": "d", "iat": 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good + "=")
	f.Add("")
	f.Add("..")
	f.Add("e30.e30.")
	f.Add("e30.e30.e30")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add(rawES256(f, key, `{"alg":"ES256","crit":["x"]}`, `{"a":[1,{"b":null}]}`))
	pub := &key.PublicKey
	empty := &ecdsa.PublicKey{Curve: elliptic.P256()}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			if tok != nil {
				t.Fatal("token returned with error")
			}
			return
		}
		if len(s) > MaxTokenLen {
			t.Fatal("over-long token accepted")
		}
		if tok.Header == nil || len(tok.Payload) == 0 || bytes.TrimSpace(tok.Payload)[0] != '{' {
			t.Fatalf("bad token from %q", s)
		}
		_ = tok.VerifyES256(pub)
		_ = tok.VerifyES256(nil)
		_ = tok.VerifyES256(empty)
	})
}
