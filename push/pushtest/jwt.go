package pushtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
)

// jws is a decoded compact JWS whose signature has not been checked yet.
type jws struct {
	header    struct{ Alg, Kid, Typ string }
	claims    map[string]any
	signed    []byte // header.payload, the signing input
	signature []byte
}

func parseJWS(s string) (*jws, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a compact JWS")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, err
	}
	cb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, err
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, err
	}
	t := &jws{signed: []byte(parts[0] + "." + parts[1]), signature: sig}
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, err
	}
	t.header.Alg, t.header.Kid, t.header.Typ = h.Alg, h.Kid, h.Typ
	if err := json.Unmarshal(cb, &t.claims); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *jws) verifyES256(pub *ecdsa.PublicKey) bool {
	if t.header.Alg != "ES256" || len(t.signature) != 64 || pub == nil {
		return false
	}
	h := sha256.Sum256(t.signed)
	r := new(big.Int).SetBytes(t.signature[:32])
	s := new(big.Int).SetBytes(t.signature[32:])
	return ecdsa.Verify(pub, h[:], r, s)
}

func (t *jws) verifyRS256(pub *rsa.PublicKey) bool {
	if t.header.Alg != "RS256" || pub == nil {
		return false
	}
	h := sha256.Sum256(t.signed)
	return rsa.VerifyPKCS1v15(pub, crypto.SHA256, h[:], t.signature) == nil
}

func (t *jws) str(name string) string {
	s, _ := t.claims[name].(string)
	return s
}

func (t *jws) num(name string) (int64, bool) {
	f, ok := t.claims[name].(float64)
	return int64(f), ok
}

func randomString(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
