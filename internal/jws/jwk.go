package jws

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
)

// JWK is an EC public JSON Web Key (RFC 7517, RFC 7518 §6.2.1). Only P-256
// keys are supported.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid,omitempty"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
}

// PublicKeyFromJWK returns the P-256 public key described by j. It requires
// kty "EC", crv "P-256", x and y each exactly 32 bytes in unpadded base64url,
// and a point on the curve (not the point at infinity). If present, alg must
// be "ES256" and use must be "sig". Error messages are descriptive and safe
// to show to the client that sent the key.
func PublicKeyFromJWK(j JWK) (*ecdsa.PublicKey, error) {
	if j.Kty != "EC" {
		return nil, fmt.Errorf(`public_key: kty must be "EC", got %q`, clip(j.Kty))
	}
	if j.Crv != "P-256" {
		return nil, fmt.Errorf(`public_key: crv must be "P-256", got %q`, clip(j.Crv))
	}
	if j.Alg != "" && j.Alg != "ES256" {
		return nil, fmt.Errorf(`public_key: alg must be "ES256" if present, got %q`, clip(j.Alg))
	}
	if j.Use != "" && j.Use != "sig" {
		return nil, fmt.Errorf(`public_key: use must be "sig" if present, got %q`, clip(j.Use))
	}
	x, err := decodeCoord("x", j.X)
	if err != nil {
		return nil, err
	}
	y, err := decodeCoord("y", j.Y)
	if err != nil {
		return nil, err
	}
	pt := make([]byte, 0, 1+2*coordLen)
	pt = append(pt, 4)
	pt = append(pt, x...)
	pt = append(pt, y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pt)
	if err != nil {
		return nil, errors.New("public_key: (x, y) is not a point on P-256")
	}
	return pub, nil
}

// decodeCoord decodes one JWK coordinate, which must be exactly 32 bytes.
func decodeCoord(name, s string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("public_key: %s is missing", name)
	}
	b, err := decodeSegment(s)
	if err != nil {
		return nil, fmt.Errorf("public_key: %s must be unpadded base64url", name)
	}
	if len(b) != coordLen {
		return nil, fmt.Errorf("public_key: %s must be exactly %d bytes, got %d", name, coordLen, len(b))
	}
	return b, nil
}

// clip shortens a client-supplied string before it is quoted in an error.
func clip(s string) string {
	const max = 32
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// JWKFromPublicKey returns the JWK of a P-256 public key, with Kid, Alg and
// Use left empty. pub must be a valid P-256 key; for anything else the
// result has empty X and Y (which [PublicKeyFromJWK] refuses).
func JWKFromPublicKey(pub *ecdsa.PublicKey) JWK {
	j := JWK{Kty: "EC", Crv: "P-256"}
	if pub == nil || pub.Curve != elliptic.P256() {
		return j
	}
	b, err := pointBytes(pub)
	if err != nil {
		return j
	}
	j.X = b64.EncodeToString(b[1 : 1+coordLen])
	j.Y = b64.EncodeToString(b[1+coordLen:])
	return j
}
