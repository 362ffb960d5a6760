package demo

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"
)

// CookieName is the demo site's session cookie.
const CookieName = "ctp_demo_session"

const sessionLife = 12 * time.Hour

// session is the demo user, carried in a signed cookie (no password: it is
// a demo). In is false while a sign-in waits for the phone's approval.
type session struct {
	SID   string `json:"sid"`
	User  string `json:"u"`
	Email string `json:"e"`
	In    bool   `json:"in"`
	Exp   int64  `json:"exp"`
}

// UserID is the user_id the site uses for this user at approvald.
func (s *session) UserID() string { return UserPrefix + s.User }

// cookieCodec signs session cookies with HMAC-SHA256 under a key made at
// start (sessions end when the process does: it is a demo).
type cookieCodec struct{ key []byte }

func newCookieCodec() *cookieCodec {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return &cookieCodec{key: k}
}

func (c *cookieCodec) mac(payload string) []byte {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte("approvald-demo-session\x00" + payload))
	return m.Sum(nil)
}

func (c *cookieCodec) encode(s *session) string {
	b, _ := json.Marshal(s)
	p := base64.RawURLEncoding.EncodeToString(b)
	return p + "." + base64.RawURLEncoding.EncodeToString(c.mac(p))
}

var errNoSession = errors.New("no session")

func (c *cookieCodec) decode(v string, now time.Time) (*session, error) {
	p, sig, ok := strings.Cut(v, ".")
	if !ok {
		return nil, errNoSession
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, c.mac(p)) {
		return nil, errNoSession
	}
	b, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return nil, errNoSession
	}
	var s session
	if err := json.Unmarshal(b, &s); err != nil || s.SID == "" || s.User == "" || now.Unix() > s.Exp {
		return nil, errNoSession
	}
	return &s, nil
}

// session reads the request's session; nil without a valid cookie.
func (s *Site) session(r *http.Request) (*session, error) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return nil, errNoSession
	}
	return s.cookie.decode(c.Value, time.Now())
}

func (s *Site) setSession(w http.ResponseWriter, sess *session) {
	sess.Exp = time.Now().Add(sessionLife).Unix()
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: s.cookie.encode(sess), Path: "/demo",
		MaxAge: int(sessionLife / time.Second), HttpOnly: true, Secure: s.secure, SameSite: http.SameSiteLaxMode})
}

func (s *Site) clearSession(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/demo", MaxAge: -1,
		HttpOnly: true, Secure: s.secure, SameSite: http.SameSiteLaxMode})
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
