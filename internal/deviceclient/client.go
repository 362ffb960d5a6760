// Package deviceclient is a Go client for approvald's device API: it does
// exactly what the phone app does (enroll with a code, list pending
// challenges, approve or deny them with signed decisions, update the push
// token, unlink). The device simulator (cmd/approve-device) and the server's
// tests use it.
//
// Every device credential is a compact ES256 JWS made with [jws.Sign]:
// the enrollment proof, the bearer assertion of the device routes and the
// decision sent to POST /v1/device/challenges/{id}/decision.
//
// Any non-2xx answer of a high-level method is returned as a [*Problem].
package deviceclient

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/clicktopurchase/approvald/internal/jws"
)

// Platforms and push providers of the protocol.
const (
	PlatformIOS     = "ios"
	PlatformAndroid = "android"
	PlatformOther   = "other"

	ProviderFCM  = "fcm"
	ProviderAPNs = "apns"
	ProviderNone = "none"
)

// AssertionLifetime is exp - iat of the assertions and decisions this
// client makes (the server accepts at most 300 s).
const AssertionLifetime = 120 * time.Second

// maxResponse bounds how much of a response body is read.
const maxResponse = 1 << 20

// defaultHTTP is used when Client.HTTP is nil. Its timeout leaves room for
// a 30-second long poll.
var defaultHTTP = &http.Client{Timeout: 60 * time.Second}

// Client is one device. Server, Key, DeviceID and Audience are what the app
// keeps after enrollment; UserID is informational.
type Client struct {
	// Server is the base URL of approvald, e.g. "https://approve.example.com".
	Server string
	// HTTP is the HTTP client to use; nil means a client with a 60 s timeout.
	HTTP *http.Client
	// Key is the device's P-256 private key.
	Key *ecdsa.PrivateKey
	// DeviceID, Audience and UserID are filled in by Enroll.
	DeviceID, Audience, UserID string

	// Now, if set, replaces time.Now for iat/exp (tests of clock skew).
	Now func() time.Time
}

// Push is a push registration: provider "fcm", "apns" or "none" (the device
// polls; Token empty).
type Push struct {
	Provider string `json:"provider"`
	Token    string `json:"token,omitempty"`
}

// Requester is who asked for a challenge, as the RP reported it.
type Requester struct {
	IP        string `json:"ip"`
	UserAgent string `json:"user_agent"`
}

// Challenge is one pending challenge as GET /v1/device/challenges lists it.
type Challenge struct {
	ID             string          `json:"id"`
	Action         string          `json:"action"`
	Context        json.RawMessage `json:"context"`
	CreatedAt      time.Time       `json:"created_at"`
	ExpiresAt      time.Time       `json:"expires_at"`
	NumberMatching bool            `json:"number_matching"`
	Requester      Requester       `json:"requester"`
}

// ContextMember is one member of a challenge's context.
type ContextMember struct {
	Name, Value string
}

// ContextMembers returns the members of c.Context in the order the server
// sent them (the order the RP gave them). A missing or null context gives
// nil; a context that is not an object of strings is an error.
func (c Challenge) ContextMembers() ([]ContextMember, error) {
	raw := bytes.TrimSpace(c.Context)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("deviceclient: context is not a JSON object")
	}
	var out []ContextMember
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("deviceclient: context: %w", err)
		}
		name, _ := tok.(string)
		var v string
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("deviceclient: context member %q is not a string", name)
		}
		out = append(out, ContextMember{Name: name, Value: v})
	}
	return out, nil
}

// Decision is what the user chose. Number is the number shown in the
// browser (number matching only); Fraud marks a deny as a fraud report.
type Decision struct {
	Approve bool
	Number  string
	Fraud   bool
}

// Problem is an RFC 9457 problem details answer (any non-2xx status).
// Status is the HTTP status of the response. Code is the protocol's stable
// error code ("not_pending", "invalid_code", ...), empty if the body was
// not problem+json.
type Problem struct {
	Status        int    `json:"-"`
	Type          string `json:"type"`
	Title         string `json:"title"`
	Detail        string `json:"detail"`
	Code          string `json:"code"`
	CurrentStatus string `json:"current_status"`
	// RetryAfter is the Retry-After header (429), zero if absent.
	RetryAfter time.Duration `json:"-"`
}

func (p *Problem) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "approvald: %d", p.Status)
	if p.Code != "" {
		b.WriteString(" " + p.Code)
	} else if p.Title != "" {
		b.WriteString(" " + p.Title)
	}
	if p.Detail != "" {
		b.WriteString(": " + p.Detail)
	}
	if p.CurrentStatus != "" {
		b.WriteString(" (current status: " + p.CurrentStatus + ")")
	}
	return b.String()
}

// NewKey makes a new P-256 device key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// NormalizeCode normalises an enrollment code as typed, per the protocol:
// remove '-' and spaces, upper-case, map O to 0 and I and L to 1. It does
// not validate the result; the server does.
func NormalizeCode(typed string) string {
	var b strings.Builder
	for _, r := range typed {
		switch {
		case r == '-' || r == ' ':
			continue
		case 'a' <= r && r <= 'z':
			r -= 'a' - 'A'
		}
		switch r {
		case 'O':
			r = '0'
		case 'I', 'L':
			r = '1'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return defaultHTTP
}

// newJTI returns 16 random bytes in unpadded base64url.
func newJTI() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// EnrollProof makes the enrollment proof for a code: header
// {"alg":"ES256","typ":"JWT"}, claims {"code": <normalised code>, "iat": now}.
func (c *Client) EnrollProof(code string) (string, error) {
	if c.Key == nil {
		return "", errors.New("deviceclient: no device key")
	}
	return jws.Sign(c.Key, map[string]any{"typ": "JWT"},
		map[string]any{"code": NormalizeCode(code), "iat": c.now().Unix()})
}

// Enroll links this device with an enrollment code: POST /v1/devices with
// the code as typed, the public key as a JWK, the push registration and a
// proof of possession. A nil Key is replaced by a new one first. On success
// it fills DeviceID, Audience and UserID.
func (c *Client) Enroll(ctx context.Context, code, name, platform string, push Push) error {
	if c.Key == nil {
		k, err := NewKey()
		if err != nil {
			return err
		}
		c.Key = k
	}
	proof, err := c.EnrollProof(code)
	if err != nil {
		return err
	}
	body := struct {
		Code      string  `json:"code"`
		Name      string  `json:"name"`
		Platform  string  `json:"platform"`
		PublicKey jws.JWK `json:"public_key"`
		Push      Push    `json:"push"`
		Proof     string  `json:"proof"`
	}{code, name, platform, jws.JWKFromPublicKey(&c.Key.PublicKey), push, proof}
	var out struct {
		DeviceID string `json:"device_id"`
		UserID   string `json:"user_id"`
		Audience string `json:"audience"`
	}
	if err := c.call(ctx, http.MethodPost, "/v1/devices", body, "", &out); err != nil {
		return err
	}
	if out.DeviceID == "" || out.Audience == "" {
		return errors.New("deviceclient: enrollment answer lacks device_id or audience")
	}
	c.DeviceID, c.UserID, c.Audience = out.DeviceID, out.UserID, out.Audience
	return nil
}

// baseClaims returns the claims every assertion and decision carries.
func (c *Client) baseClaims() map[string]any {
	iat := c.now().Unix()
	return map[string]any{
		"iss": c.DeviceID,
		"aud": c.Audience,
		"iat": iat,
		"exp": iat + int64(AssertionLifetime/time.Second),
		"jti": newJTI(),
	}
}

func (c *Client) ready() error {
	if c.Key == nil {
		return errors.New("deviceclient: no device key")
	}
	if c.DeviceID == "" || c.Audience == "" {
		return errors.New("deviceclient: device not enrolled (no device id or audience)")
	}
	return nil
}

// Assertion makes a fresh device assertion for the Authorization header:
// header {"alg":"ES256","kid":DeviceID,"typ":"JWT"}, claims {iss, aud, iat,
// exp = iat+120, jti}.
func (c *Client) Assertion() (string, error) {
	if err := c.ready(); err != nil {
		return "", err
	}
	return jws.Sign(c.Key, map[string]any{"kid": c.DeviceID, "typ": "JWT"}, c.baseClaims())
}

// SignedDecision signs a decision JWS for challenge id with the device key,
// for tests that need to send malformed ones. It starts from the header
// {"alg":"ES256","kid":DeviceID} and the claims {iss, aud, iat, exp, jti,
// cid: id}, then applies hdr and claims over them: a member with a nil
// value is removed, any other value replaces or adds the member (use
// json.RawMessage("null") to send a JSON null). jws.Sign always forces
// "alg":"ES256", whatever hdr says.
func (c *Client) SignedDecision(id string, claims map[string]any, hdr map[string]any) (string, error) {
	if c.Key == nil {
		return "", errors.New("deviceclient: no device key")
	}
	h := map[string]any{"kid": c.DeviceID}
	overlay(h, hdr)
	cl := c.baseClaims()
	cl["cid"] = id
	overlay(cl, claims)
	return jws.Sign(c.Key, h, cl)
}

func overlay(dst, src map[string]any) {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
		} else {
			dst[k] = v
		}
	}
}

// decisionJWS makes the JWS for d: claims dec, num only if non-empty,
// fraud only if true.
func (c *Client) decisionJWS(id string, d Decision) (string, error) {
	if err := c.ready(); err != nil {
		return "", err
	}
	claims := map[string]any{"dec": "deny"}
	if d.Approve {
		claims["dec"] = "approve"
	}
	if d.Number != "" {
		claims["num"] = d.Number
	}
	if d.Fraud {
		claims["fraud"] = true
	}
	return c.SignedDecision(id, claims, nil)
}

// Decide sends a decision on challenge id and returns the challenge's new
// status ("approved" or "denied").
func (c *Client) Decide(ctx context.Context, id string, d Decision) (string, error) {
	tok, err := c.decisionJWS(id, d)
	if err != nil {
		return "", err
	}
	return c.SendDecision(ctx, id, tok)
}

// SendDecision posts a ready-made decision JWS (see SignedDecision) to
// POST /v1/device/challenges/{id}/decision, without an Authorization
// header, and returns the status the server answers.
func (c *Client) SendDecision(ctx context.Context, id, response string) (string, error) {
	var out struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	path := "/v1/device/challenges/" + url.PathEscape(id) + "/decision"
	if err := c.call(ctx, http.MethodPost, path, map[string]string{"response": response}, "", &out); err != nil {
		return "", err
	}
	return out.Status, nil
}

// Pending lists the pending push challenges of the device's user. With
// wait > 0 (whole seconds, at most 30) the server holds the request until
// one is pending or wait passes.
func (c *Client) Pending(ctx context.Context, wait time.Duration) ([]Challenge, error) {
	path := "/v1/device/challenges"
	if wait > 0 {
		path += "?wait=" + strconv.Itoa(int((wait+time.Second-1)/time.Second))
	}
	var out struct {
		Challenges []Challenge `json:"challenges"`
	}
	if err := c.authed(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return out.Challenges, nil
}

// SetPush replaces the device's push registration (PUT /v1/device/push).
func (c *Client) SetPush(ctx context.Context, p Push) error {
	return c.authed(ctx, http.MethodPut, "/v1/device/push", p, nil)
}

// Unlink removes this device (DELETE /v1/device). Its key is useless after.
func (c *Client) Unlink(ctx context.Context) error {
	return c.authed(ctx, http.MethodDelete, "/v1/device", nil, nil)
}

// authed calls a device route with a fresh assertion.
func (c *Client) authed(ctx context.Context, method, path string, body, out any) error {
	a, err := c.Assertion()
	if err != nil {
		return err
	}
	return c.call(ctx, method, path, body, a, out)
}

// call does a request and decodes a 2xx answer into out (if non-nil); any
// other status is returned as a *Problem.
func (c *Client) call(ctx context.Context, method, path string, body any, bearer string, out any) error {
	resp, data, err := c.Do(ctx, method, path, body, bearer)
	if err != nil {
		return err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return ParseProblem(resp, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("deviceclient: %s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// Do sends one request to Server+path and returns the response (its body
// already read and closed) and the body. body is sent as is if it is a
// []byte, a string or a json.RawMessage, otherwise as its JSON encoding;
// a non-nil body gets Content-Type: application/json. A non-empty bearer is
// sent as "Authorization: Bearer <bearer>". Do does not interpret the
// status: only transport failures are errors.
func (c *Client) Do(ctx context.Context, method, path string, body any, bearer string) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != nil {
		var b []byte
		switch v := body.(type) {
		case []byte:
			b = v
		case json.RawMessage:
			b = v
		case string:
			b = []byte(v)
		default:
			var err error
			if b, err = json.Marshal(v); err != nil {
				return nil, nil, fmt.Errorf("deviceclient: encoding the body: %w", err)
			}
		}
		rd = bytes.NewReader(b)
	}
	if c.Server == "" {
		return nil, nil, errors.New("deviceclient: no server URL")
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Server, "/")+path, rd)
	if err != nil {
		return nil, nil, fmt.Errorf("deviceclient: %w", err)
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return resp, nil, fmt.Errorf("deviceclient: %s %s: reading the answer: %w", method, path, err)
	}
	if len(data) > maxResponse {
		return resp, nil, fmt.Errorf("deviceclient: %s %s: answer larger than %d bytes", method, path, maxResponse)
	}
	return resp, data, nil
}

// ParseProblem turns a non-2xx answer into a *Problem. A body that is not a
// problem+json object still gives a Problem, with the status and its text.
func ParseProblem(resp *http.Response, body []byte) *Problem {
	p := &Problem{}
	if err := json.Unmarshal(body, p); err != nil {
		p = &Problem{}
	}
	p.Status = resp.StatusCode
	if p.Title == "" {
		p.Title = http.StatusText(resp.StatusCode)
	}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			p.RetryAfter = time.Duration(n) * time.Second
		}
	}
	return p
}
