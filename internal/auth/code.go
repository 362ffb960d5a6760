package auth

import "strings"

// codeAlphabet is Crockford's base32 alphabet (no I, L, O, U).
const codeAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// CodeLen is the length of a normalised enrollment code: 8 symbols, 40 bits.
const CodeLen = 8

// NewEnrollmentCode returns a new enrollment code in normalised form: 8
// characters of Crockford base32 carrying 40 random bits, e.g. "K7QD9XMW".
// Show it with [FormatCode]; store only its [HashSecret].
func NewEnrollmentCode() string {
	b := randomBytes(5)
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	out := make([]byte, CodeLen)
	for i := CodeLen - 1; i >= 0; i-- {
		out[i] = codeAlphabet[v&31]
		v >>= 5
	}
	return string(out)
}

// FormatCode returns a normalised code in display form, "XXXX-XXXX"
// ("K7QD9XMW" becomes "K7QD-9XMW"). A string that is not 8 bytes long is
// returned unchanged.
func FormatCode(c string) string {
	if len(c) != CodeLen {
		return c
	}
	return c[:4] + "-" + c[4:]
}

// NormalizeCode turns a code as typed by a person into normalised form: it
// removes '-' and ' ', upper-cases ASCII letters, and maps O to 0 and I and L
// to 1. ok is true only if the result is exactly 8 characters, all from the
// Crockford alphabet (so a U, any other punctuation or any non-ASCII
// character makes it false). Input longer than 64 bytes is refused outright.
func NormalizeCode(typed string) (string, bool) {
	if len(typed) > 64 {
		return "", false
	}
	var b strings.Builder
	b.Grow(CodeLen)
	for i := 0; i < len(typed); i++ {
		c := typed[i]
		switch {
		case c == '-' || c == ' ':
			continue
		case 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		}
		switch c {
		case 'O':
			c = '0'
		case 'I', 'L':
			c = '1'
		}
		if strings.IndexByte(codeAlphabet, c) < 0 {
			return "", false
		}
		b.WriteByte(c)
	}
	if b.Len() != CodeLen {
		return "", false
	}
	return b.String(), true
}
