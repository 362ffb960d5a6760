// Package auth holds approvald's credential primitives: random identifiers
// and secrets, enrollment codes, device assertion and decision verification,
// the enrollment proof, the server's result-token signer and watch tokens.
//
// Every verification failure wraps [ErrInvalid].
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
)

// ErrInvalid is wrapped by every verification failure in this package
// (bad signature, wrong audience, expired, malformed, unknown key, ...).
// Callers map it to 401 unauthorized (or 400 where the spec says so).
var ErrInvalid = errors.New("auth: invalid credential")

// invalid returns an error wrapping ErrInvalid with a description.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// randomBytes returns n bytes from crypto/rand. crypto/rand.Read never fails
// (since Go 1.24 it crashes the program instead of returning an error).
func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("auth: crypto/rand failed: " + err.Error())
	}
	return b
}

// NewID returns a new object id: 17 crypto-random bytes in unpadded
// base64url, 23 characters. Used for every object id.
//
// IDs carry 17 random bytes and never begin with '-' or '_': an id that
// looks like a flag (approve-device approve -x…) or is easy to mis-select
// is drawn again, which keeps well over 128 bits of randomness.
func NewID() string {
	for {
		id := base64.RawURLEncoding.EncodeToString(randomBytes(17))
		if id[0] != '-' && id[0] != '_' {
			return id
		}
	}
}

// NewSecret returns prefix followed by 32 crypto-random bytes (256 bits) in
// unpadded base64url (43 characters). Used for API keys ("apk_"), link
// tokens and other bearer secrets; store only [HashSecret] of the result.
func NewSecret(prefix string) string {
	return prefix + base64.RawURLEncoding.EncodeToString(randomBytes(32))
}

// HashSecret returns the lower-case hex SHA-256 of s: the only form in which
// secrets are stored. Secrets carry at least 128 random bits, so an unsalted
// fast hash is adequate; look up by hash rather than comparing secrets.
func HashSecret(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
