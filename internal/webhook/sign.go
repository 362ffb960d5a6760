package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Header is the name of the signature header.
const Header = "Approvald-Signature"

// Sign returns the Approvald-Signature value of body sent at t:
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under secret>".
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verification errors.
var (
	ErrMalformed = errors.New("webhook: malformed signature header")
	ErrStale     = errors.New("webhook: signature timestamp too far from now")
	ErrMismatch  = errors.New("webhook: signature does not match")
)

// Verify checks a signature header as a receiver must: t within tolerance
// of now (the protocol says 5 minutes), and one v1 equal, compared in
// constant time, to the HMAC of "<t>.<body>". It returns t.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) (time.Time, error) {
	var (
		ts  string
		sig [][]byte
	)
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return time.Time{}, ErrMalformed
		}
		switch k {
		case "t":
			if ts != "" {
				return time.Time{}, ErrMalformed
			}
			ts = v
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil {
				return time.Time{}, ErrMalformed
			}
			sig = append(sig, b)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sig) == 0 {
		return time.Time{}, ErrMalformed
	}
	t := time.Unix(sec, 0)
	if d := now.Sub(t); d > tolerance || d < -tolerance {
		return t, ErrStale
	}
	want := mac(secret, ts, body)
	for _, s := range sig {
		if hmac.Equal(s, want) {
			return t, nil
		}
	}
	return t, ErrMismatch
}
