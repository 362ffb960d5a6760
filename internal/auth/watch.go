package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
)

// Watch token kinds.
const (
	WatchChallenge  = "c" // the token watches a challenge
	WatchEnrollment = "e" // the token watches an enrollment
)

const (
	watchVersion  = 1
	watchNonceLen = 16
	watchMACLen   = sha256.Size
	maxWatchIDLen = 64
	// watchDomain separates these MACs from any other use of the key.
	watchDomain = "approvald watch token v1\x00"
)

// WatchTokens mints and checks stateless watch tokens, HMAC-SHA256 under a
// server key shared by all instances. A token binds a kind and an object id;
// it carries no expiry, so the caller enforces "dies 5 minutes after the
// object is final" from the object's state. Safe for concurrent use.
type WatchTokens struct {
	key []byte
}

// NewWatchTokens returns a WatchTokens using key, which must be at least 32
// bytes (the caller keeps it in the database so all instances share it).
func NewWatchTokens(key []byte) (*WatchTokens, error) {
	if len(key) < 32 {
		return nil, errors.New("auth: watch token key must be at least 32 bytes")
	}
	return &WatchTokens{key: append([]byte(nil), key...)}, nil
}

// Mint returns a new token for the object: version, kind, id and 16 fresh
// random bytes (so every mint differs), followed by their HMAC-SHA256, all in
// unpadded base64url. The token is URL-safe and at most 154 characters (98
// for an id from [NewID]).
// kind must be [WatchChallenge] or [WatchEnrollment] and objectID 1 to 64
// bytes; anything else is a programming error and panics.
func (w *WatchTokens) Mint(kind, objectID string) string {
	if kind != WatchChallenge && kind != WatchEnrollment {
		panic("auth: watch token kind must be \"c\" or \"e\"")
	}
	if objectID == "" || len(objectID) > maxWatchIDLen {
		panic("auth: watch token object id must be 1-64 bytes")
	}
	body := make([]byte, 0, 3+len(objectID)+watchNonceLen+watchMACLen)
	body = append(body, watchVersion, kind[0], byte(len(objectID)))
	body = append(body, objectID...)
	body = append(body, randomBytes(watchNonceLen)...)
	body = append(body, w.mac(body)...)
	return base64.RawURLEncoding.EncodeToString(body)
}

// Parse checks a token made by [WatchTokens.Mint] with this key (the MAC is
// compared in constant time before anything else is read) and returns its
// kind and object id. Every failure wraps [ErrInvalid].
func (w *WatchTokens) Parse(token string) (kind, objectID string, err error) {
	const maxLen = (3 + maxWatchIDLen + watchNonceLen + watchMACLen + 2) / 3 * 4
	if token == "" || len(token) > maxLen || !urlSafe(token) {
		return "", "", invalid("malformed watch token")
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || len(b) < 3+1+watchNonceLen+watchMACLen {
		return "", "", invalid("malformed watch token")
	}
	body, sum := b[:len(b)-watchMACLen], b[len(b)-watchMACLen:]
	if !hmac.Equal(sum, w.mac(body)) {
		return "", "", invalid("watch token not recognised")
	}
	n := int(body[2])
	if body[0] != watchVersion || n == 0 || n > maxWatchIDLen || len(body) != 3+n+watchNonceLen {
		return "", "", invalid("malformed watch token")
	}
	switch k := string(body[1:2]); k {
	case WatchChallenge, WatchEnrollment:
		return k, string(body[3 : 3+n]), nil
	default:
		return "", "", invalid("malformed watch token")
	}
}

// mac returns HMAC-SHA256(key, domain || body).
func (w *WatchTokens) mac(body []byte) []byte {
	h := hmac.New(sha256.New, w.key)
	h.Write([]byte(watchDomain))
	h.Write(body)
	return h.Sum(nil)
}

// urlSafe reports whether s uses only the unpadded base64url alphabet (the
// standard decoder would otherwise skip CR and LF).
func urlSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
