// Package fcm sends pushes to Android devices through Firebase Cloud
// Messaging (HTTP v1) with the Firebase Admin SDK.
//
// Each Send is exactly one HTTP attempt: the SDK's own retry loop (which
// retries 503 and network errors up to four times, sleeping up to two
// minutes on a Retry-After) is switched off by the transport this package
// gives the SDK, so the caller's backoff, bounded by the challenge's life, is
// the only one.
package fcm

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/auth"
	"cloud.google.com/go/auth/credentials"
	"cloud.google.com/go/auth/httptransport"
	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"
	"google.golang.org/api/option"

	"github.com/clicktopurchase/approvald/push"
)

// Setting names, used in configuration errors.
const (
	SettingCredentialsFile = "APPROVALD_FCM_CREDENTIALS_FILE"
	SettingProjectID       = "APPROVALD_FCM_PROJECT_ID"
	SettingEndpoint        = "APPROVALD_FCM_ENDPOINT"
)

// messagingScope is the OAuth 2.0 scope FCM HTTP v1 requires.
const messagingScope = "https://www.googleapis.com/auth/firebase.messaging"

// Config configures a Sender.
type Config struct {
	// CredentialsFile is a service-account JSON key file
	// (APPROVALD_FCM_CREDENTIALS_FILE). Without it, Endpoint must be set and
	// requests go unauthenticated (to a fake or an emulator).
	CredentialsFile string
	// ProjectID is the Firebase project (APPROVALD_FCM_PROJECT_ID); empty
	// means the credentials file's project_id.
	ProjectID string
	// Endpoint overrides the FCM base URL (APPROVALD_FCM_ENDPOINT), e.g.
	// "http://127.0.0.1:9099/v1"; empty means Google's.
	Endpoint string
	// HTTPClient optionally supplies the transport (its Transport, under the
	// OAuth layer) and Timeout for requests to FCM.
	HTTPClient *http.Client
}

// Sender sends pushes through FCM. It is safe for concurrent use.
type Sender struct {
	client    *messaging.Client
	projectID string
	tally     push.Tally
	now       func() time.Time
}

var _ push.Sender = (*Sender)(nil)

// New checks cfg, reads and validates the credentials file, and builds the
// Firebase messaging client. Errors name the setting at fault.
func New(ctx context.Context, cfg Config) (*Sender, error) {
	projectID := strings.TrimSpace(cfg.ProjectID)
	base := baseTransport(cfg.HTTPClient)
	var rt http.RoundTripper
	switch {
	case cfg.CredentialsFile != "":
		data, sa, err := readServiceAccount(cfg.CredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("fcm: %s %q: %w", SettingCredentialsFile, cfg.CredentialsFile, err)
		}
		if projectID == "" {
			projectID = sa.ProjectID
		}
		creds, err := credentials.NewCredentialsFromJSON(credentials.ServiceAccount, data,
			&credentials.DetectOptions{Scopes: []string{messagingScope}})
		if err != nil {
			return nil, fmt.Errorf("fcm: %s %q: %w", SettingCredentialsFile, cfg.CredentialsFile, err)
		}
		hc, err := httptransport.NewClient(&httptransport.Options{
			Credentials:      creds,
			BaseRoundTripper: base,
			DisableTelemetry: true,
		})
		if err != nil {
			return nil, fmt.Errorf("fcm: %s %q: %w", SettingCredentialsFile, cfg.CredentialsFile, err)
		}
		rt = hc.Transport
	case cfg.Endpoint != "":
		rt = base // unauthenticated, like option.WithoutAuthentication
	default:
		return nil, fmt.Errorf("fcm: %s is required (or %s, to send unauthenticated to a fake or emulator)",
			SettingCredentialsFile, SettingEndpoint)
	}
	if projectID == "" {
		return nil, fmt.Errorf("fcm: %s is required (the credentials file names no project_id)", SettingProjectID)
	}
	if strings.ContainsAny(projectID, "/?#% ") {
		return nil, fmt.Errorf("fcm: %s %q is not a project id", SettingProjectID, projectID)
	}

	hc := &http.Client{Transport: &oneShot{next: rt}}
	if cfg.HTTPClient != nil {
		hc.Timeout = cfg.HTTPClient.Timeout
	}
	opts := []option.ClientOption{option.WithHTTPClient(hc)}
	if cfg.Endpoint != "" {
		ep := strings.TrimRight(cfg.Endpoint, "/")
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("fcm: %s %q is not an http(s) URL", SettingEndpoint, cfg.Endpoint)
		}
		opts = append(opts, option.WithEndpoint(ep))
	}
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: projectID}, opts...)
	if err != nil {
		return nil, fmt.Errorf("fcm: %w", err)
	}
	client, err := app.Messaging(ctx)
	if err != nil {
		return nil, fmt.Errorf("fcm: %w", err)
	}
	return &Sender{client: client, projectID: projectID, now: time.Now}, nil
}

// ProjectID is the Firebase project the sender sends for.
func (s *Sender) ProjectID() string { return s.projectID }

// Counts returns how many sends ended how, keyed by push.Result.Key (e.g.
// "delivered", "token_invalid/UNREGISTERED", "retry/network").
func (s *Sender) Counts() map[string]uint64 { return s.tally.Snapshot() }

// Send sends m to the registration token in one HTTP attempt bounded by ctx.
func (s *Sender) Send(ctx context.Context, token string, m push.Message) push.Result {
	r := s.send(ctx, token, m)
	s.tally.Add(r)
	return r
}

func (s *Sender) send(ctx context.Context, token string, m push.Message) push.Result {
	if token == "" {
		return push.Result{Outcome: push.Failed, Reason: "empty_token"}
	}
	if err := m.Validate(); err != nil {
		return push.Result{Outcome: push.Failed, Reason: "invalid_message"}
	}
	msg := build(token, m, s.now())
	at := &attempt{}
	_, err := s.client.Send(context.WithValue(ctx, attemptKey{}, at), msg)
	return classify(ctx, at, err, s.now())
}

// build returns the FCM message for m: data only (no notification block),
// Android priority high for a challenge (normal for silent pushes), TTL the
// time left until m.Expiry, collapse key the challenge id.
func build(token string, m push.Message, now time.Time) *messaging.Message {
	ttl := m.TTL(now)
	android := &messaging.AndroidConfig{TTL: &ttl, Priority: "normal", CollapseKey: m.ChallengeID}
	var data map[string]string
	switch m.Kind {
	case push.KindChallenge:
		android.Priority = "high"
		data = map[string]string{
			"type":            string(push.KindChallenge),
			"challenge_id":    m.ChallengeID,
			"action":          m.Action,
			"title":           m.Title,
			"body":            m.Body,
			"expires_at":      m.ExpiresAt.UTC().Format("2006-01-02T15:04:05.999Z07:00"), // as the API writes it
			"number_matching": strconv.FormatBool(m.NumberMatching),
		}
	case push.KindResolved:
		data = map[string]string{"type": string(push.KindResolved), "challenge_id": m.ChallengeID}
	default:
		data = map[string]string{"type": string(m.Kind)}
	}
	// The app registers an FCM registration token, which goes in "token"; the
	// SDK marks the field deprecated in favour of "fid" (a Firebase
	// installation id), a different identifier the app does not send.
	//lint:ignore SA1019 registration tokens are still FCM's send target
	return &messaging.Message{Token: token, Data: data, Android: android}
}

// classify maps the SDK's answer to a push.Result.
func classify(ctx context.Context, at *attempt, err error, now time.Time) push.Result {
	if err == nil {
		return push.Result{Outcome: push.Delivered}
	}
	retryAfter := push.ParseRetryAfter(at.retryAfter, now)
	if at.err != nil { // no HTTP answer from FCM
		switch {
		case errors.Is(at.err, context.DeadlineExceeded) || (ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded)):
			return push.Result{Outcome: push.Retry, Reason: "timeout"}
		case errors.Is(at.err, context.Canceled) || ctx.Err() != nil:
			return push.Result{Outcome: push.Retry, Reason: "canceled"}
		}
		var ae *auth.Error
		if errors.As(at.err, &ae) && ae.Response != nil {
			if c := ae.Response.StatusCode; c >= 400 && c < 500 && c != http.StatusTooManyRequests {
				return push.Result{Outcome: push.Failed, Reason: "auth"}
			}
			return push.Result{Outcome: push.Retry, Reason: "auth"}
		}
		return push.Result{Outcome: push.Retry, Reason: "network"}
	}
	switch {
	case messaging.IsUnregistered(err):
		return push.Result{Outcome: push.TokenInvalid, Reason: "UNREGISTERED"}
	case messaging.IsSenderIDMismatch(err):
		return push.Result{Outcome: push.TokenInvalid, Reason: "SENDER_ID_MISMATCH"}
	case messaging.IsQuotaExceeded(err):
		return push.Result{Outcome: push.Retry, RetryAfter: retryAfter, Reason: "QUOTA_EXCEEDED"}
	case messaging.IsUnavailable(err):
		return push.Result{Outcome: push.Retry, RetryAfter: retryAfter, Reason: "UNAVAILABLE"}
	case messaging.IsInternal(err):
		return push.Result{Outcome: push.Retry, RetryAfter: retryAfter, Reason: "INTERNAL"}
	case messaging.IsInvalidArgument(err):
		return push.Result{Outcome: push.Failed, Reason: "INVALID_ARGUMENT"}
	case messaging.IsThirdPartyAuthError(err):
		return push.Result{Outcome: push.Failed, Reason: "THIRD_PARTY_AUTH_ERROR"}
	}
	status := at.status
	if status == 0 {
		if resp := errorutils.HTTPResponse(err); resp != nil {
			status = resp.StatusCode
		}
	}
	reason := platformCode(err)
	switch {
	case status == 0: // the SDK refused the message before sending it
		return push.Result{Outcome: push.Failed, Reason: "invalid_message"}
	case status == http.StatusTooManyRequests || status >= 500:
		return push.Result{Outcome: push.Retry, RetryAfter: retryAfter, Reason: reason}
	default:
		return push.Result{Outcome: push.Failed, Reason: reason}
	}
}

// platformCode is the Google API status of err (e.g. "PERMISSION_DENIED").
func platformCode(err error) string {
	checks := []struct {
		is   func(error) bool
		code string
	}{
		{errorutils.IsUnauthenticated, "UNAUTHENTICATED"},
		{errorutils.IsPermissionDenied, "PERMISSION_DENIED"},
		{errorutils.IsNotFound, "NOT_FOUND"},
		{errorutils.IsInvalidArgument, "INVALID_ARGUMENT"},
		{errorutils.IsResourceExhausted, "RESOURCE_EXHAUSTED"},
		{errorutils.IsUnavailable, "UNAVAILABLE"},
		{errorutils.IsInternal, "INTERNAL"},
		{errorutils.IsDeadlineExceeded, "DEADLINE_EXCEEDED"},
		{errorutils.IsFailedPrecondition, "FAILED_PRECONDITION"},
		{errorutils.IsConflict, "CONFLICT"},
		{errorutils.IsAborted, "ABORTED"},
	}
	for _, c := range checks {
		if c.is(err) {
			return c.code
		}
	}
	return "UNKNOWN"
}

// serviceAccount holds the members of a credentials file that are checked.
type serviceAccount struct {
	Type        string `json:"type"`
	ProjectID   string `json:"project_id"`
	ClientEmail string `json:"client_email"`
	PrivateKey  string `json:"private_key"`
	TokenURI    string `json:"token_uri"`
}

// readServiceAccount reads and validates a service-account key file, which
// the auth library would otherwise only read at the first send.
func readServiceAccount(path string) ([]byte, *serviceAccount, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var sa serviceAccount
	if err := json.Unmarshal(data, &sa); err != nil {
		return nil, nil, fmt.Errorf("not a service-account JSON key file: %w", err)
	}
	if sa.Type != "service_account" {
		return nil, nil, fmt.Errorf("type is %q, want \"service_account\"", sa.Type)
	}
	if sa.ClientEmail == "" {
		return nil, nil, errors.New("client_email is missing")
	}
	block, _ := pem.Decode([]byte(sa.PrivateKey))
	if block == nil {
		return nil, nil, errors.New("private_key is not a PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if key, err = x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
			return nil, nil, errors.New("private_key is not a PKCS #8 or PKCS #1 private key")
		}
	}
	if _, ok := key.(*rsa.PrivateKey); !ok {
		return nil, nil, fmt.Errorf("private_key is a %T, want an RSA key", key)
	}
	if sa.TokenURI != "" {
		u, err := url.Parse(sa.TokenURI)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, nil, fmt.Errorf("token_uri %q is not an http(s) URL", sa.TokenURI)
		}
	}
	return data, &sa, nil
}

func baseTransport(hc *http.Client) http.RoundTripper {
	if hc != nil && hc.Transport != nil {
		return hc.Transport
	}
	if t, ok := http.DefaultTransport.(*http.Transport); ok {
		t = t.Clone()
		t.MaxIdleConnsPerHost = 100
		return t
	}
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 100,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
}

// attempt records what the one HTTP attempt of a Send got.
type attempt struct {
	status     int
	retryAfter string
	err        error
}

type attemptKey struct{}

// oneShot makes every Send a single HTTP attempt. The SDK retries a network
// error or a 503 by itself (internal.WithDefaultRetryConfig, not
// configurable); oneShot records the real answer for classify and hides it
// from that loop: a transport error becomes a synthetic 502, and a 503's
// Retry-After is raised past the SDK's two-minute cap, which the SDK takes as
// "do not retry".
type oneShot struct {
	next http.RoundTripper
}

// RoundTrip sends req once, notes what came back in the request's attempt,
// and shapes the answer so that the SDK does not retry it.
func (t *oneShot) RoundTrip(req *http.Request) (*http.Response, error) {
	at, _ := req.Context().Value(attemptKey{}).(*attempt)
	resp, err := t.next.RoundTrip(req)
	if at == nil {
		return resp, err
	}
	if err != nil {
		at.err = err
		return &http.Response{
			Status:     "502 Bad Gateway",
			StatusCode: http.StatusBadGateway,
			Proto:      "HTTP/1.1",
			ProtoMajor: 1,
			ProtoMinor: 1,
			Header:     make(http.Header),
			Body:       http.NoBody,
			Request:    req,
		}, nil
	}
	at.status = resp.StatusCode
	at.retryAfter = resp.Header.Get("Retry-After")
	if resp.StatusCode == http.StatusServiceUnavailable {
		resp.Header.Set("Retry-After", "86400")
	}
	return resp, nil
}

// CloseIdleConnections closes the idle connections of the underlying
// transport.
func (t *oneShot) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
