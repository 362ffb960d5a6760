package auth

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/clicktopurchase/approvald/internal/jws"
)

const (
	// Skew is the clock skew allowed on device tokens.
	Skew = 60 * time.Second
	// MaxAssertionLifetime bounds exp - iat of assertions and decisions.
	MaxAssertionLifetime = 300 * time.Second
	// ProofWindow bounds |now - iat| of an enrollment proof.
	ProofWindow = 5 * time.Minute

	maxJTILen = 128 // characters
	maxKIDLen = 128 // bytes; device ids are at most 64
	// maxUnix keeps times in a range where arithmetic cannot overflow
	// (253402300799 is 9999-12-31T23:59:59Z).
	maxUnix = 253402300799
)

// DeviceClaims are the checked claims of a device assertion or decision.
type DeviceClaims struct {
	Iss string // the device id (equal to the header kid)
	Aud string // the audience that matched
	Jti string // unique token id; the caller's replay cache is keyed by (Iss, Jti)
	Iat int64  // issued at, Unix seconds
	Exp int64  // expiry, Unix seconds; keep the replay entry until Exp+60s

	Cid   string // decision: the challenge id
	Dec   string // decision: "approve" or "deny"
	Num   string // decision: the typed number, "" if absent
	Fraud bool   // decision: the user reported fraud

	HasCid bool // the claims carried a "cid" member at all
	HasDec bool // the claims carried a "dec" member at all
}

// KeyLookup returns the public key of a device id (whatever the device's
// status) or an error if unknown. The caller checks the device's status
// after verification.
type KeyLookup func(ctx context.Context, deviceID string) (*ecdsa.PublicKey, error)

// VerifyAssertion verifies a device assertion (the Bearer token of device
// routes) under the spec's Device JWS rules: ES256 only, no "crit", 64-byte
// R||S signature by the key lookup returns for the header "kid"; claims iss
// equal to kid; aud equal to audience (a string, or an array of strings
// containing it); iat and exp JSON integers with 0 < exp-iat <= 300 s and now
// within [iat-60s, exp+60s]; jti a non-empty string of at most 128
// characters; and no "cid" or "dec" member (a decision is never an
// assertion). It does not check for replay: the caller must refuse a seen
// (Iss, Jti) pair, remembering it until Exp+60s.
//
// Cheap checks run before lookup is called, so garbage never reaches the
// key store. Every failure wraps [ErrInvalid]; a lookup failure is wrapped
// as well (both errors.Is checks work).
func VerifyAssertion(ctx context.Context, token string, lookup KeyLookup, audience string, now time.Time) (*DeviceClaims, error) {
	return verifyDevice(ctx, token, lookup, audience, now, false)
}

// VerifyDecision verifies a device decision (the "response" of
// POST /v1/device/challenges/{id}/decision) under the same rules as
// [VerifyAssertion], except that it requires "cid" (a non-empty string) and
// "dec" ("approve" or "deny"); "num" is an optional string and "fraud" an
// optional boolean (JSON null counts as absent for both). "fraud": true with
// "approve" is refused as contradictory. The caller checks cid against the
// path and does the replay check.
func VerifyDecision(ctx context.Context, token string, lookup KeyLookup, audience string, now time.Time) (*DeviceClaims, error) {
	return verifyDevice(ctx, token, lookup, audience, now, true)
}

func verifyDevice(ctx context.Context, token string, lookup KeyLookup, audience string, now time.Time, decision bool) (*DeviceClaims, error) {
	if lookup == nil {
		return nil, invalid("no key lookup")
	}
	if audience == "" {
		return nil, invalid("no audience configured")
	}
	t, err := jws.Parse(token)
	if err != nil {
		return nil, invalid("%v", err)
	}
	if err := checkHeader(t); err != nil {
		return nil, err
	}
	if t.Kid == "" {
		return nil, invalid("header kid is required")
	}
	if len(t.Kid) > maxKIDLen {
		return nil, invalid("header kid too long")
	}
	m, err := claimMap(t.Payload)
	if err != nil {
		return nil, err
	}
	c := &DeviceClaims{}
	_, c.HasCid = m["cid"]
	_, c.HasDec = m["dec"]

	if c.Iss, err = stringClaim(m, "iss"); err != nil {
		return nil, err
	}
	if c.Iss != t.Kid {
		return nil, invalid("iss must equal the header kid")
	}
	if c.Aud, err = audClaim(m, audience); err != nil {
		return nil, err
	}
	if c.Iat, err = intClaim(m, "iat"); err != nil {
		return nil, err
	}
	if c.Exp, err = intClaim(m, "exp"); err != nil {
		return nil, err
	}
	life := c.Exp - c.Iat
	if life < 0 || life > int64(MaxAssertionLifetime/time.Second) {
		return nil, invalid("exp - iat must be in [0, %d] seconds", int64(MaxAssertionLifetime/time.Second))
	}
	if now.Before(time.Unix(c.Iat, 0).Add(-Skew)) {
		return nil, invalid("token not yet valid (iat in the future)")
	}
	if now.After(time.Unix(c.Exp, 0).Add(Skew)) {
		return nil, invalid("token expired")
	}
	if c.Jti, err = stringClaim(m, "jti"); err != nil {
		return nil, err
	}
	if c.Jti == "" || utf8.RuneCountInString(c.Jti) > maxJTILen {
		return nil, invalid("jti must be 1-%d characters", maxJTILen)
	}

	if decision {
		if err := decisionClaims(m, c); err != nil {
			return nil, err
		}
	} else if c.HasCid || c.HasDec {
		return nil, invalid("a decision (cid/dec) is not an assertion")
	}

	pub, err := lookup(ctx, t.Kid)
	if err != nil {
		return nil, fmt.Errorf("%w: unknown device: %w", ErrInvalid, err)
	}
	if pub == nil {
		return nil, invalid("unknown device")
	}
	if err := t.VerifyES256(pub); err != nil {
		return nil, invalid("%v", err)
	}
	return c, nil
}

// decisionClaims reads and checks cid, dec, num and fraud into c.
func decisionClaims(m map[string]json.RawMessage, c *DeviceClaims) error {
	var err error
	if !c.HasCid {
		return invalid("cid is required in a decision")
	}
	if c.Cid, err = stringClaim(m, "cid"); err != nil {
		return err
	}
	if c.Cid == "" {
		return invalid("cid must not be empty")
	}
	if !c.HasDec {
		return invalid("dec is required in a decision")
	}
	if c.Dec, err = stringClaim(m, "dec"); err != nil {
		return err
	}
	if c.Dec != "approve" && c.Dec != "deny" {
		return invalid(`dec must be "approve" or "deny"`)
	}
	if raw, ok := m["num"]; ok && string(raw) != "null" {
		if c.Num, err = stringClaim(m, "num"); err != nil {
			return err
		}
	}
	if raw, ok := m["fraud"]; ok && string(raw) != "null" {
		switch string(raw) {
		case "true":
			c.Fraud = true
		case "false":
		default:
			return invalid("fraud must be a boolean")
		}
	}
	if c.Fraud && c.Dec != "deny" {
		return invalid(`fraud is allowed only with "deny"`)
	}
	return nil
}

// VerifyEnrollmentProof verifies the proof of possession sent with
// POST /v1/devices: a compact JWS with alg ES256, no "kid" header (refused if
// present), "typ" allowed, no "crit", signed by pub (the key being
// enrolled), with claims {"code": string, "iat": integer} and |now - iat| at
// most 5 minutes. It returns the code exactly as in the claims; the caller
// compares it with the normalised code of the request. Every failure wraps
// [ErrInvalid].
func VerifyEnrollmentProof(token string, pub *ecdsa.PublicKey, now time.Time) (code string, err error) {
	t, err := jws.Parse(token)
	if err != nil {
		return "", invalid("proof: %v", err)
	}
	if err := checkHeader(t); err != nil {
		return "", err
	}
	if _, ok := t.Header["kid"]; ok {
		return "", invalid("proof: header kid is not allowed")
	}
	m, err := claimMap(t.Payload)
	if err != nil {
		return "", err
	}
	code, err = stringClaim(m, "code")
	if err != nil {
		return "", err
	}
	if code == "" {
		return "", invalid("proof: code must not be empty")
	}
	iat, err := intClaim(m, "iat")
	if err != nil {
		return "", err
	}
	at := time.Unix(iat, 0)
	if now.Before(at.Add(-ProofWindow)) || now.After(at.Add(ProofWindow)) {
		return "", invalid("proof: iat is not within 5 minutes of now")
	}
	if err := t.VerifyES256(pub); err != nil {
		return "", invalid("proof: %v", err)
	}
	return code, nil
}

// checkHeader applies the header rules that need no key, so that hopeless
// tokens are refused before any lookup. VerifyES256 checks them again.
func checkHeader(t *jws.Token) error {
	if t.Alg != "ES256" {
		return invalid(`alg must be "ES256"`)
	}
	if _, ok := t.Header["crit"]; ok {
		return invalid(`"crit" header is not supported`)
	}
	return nil
}

// claimMap decodes a payload (already known to be a JSON object with unique
// member names) into its members. Member names match exactly (unlike
// encoding/json struct decoding, which folds case).
func claimMap(payload []byte) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil || m == nil {
		return nil, invalid("claims are not a JSON object")
	}
	return m, nil
}

// stringClaim returns the claim name, which must be present and a JSON string.
func stringClaim(m map[string]json.RawMessage, name string) (string, error) {
	raw, ok := m[name]
	if !ok {
		return "", invalid("%s is required", name)
	}
	if len(raw) == 0 || raw[0] != '"' {
		return "", invalid("%s must be a string", name)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", invalid("%s must be a string", name)
	}
	return s, nil
}

// intClaim returns the claim name, which must be present and a JSON integer
// (digits only: no fraction, exponent or quotes) in [0, maxUnix].
func intClaim(m map[string]json.RawMessage, name string) (int64, error) {
	raw, ok := m[name]
	if !ok {
		return 0, invalid("%s is required", name)
	}
	if len(raw) == 0 || len(raw) > 12 {
		return 0, invalid("%s must be an integer number of seconds", name)
	}
	var v int64
	for i, c := range raw {
		if c < '0' || c > '9' || (i == 0 && c == '0' && len(raw) > 1) {
			return 0, invalid("%s must be an integer number of seconds", name)
		}
		v = v*10 + int64(c-'0')
	}
	if v > maxUnix {
		return 0, invalid("%s out of range", name)
	}
	return v, nil
}

// audClaim checks that aud is audience, or an array of strings containing it.
func audClaim(m map[string]json.RawMessage, audience string) (string, error) {
	raw, ok := m["aud"]
	if !ok {
		return "", invalid("aud is required")
	}
	if len(raw) > 0 && raw[0] == '[' {
		var list []string
		if err := json.Unmarshal(raw, &list); err != nil {
			return "", invalid("aud must be a string or an array of strings")
		}
		for _, a := range list {
			if a == audience {
				return a, nil
			}
		}
		return "", invalid("aud does not name this server")
	}
	s, err := stringClaim(m, "aud")
	if err != nil {
		return "", invalid("aud must be a string or an array of strings")
	}
	if s != audience {
		return "", invalid("aud does not name this server")
	}
	return s, nil
}
