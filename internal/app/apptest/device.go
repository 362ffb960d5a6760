package apptest

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/jws"
	"github.com/gorilla/websocket"
)

// Enroll starts an enrollment for userID (extra members merged into the
// body) and returns the 201 answer.
func (e *Env) Enroll(userID string, extra map[string]any) *Response {
	e.t.Helper()
	body := map[string]any{"user_id": userID}
	for k, v := range extra {
		body[k] = v
	}
	r := e.RP("POST", "/v1/enrollments", body)
	if r.Status != http.StatusCreated {
		e.t.Fatalf("enroll %s: %d %s", userID, r.Status, r.Body)
	}
	return r
}

// NewDevice makes a device client with a fresh key for this instance.
func (e *Env) NewDevice() *deviceclient.Client {
	e.t.Helper()
	k, err := deviceclient.NewKey()
	if err != nil {
		e.t.Fatal(err)
	}
	return &deviceclient.Client{Server: e.URL, HTTP: http.DefaultClient, Key: k}
}

// LinkDevice links a new device to userID (a first device: no step-up).
func (e *Env) LinkDevice(userID string) *deviceclient.Client {
	e.t.Helper()
	code := e.Enroll(userID, nil).Str("code")
	d := e.NewDevice()
	if err := d.Enroll(context.Background(), code, "Test phone", "android", deviceclient.Push{Provider: "none"}); err != nil {
		e.t.Fatalf("link device: %v", err)
	}
	return d
}

// Challenge creates a challenge and returns the 201 answer.
func (e *Env) Challenge(userID, action string, extra map[string]any) *Response {
	e.t.Helper()
	body := map[string]any{"user_id": userID, "action": action}
	for k, v := range extra {
		body[k] = v
	}
	r := e.RP("POST", "/v1/challenges", body)
	if r.Status != http.StatusCreated {
		e.t.Fatalf("challenge: %d %s", r.Status, r.Body)
	}
	return r
}

// Watch opens the browser's watch socket with the given Origin ("" for none).
func (e *Env) Watch(token, origin string) (*websocket.Conn, *http.Response, error) {
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	return (&websocket.Dialer{HandshakeTimeout: 5 * time.Second}).Dial("ws"+e.URL[len("http"):]+"/v1/watch?token="+token, h)
}

// MustWatch opens a watch socket or fails the test.
func (e *Env) MustWatch(token string) *websocket.Conn {
	e.t.Helper()
	c, resp, err := e.Watch(token, e.URL)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		e.t.Fatalf("watch: %v (status %d)", err, status)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// Frame reads one watch frame (within d) into a map; ok is false when the
// socket closed instead, with the close code.
func Frame(t testing.TB, c *websocket.Conn, d time.Duration) (frame map[string]any, closeCode int) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, b, err := c.ReadMessage()
	if err != nil {
		if ce, ok := err.(*websocket.CloseError); ok {
			return nil, ce.Code
		}
		t.Fatalf("read frame: %v", err)
	}
	if err := json.Unmarshal(b, &frame); err != nil {
		t.Fatalf("frame is not JSON: %s", b)
	}
	return frame, 0
}

// VerifyResultToken checks a result token against the instance's JWKS and
// returns its claims.
func (e *Env) VerifyResultToken(tok string) map[string]any {
	e.t.Helper()
	r := e.Do("GET", "/.well-known/jwks.json", nil, "")
	var set struct {
		Keys []jws.JWK `json:"keys"`
	}
	if err := json.Unmarshal(r.Body, &set); err != nil || len(set.Keys) == 0 {
		e.t.Fatalf("jwks: %s", r.Body)
	}
	p, err := jws.Parse(tok)
	if err != nil {
		e.t.Fatalf("result token: %v", err)
	}
	for _, k := range set.Keys {
		if k.Kid != p.Kid {
			continue
		}
		pub, err := jws.PublicKeyFromJWK(k)
		if err != nil {
			e.t.Fatal(err)
		}
		if err := p.VerifyES256(pub); err != nil {
			e.t.Fatalf("result token does not verify: %v", err)
		}
		var claims map[string]any
		if err := json.Unmarshal(p.Payload, &claims); err != nil {
			e.t.Fatal(err)
		}
		return claims
	}
	e.t.Fatalf("no JWKS key with kid %q", p.Kid)
	return nil
}
