// Package apns sends pushes to iOS devices through the Apple Push
// Notification service (HTTP/2) with github.com/sideshow/apns2, using token
// (.p8) or certificate authentication.
//
// TLS to APNs (or to a fake) is verified against the system roots, so a test
// may point SSL_CERT_FILE at a fake's authority. Each Send is one HTTP/2
// request; apns2 does not retry.
package apns

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/certificate"
	"github.com/sideshow/apns2/token"

	"github.com/clicktopurchase/approvald/push"
)

// Setting names, used in configuration errors.
const (
	SettingKeyFile  = "APPROVALD_APNS_KEY_FILE"
	SettingKeyID    = "APPROVALD_APNS_KEY_ID"
	SettingTeamID   = "APPROVALD_APNS_TEAM_ID"
	SettingTopic    = "APPROVALD_APNS_TOPIC"
	SettingCertFile = "APPROVALD_APNS_CERT_FILE"
	SettingEndpoint = "APPROVALD_APNS_ENDPOINT"
)

// Category is the notification category of a challenge alert: the app's
// Approve and Deny buttons.
const Category = "APPROVAL_REQUEST"

// Config configures a Sender: token authentication (KeyFile, KeyID, TeamID)
// or certificate authentication (CertFile), exactly one of them.
type Config struct {
	// KeyFile is the .p8 signing key (APPROVALD_APNS_KEY_FILE).
	KeyFile string
	// KeyID is the key's id (APPROVALD_APNS_KEY_ID).
	KeyID string
	// TeamID is the Apple developer team (APPROVALD_APNS_TEAM_ID).
	TeamID string
	// Topic is the app's bundle id (APPROVALD_APNS_TOPIC).
	Topic string
	// CertFile is a PEM file with the push certificate and its unencrypted
	// private key (APPROVALD_APNS_CERT_FILE).
	CertFile string
	// Endpoint is "production" (the default), "development", or an https URL
	// (a fake) (APPROVALD_APNS_ENDPOINT).
	Endpoint string
}

// Sender sends pushes through APNs. It is safe for concurrent use.
type Sender struct {
	client *apns2.Client
	topic  string
	auth   string
	tally  push.Tally
	now    func() time.Time
}

var _ push.Sender = (*Sender)(nil)

// New checks cfg, loads the key or certificate and builds the apns2 client.
// Errors name the setting at fault.
func New(cfg Config) (*Sender, error) {
	host, err := endpointHost(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	topic := strings.TrimSpace(cfg.Topic)
	if topic == "" {
		return nil, fmt.Errorf("apns: %s is required (the app's bundle id)", SettingTopic)
	}
	var client *apns2.Client
	var auth string
	switch {
	case cfg.KeyFile != "" && cfg.CertFile != "":
		return nil, fmt.Errorf("apns: set %s or %s, not both", SettingKeyFile, SettingCertFile)
	case cfg.KeyFile != "":
		if cfg.KeyID == "" {
			return nil, fmt.Errorf("apns: %s is required with %s", SettingKeyID, SettingKeyFile)
		}
		if cfg.TeamID == "" {
			return nil, fmt.Errorf("apns: %s is required with %s", SettingTeamID, SettingKeyFile)
		}
		key, err := readAuthKey(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("apns: %s %q: %w", SettingKeyFile, cfg.KeyFile, err)
		}
		tok := &token.Token{AuthKey: key, KeyID: cfg.KeyID, TeamID: cfg.TeamID}
		if _, err := tok.Generate(); err != nil {
			return nil, fmt.Errorf("apns: %s %q: cannot sign a provider token: %w", SettingKeyFile, cfg.KeyFile, err)
		}
		client, auth = apns2.NewTokenClient(tok), "token"
	case cfg.CertFile != "":
		cert, err := certificate.FromPemFile(cfg.CertFile, "")
		if err != nil {
			return nil, fmt.Errorf("apns: %s %q: %w", SettingCertFile, cfg.CertFile, err)
		}
		if cert.Leaf == nil {
			return nil, fmt.Errorf("apns: %s %q: the certificate does not parse", SettingCertFile, cfg.CertFile)
		}
		signer, ok := cert.PrivateKey.(crypto.Signer)
		pub, ok2 := cert.Leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !ok2 || !pub.Equal(signer.Public()) {
			return nil, fmt.Errorf("apns: %s %q: the private key does not match the certificate", SettingCertFile, cfg.CertFile)
		}
		if now := time.Now(); now.After(cert.Leaf.NotAfter) || now.Before(cert.Leaf.NotBefore) {
			return nil, fmt.Errorf("apns: %s %q: the certificate is valid only from %s to %s",
				SettingCertFile, cfg.CertFile, cert.Leaf.NotBefore.UTC().Format(time.RFC3339), cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		client, auth = apns2.NewClient(cert), "certificate"
	default:
		return nil, fmt.Errorf("apns: %s (with %s and %s) or %s is required", SettingKeyFile, SettingKeyID, SettingTeamID, SettingCertFile)
	}
	client.Host = host
	client.HTTPClient.Transport = &capture{next: client.HTTPClient.Transport}
	return &Sender{client: client, topic: topic, auth: auth, now: time.Now}, nil
}

// readAuthKey loads a .p8 key with apns2's parser, with plainer errors.
func readAuthKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := token.AuthKeyFromBytes(b)
	switch {
	case err == nil:
		return key, nil
	case errors.Is(err, token.ErrAuthKeyNotPem):
		return nil, errors.New("not a PEM file (want the .p8 key from Apple)")
	case errors.Is(err, token.ErrAuthKeyNotECDSA):
		return nil, errors.New("not an ECDSA (P-256) key (want the .p8 key from Apple)")
	}
	return nil, errors.New("not a PKCS #8 private key (want the .p8 key from Apple)")
}

func endpointHost(endpoint string) (string, error) {
	switch strings.TrimSpace(endpoint) {
	case "", "production":
		return apns2.HostProduction, nil
	case "development", "sandbox":
		return apns2.HostDevelopment, nil
	}
	u, err := url.Parse(strings.TrimRight(endpoint, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return "", fmt.Errorf("apns: %s %q: want production, development or an https://host[:port] URL", SettingEndpoint, endpoint)
	}
	return "https://" + u.Host, nil
}

// Auth is "token" or "certificate": how the sender authenticates.
func (s *Sender) Auth() string { return s.auth }

// Counts returns how many sends ended how, keyed by push.Result.Key (e.g.
// "delivered", "token_invalid/Unregistered", "retry/TooManyRequests").
func (s *Sender) Counts() map[string]uint64 { return s.tally.Snapshot() }

// CloseIdleConnections closes the sender's idle HTTP/2 connections.
func (s *Sender) CloseIdleConnections() { s.client.CloseIdleConnections() }

// Send sends m to the device token in one HTTP/2 request bounded by ctx.
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
	now := s.now()
	n, err := build(token, s.topic, m, now)
	if err != nil {
		return push.Result{Outcome: push.Failed, Reason: "invalid_message"}
	}
	at := &attempt{}
	res, err := s.client.PushWithContext(context.WithValue(ctx, attemptKey{}, at), n)
	return classify(ctx, at, res, err, now)
}

type alert struct {
	Title string `json:"title"`
	Body  string `json:"body"`
}

type aps struct {
	Alert            *alert `json:"alert,omitempty"`
	Category         string `json:"category,omitempty"`
	MutableContent   int    `json:"mutable-content,omitempty"`
	ContentAvailable int    `json:"content-available,omitempty"`
}

type challengePayload struct {
	APS            aps    `json:"aps"`
	ChallengeID    string `json:"challenge_id"`
	Action         string `json:"action"`
	NumberMatching bool   `json:"number_matching"`
}

type silentPayload struct {
	APS         aps    `json:"aps"`
	Type        string `json:"type"`
	ChallengeID string `json:"challenge_id,omitempty"`
}

// build returns the notification for m: a challenge is an alert (category
// APPROVAL_REQUEST, mutable-content, priority 10, collapse id the challenge
// id, expiration the challenge's expiry); resolved and retired are background
// pushes (content-available, priority 5).
func build(token, topic string, m push.Message, now time.Time) (*apns2.Notification, error) {
	n := &apns2.Notification{DeviceToken: token, Topic: topic, Expiration: m.Expiry(now)}
	var payload any
	if m.Kind == push.KindChallenge {
		n.PushType, n.Priority, n.CollapseID = apns2.PushTypeAlert, apns2.PriorityHigh, m.ChallengeID
		payload = challengePayload{
			APS:            aps{Alert: &alert{Title: m.Title, Body: m.Body}, Category: Category, MutableContent: 1},
			ChallengeID:    m.ChallengeID,
			Action:         m.Action,
			NumberMatching: m.NumberMatching,
		}
	} else {
		n.PushType, n.Priority = apns2.PushTypeBackground, apns2.PriorityLow
		payload = silentPayload{APS: aps{ContentAvailable: 1}, Type: string(m.Kind), ChallengeID: m.ChallengeID}
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return nil, err
	}
	n.Payload = b
	return n, nil
}

func classify(ctx context.Context, at *attempt, res *apns2.Response, err error, now time.Time) push.Result {
	retryAfter := push.ParseRetryAfter(at.retryAfter, now)
	if err != nil {
		switch {
		case at.status != 0: // APNs answered, but its body did not decode
			return byStatus(at.status, "", retryAfter)
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
			return push.Result{Outcome: push.Retry, Reason: "timeout"}
		case errors.Is(err, context.Canceled) || ctx.Err() != nil:
			return push.Result{Outcome: push.Retry, Reason: "canceled"}
		}
		return push.Result{Outcome: push.Retry, Reason: "network"}
	}
	return byStatus(res.StatusCode, res.Reason, retryAfter)
}

func byStatus(status int, reason string, retryAfter time.Duration) push.Result {
	if status == http.StatusOK {
		return push.Result{Outcome: push.Delivered}
	}
	if reason == "" {
		reason = strconv.Itoa(status)
	}
	switch {
	case status == http.StatusGone,
		status == http.StatusBadRequest && (reason == apns2.ReasonBadDeviceToken || reason == apns2.ReasonDeviceTokenNotForTopic):
		return push.Result{Outcome: push.TokenInvalid, Reason: reason}
	case status == http.StatusTooManyRequests || status >= 500:
		return push.Result{Outcome: push.Retry, RetryAfter: retryAfter, Reason: reason}
	}
	return push.Result{Outcome: push.Failed, Reason: reason}
}

// attempt records the HTTP status and Retry-After of a Send's request, which
// apns2's Response does not expose.
type attempt struct {
	status     int
	retryAfter string
}

type attemptKey struct{}

// capture wraps apns2's HTTP/2 transport to fill the request's attempt.
type capture struct {
	next http.RoundTripper
}

// RoundTrip sends req and notes the response's status and Retry-After in the
// request's attempt.
func (t *capture) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err == nil {
		if at, ok := req.Context().Value(attemptKey{}).(*attempt); ok {
			at.status = resp.StatusCode
			at.retryAfter = resp.Header.Get("Retry-After")
		}
	}
	return resp, err
}

// CloseIdleConnections closes the idle connections of the wrapped transport
// (apns2.Client.CloseIdleConnections calls it).
func (t *capture) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
