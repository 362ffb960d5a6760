package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/clicktopurchase/approvald/internal/jws"
)

// pemTypePKCS8 is the PEM block type of a PKCS #8 private key.
const pemTypePKCS8 = "PRIVATE KEY"

// GenerateSigningKey makes a new ECDSA P-256 key for result tokens and
// returns it PKCS #8-encoded in a "PRIVATE KEY" PEM block. The caller keeps
// one such key in the database so every instance signs with it.
func GenerateSigningKey() (pemPKCS8 []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("auth: generating signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("auth: encoding signing key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemTypePKCS8, Bytes: der}), nil
}

// Signer signs result tokens with the server's key. It is safe for
// concurrent use.
type Signer struct {
	key  *ecdsa.PrivateKey
	kid  string
	jwks []byte
}

// NewSigner loads a key made by [GenerateSigningKey]: one PEM block of type
// "PRIVATE KEY" holding a PKCS #8 ECDSA P-256 key, and nothing else. The key
// id is the RFC 7638 JWK thumbprint (SHA-256, unpadded base64url) of the
// public key.
func NewSigner(pemPKCS8 []byte) (*Signer, error) {
	block, rest := pem.Decode(pemPKCS8)
	if block == nil {
		return nil, errors.New("auth: signing key: no PEM block")
	}
	if block.Type != pemTypePKCS8 {
		return nil, fmt.Errorf("auth: signing key: PEM type %q, want %q", block.Type, pemTypePKCS8)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("auth: signing key: unexpected data after the PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("auth: signing key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, errors.New("auth: signing key: not an ECDSA P-256 key")
	}
	j := jws.JWKFromPublicKey(&key.PublicKey)
	if j.X == "" {
		return nil, errors.New("auth: signing key: invalid public key")
	}
	kid := thumbprint(j)
	j.Kid, j.Alg, j.Use = kid, "ES256", "sig"
	set, err := json.Marshal(struct {
		Keys []jws.JWK `json:"keys"`
	}{[]jws.JWK{j}})
	if err != nil {
		return nil, fmt.Errorf("auth: encoding JWKS: %w", err)
	}
	return &Signer{key: key, kid: kid, jwks: set}, nil
}

// thumbprint is the RFC 7638 JWK thumbprint of an EC key: SHA-256 of the
// required members in lexicographic order with no whitespace.
func thumbprint(j jws.JWK) string {
	// x and y are base64url, so they need no JSON escaping.
	canon := `{"crv":"` + j.Crv + `","kty":"` + j.Kty + `","x":"` + j.X + `","y":"` + j.Y + `"}`
	sum := sha256.Sum256([]byte(canon))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// Kid returns the key id put in result token headers and in the JWKS.
func (s *Signer) Kid() string { return s.kid }

// Sign returns a compact JWS of claims (normally a [ResultClaims]) with the
// header {"alg":"ES256","typ":"JWT","kid":Kid()}.
func (s *Signer) Sign(claims any) (string, error) {
	return jws.Sign(s.key, map[string]any{"typ": "JWT", "kid": s.kid}, claims)
}

// JWKS returns the JSON body of GET /.well-known/jwks.json:
// {"keys":[{"kty":"EC","crv":"P-256","x":...,"y":...,"kid":...,"alg":"ES256","use":"sig"}]}.
// The caller may keep or modify the returned slice.
func (s *Signer) JWKS() []byte {
	return bytes.Clone(s.jwks)
}

// ResultClaims are the claims of a result token (spec "Result token").
type ResultClaims struct {
	Iss string   `json:"iss"` // the server's public URL
	Sub string   `json:"sub"` // the RP's user_id
	Cid string   `json:"cid"` // the challenge id
	Act string   `json:"act"` // the challenge action
	St  string   `json:"st"`  // the final status
	Amr []string `json:"amr"` // ["push"] or ["email"]
	Iat int64    `json:"iat"` // when the challenge became final, Unix seconds
	Exp int64    `json:"exp"` // Iat + 300
}
