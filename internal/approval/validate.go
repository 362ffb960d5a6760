package approval

import (
	"bytes"
	"encoding/json"
	"net"
	"net/mail"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

var actionRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)

// printable reports whether s is 1..max characters, all printable (no
// control characters, no invalid UTF-8).
func printable(s string, max int) bool {
	if s == "" || !utf8.ValidString(s) || utf8.RuneCountInString(s) > max {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) && r != ' ' {
			return false
		}
	}
	return true
}

func validUserID(s string) error {
	if !printable(s, 128) {
		return invalid("user_id must be 1 to 128 printable characters")
	}
	return nil
}

func validEmail(s string) error {
	if s == "" {
		return nil
	}
	if len(s) > 254 || !printable(s, 254) {
		return invalid("user_email is not a valid address")
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || a.Name != "" {
		return invalid("user_email is not a valid address")
	}
	return nil
}

// normalizeContext checks a context object (at most 20 string members,
// names at most 40 characters, values at most 200) and returns it compact,
// in the client's member order. An absent or null context is "{}".
func normalizeContext(raw json.RawMessage) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return json.RawMessage("{}"), nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	bad := invalid("context must be an object of at most 20 string members (names up to 40 characters, values up to 200)")
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, bad
	}
	var out bytes.Buffer
	out.WriteByte('{')
	seen := map[string]bool{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, bad
		}
		k := kt.(string)
		vt, err := dec.Token()
		if err != nil {
			return nil, bad
		}
		v, ok := vt.(string)
		if !ok || seen[k] || len(seen) == 20 || !printable(k, 40) || utf8.RuneCountInString(v) > 200 || !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) {
			return nil, bad
		}
		seen[k] = true
		if len(seen) > 1 {
			out.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		vb, _ := json.Marshal(v)
		out.Write(kb)
		out.WriteByte(':')
		out.Write(vb)
	}
	if _, err := dec.Token(); err != nil {
		return nil, bad
	}
	out.WriteByte('}')
	return out.Bytes(), nil
}

// IPKey is the key limits count an address under: an IPv4 address as is,
// an IPv6 address by its /64.
func IPKey(ip string) string {
	p := net.ParseIP(ip)
	if p == nil {
		return ip
	}
	if v4 := p.To4(); v4 != nil {
		return v4.String()
	}
	return p.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// Member is one context member.
type Member struct{ Name, Value string }

// ContextMembers lists a stored context's members in the RP's order.
func ContextMembers(raw json.RawMessage) []Member {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	var out []Member
	for dec.More() {
		k, err1 := dec.Token()
		v, err2 := dec.Token()
		ks, ok1 := k.(string)
		vs, ok2 := v.(string)
		if err1 != nil || err2 != nil || !ok1 || !ok2 {
			break
		}
		out = append(out, Member{ks, vs})
	}
	return out
}
