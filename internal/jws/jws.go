// Package jws implements the small subset of JSON Web Signature (RFC 7515)
// that approvald needs: compact serialisation, ES256 only (RFC 7518 §3.4),
// and EC P-256 JSON Web Keys (RFC 7517, RFC 7518 §6.2).
//
// Parsing and verification are separate steps: [Parse] only decodes, and
// [Token.VerifyES256] checks the algorithm, the "crit" header and the
// signature. Nothing here looks at claims such as "exp"; callers do that.
package jws

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
)

// MaxTokenLen is the largest compact JWS, in bytes, that [Parse] accepts.
const MaxTokenLen = 8 << 10

// sigLen is the length of an ES256 signature: R and S, 32 bytes each.
const sigLen = 64

// coordLen is the length of a P-256 field element (a coordinate or a scalar).
const coordLen = 32

// b64 is unpadded base64url with strict decoding (non-zero trailing bits are
// refused). Its decoder still skips CR and LF, so callers check the alphabet
// first with [validB64].
var b64 = base64.RawURLEncoding.Strict()

// validB64 reports whether s uses only the unpadded base64url alphabet.
func validB64(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// decodeSegment strictly decodes one unpadded base64url segment.
func decodeSegment(s string) ([]byte, error) {
	if !validB64(s) {
		return nil, errors.New("not unpadded base64url")
	}
	b, err := b64.DecodeString(s)
	if err != nil {
		return nil, errors.New("not unpadded base64url")
	}
	return b, nil
}

// Sign makes a compact JWS: header members from hdr plus "alg":"ES256" (always
// forced, whatever hdr says), payload = JSON of claims (which must encode as a
// JSON object), signature = 64-byte R||S (RFC 7518 §3.4, each 32 bytes
// left-padded). key must be a P-256 key.
func Sign(key *ecdsa.PrivateKey, hdr map[string]any, claims any) (string, error) {
	if key == nil || key.Curve != elliptic.P256() {
		return "", errors.New("jws: signing key must be an ECDSA P-256 key")
	}
	h := make(map[string]any, len(hdr)+1)
	for k, v := range hdr {
		h[k] = v
	}
	h["alg"] = "ES256"
	hb, err := json.Marshal(h)
	if err != nil {
		return "", fmt.Errorf("jws: encoding header: %w", err)
	}
	pb, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("jws: encoding claims: %w", err)
	}
	if len(pb) == 0 || pb[0] != '{' {
		return "", errors.New("jws: claims must encode as a JSON object")
	}
	input := b64.EncodeToString(hb) + "." + b64.EncodeToString(pb)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", fmt.Errorf("jws: signing: %w", err)
	}
	sig := make([]byte, sigLen)
	r.FillBytes(sig[:coordLen])
	s.FillBytes(sig[coordLen:])
	out := input + "." + b64.EncodeToString(sig)
	if len(out) > MaxTokenLen {
		return "", fmt.Errorf("jws: token longer than %d bytes", MaxTokenLen)
	}
	return out, nil
}

// Token is a parsed, not yet verified, compact JWS.
type Token struct {
	// Header is the decoded protected header, member by member.
	Header map[string]json.RawMessage
	// Alg is the header "alg" if it is a JSON string, else "".
	Alg string
	// Kid is the header "kid" if it is a JSON string, else "".
	Kid string
	// Payload is the decoded payload: the raw bytes of a JSON object.
	Payload []byte

	signingInput string
	sig          []byte
}

// Parse splits and base64url-decodes a compact JWS of exactly three parts.
// Each part must be unpadded base64url (padding, the standard alphabet, line
// breaks and non-canonical trailing bits are refused); the header and the
// payload must each be a single JSON object without duplicate member names.
// Tokens longer than [MaxTokenLen] bytes are refused. Parse does not verify
// the signature: see [Token.VerifyES256].
func Parse(s string) (*Token, error) {
	if len(s) > MaxTokenLen {
		return nil, fmt.Errorf("jws: token longer than %d bytes", MaxTokenLen)
	}
	if strings.Count(s, ".") != 2 {
		return nil, errors.New("jws: not a compact JWS (want three dot-separated parts)")
	}
	i := strings.IndexByte(s, '.')
	j := i + 1 + strings.IndexByte(s[i+1:], '.')
	hs, ps, ss := s[:i], s[i+1:j], s[j+1:]

	hb, err := decodeSegment(hs)
	if err != nil {
		return nil, fmt.Errorf("jws: header: %w", err)
	}
	header, err := decodeObject(hb)
	if err != nil {
		return nil, fmt.Errorf("jws: header: %w", err)
	}
	pb, err := decodeSegment(ps)
	if err != nil {
		return nil, fmt.Errorf("jws: payload: %w", err)
	}
	if _, err := decodeObject(pb); err != nil {
		return nil, fmt.Errorf("jws: payload: %w", err)
	}
	sig, err := decodeSegment(ss)
	if err != nil {
		return nil, fmt.Errorf("jws: signature: %w", err)
	}
	t := &Token{
		Header:       header,
		Alg:          stringMember(header, "alg"),
		Kid:          stringMember(header, "kid"),
		Payload:      pb,
		signingInput: s[:j],
		sig:          sig,
	}
	return t, nil
}

// stringMember returns m[name] if it is a JSON string, else "".
func stringMember(m map[string]json.RawMessage, name string) string {
	raw, ok := m[name]
	if !ok || len(raw) == 0 || raw[0] != '"' {
		return ""
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		return ""
	}
	return v
}

// decodeObject decodes b, which must be exactly one JSON object with unique
// member names, into its members.
func decodeObject(b []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, errors.New("not valid JSON")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	m := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errors.New("not valid JSON")
		}
		name, ok := tok.(string)
		if !ok {
			return nil, errors.New("not valid JSON")
		}
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("duplicate member %q", name)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, errors.New("not valid JSON")
		}
		m[name] = v
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, errors.New("not valid JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON object")
	}
	return m, nil
}

// VerifyES256 checks t against pub. It refuses any "alg" other than exactly
// "ES256" (so "none", "HS256", "ES384" and a missing alg all fail), refuses a
// header that has a "crit" member, requires a 64-byte R||S signature (a DER
// signature is refused), requires pub to be a valid P-256 key, and verifies
// the signature over the signing input.
func (t *Token) VerifyES256(pub *ecdsa.PublicKey) error {
	if t == nil {
		return errors.New("jws: nil token")
	}
	if t.Alg != "ES256" {
		return errors.New(`jws: alg must be "ES256"`)
	}
	if _, ok := t.Header["crit"]; ok {
		return errors.New(`jws: "crit" header is not supported`)
	}
	if len(t.sig) != sigLen {
		return fmt.Errorf("jws: signature must be %d bytes (R||S, not DER)", sigLen)
	}
	if err := checkP256(pub); err != nil {
		return err
	}
	digest := sha256.Sum256([]byte(t.signingInput))
	r := new(big.Int).SetBytes(t.sig[:coordLen])
	s := new(big.Int).SetBytes(t.sig[coordLen:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return errors.New("jws: invalid signature")
	}
	return nil
}

// checkP256 reports an error unless pub is a valid point on P-256.
func checkP256(pub *ecdsa.PublicKey) error {
	if pub == nil || pub.Curve != elliptic.P256() {
		return errors.New("jws: verification key must be an ECDSA P-256 key")
	}
	if _, err := pointBytes(pub); err != nil {
		return errors.New("jws: verification key is not a valid P-256 point")
	}
	return nil
}

// pointBytes returns the uncompressed encoding of pub (0x04 || X || Y),
// failing if the key is not a valid point. A key with unset coordinates makes
// the standard library panic, which is turned into an error here.
func pointBytes(pub *ecdsa.PublicKey) (b []byte, err error) {
	defer func() {
		if recover() != nil {
			b, err = nil, errors.New("invalid public key")
		}
	}()
	b, err = pub.Bytes()
	if err == nil && len(b) != 1+2*coordLen {
		err = errors.New("invalid public key")
	}
	return b, err
}
