package pushtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// APNs reasons the fake answers with, as Apple names them.
const (
	APNsBadDeviceToken         = "BadDeviceToken"
	APNsDeviceTokenNotForTopic = "DeviceTokenNotForTopic"
	APNsUnregistered           = "Unregistered"
	APNsTooManyRequests        = "TooManyRequests"
	APNsInternalServerError    = "InternalServerError"
	APNsServiceUnavailable     = "ServiceUnavailable"
	APNsInvalidProviderToken   = "InvalidProviderToken"
	APNsMissingProviderToken   = "MissingProviderToken"
	APNsExpiredProviderToken   = "ExpiredProviderToken"
	APNsBadCertificate         = "BadCertificate"
	APNsMissingTopic           = "MissingTopic"
	APNsTopicDisallowed        = "TopicDisallowed"
	APNsPayloadTooLarge        = "PayloadTooLarge"
)

// APNsReasonStatus is the HTTP status APNs answers with for a reason (400
// for one it does not know).
func APNsReasonStatus(reason string) int {
	switch reason {
	case APNsUnregistered, "ExpiredToken":
		return http.StatusGone
	case APNsTooManyRequests, "TooManyProviderTokenUpdates":
		return http.StatusTooManyRequests
	case APNsInternalServerError:
		return http.StatusInternalServerError
	case APNsServiceUnavailable, "Shutdown":
		return http.StatusServiceUnavailable
	case APNsInvalidProviderToken, APNsMissingProviderToken, APNsExpiredProviderToken,
		APNsBadCertificate, "BadCertificateEnvironment", "Forbidden":
		return http.StatusForbidden
	case APNsPayloadTooLarge:
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}

// APNsMessage is one POST /3/device/{token} request the fake APNs received.
type APNsMessage struct {
	// Token is the device token in the path.
	Token string
	// Header holds the request headers (apns-*, authorization).
	Header http.Header
	// Payload is the decoded JSON body.
	Payload map[string]any
	// Raw is the body as sent.
	Raw []byte
	// Auth is "token" or "certificate": how the provider authenticated
	// (empty when it did not).
	Auth string
	// KeyID and TeamID identify the provider token's key (token auth).
	KeyID, TeamID string
	// CertSubject is the client certificate's subject (certificate auth).
	CertSubject string
	// Status is the HTTP status the fake answered (0 while hanging, 499 when
	// the client went away first).
	Status int
	// Reason is the APNs reason answered, if any.
	Reason string
	// Received is when the request arrived.
	Received time.Time
}

type apnsFailure struct {
	status     int
	reason     string
	retryAfter string
}

type apnsKey struct {
	teamID string
	pub    *ecdsa.PublicKey
}

type verifiedBearer struct {
	keyID, teamID string
	iat           int64
}

// APNs is a fake Apple Push Notification service: HTTP/2 over TLS with a
// certificate from the fakes' authority, serving POST /3/device/{token}. It
// checks the provider token (ES256 JWT signed by a key added with AddKey or
// NewKey, iss = the key's team, iat under an hour old) or a client
// certificate issued by IssueClientCert. Its methods are safe for concurrent
// use.
type APNs struct {
	srv  *http.Server
	url  string
	done chan struct{}
	ca   *authority

	conns atomic.Int64

	script *script[apnsFailure, APNsMessage]

	mu       sync.Mutex
	keys     map[string]apnsKey // key id -> key
	verified map[string]verifiedBearer
}

// NewAPNs starts a fake APNs on 127.0.0.1 and a free port. Close it when done.
func NewAPNs() (*APNs, error) {
	ca, err := sharedCA()
	if err != nil {
		return nil, err
	}
	cert, err := ca.serverCertificate()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	a := &APNs{
		url:      "https://" + ln.Addr().String(),
		done:     make(chan struct{}),
		ca:       ca,
		script:   newScript[apnsFailure, APNsMessage](),
		keys:     make(map[string]apnsKey),
		verified: make(map[string]verifiedBearer),
	}
	var protocols http.Protocols
	protocols.SetHTTP2(true) // APNs speaks HTTP/2 only
	a.srv = &http.Server{
		Handler:           http.HandlerFunc(a.serve),
		ReadHeaderTimeout: 10 * time.Second,
		Protocols:         &protocols,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequestClientCert, // verified per request, answered like APNs
			MinVersion:   tls.VersionTLS12,
		},
		ErrorLog:  log.New(io.Discard, "", 0),
		ConnState: a.connState,
	}
	go func() { _ = a.srv.ServeTLS(ln, "", "") }()
	return a, nil
}

// URL is the server's base URL, e.g. "https://127.0.0.1:41234": the value
// for APPROVALD_APNS_ENDPOINT.
func (a *APNs) URL() string { return a.url }

// CACertPEM returns the PEM of the authority that signed the server's
// certificate (the same for every fake in the process).
func (a *APNs) CACertPEM() []byte { return append([]byte(nil), a.ca.certPEM...) }

// WriteCA writes the authority's certificate to dir and returns its path,
// ready for SSL_CERT_FILE (see the package-level WriteCA).
func (a *APNs) WriteCA(dir string) (string, error) { return WriteCA(dir) }

// ClientTLSConfig is a TLS configuration trusting only the fakes' authority,
// for clients configured explicitly rather than through the system roots.
func (a *APNs) ClientTLSConfig() *tls.Config {
	return &tls.Config{RootCAs: a.ca.pool.Clone(), MinVersion: tls.VersionTLS12}
}

// Close stops the server and releases hanging requests.
func (a *APNs) Close() {
	select {
	case <-a.done:
		return
	default:
	}
	close(a.done)
	_ = a.srv.Close()
}

// AddKey trusts the provider-token signing key keyID of team teamID.
func (a *APNs) AddKey(keyID, teamID string, pub *ecdsa.PublicKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.keys[keyID] = apnsKey{teamID: teamID, pub: pub}
}

// NewKey generates a .p8 key in dir (see GenerateP8), trusts it for teamID
// and returns its path and key id.
func (a *APNs) NewKey(dir, teamID string) (path, keyID string, err error) {
	path, keyID, pub, err := GenerateP8(dir)
	if err != nil {
		return "", "", err
	}
	a.AddKey(keyID, teamID, pub)
	return path, keyID, nil
}

// FailNext makes the next n requests fail with HTTP status and reason
// (status 0: the status APNs uses for reason); retryAfter, when not "", is
// sent as Retry-After. A 410 carries a timestamp, as APNs sends. Calls queue
// up.
func (a *APNs) FailNext(n, status int, reason, retryAfter string) {
	if status == 0 {
		status = APNsReasonStatus(reason)
	}
	a.script.queueFailure(n, apnsFailure{status, reason, retryAfter})
}

// FailToken makes every request for token fail with status and reason
// (status 0: the status APNs uses for reason) until FailToken(token, -1, "")
// clears it.
func (a *APNs) FailToken(token string, status int, reason string) {
	if status < 0 {
		a.script.clearTokenFailure(token)
		return
	}
	if status == 0 {
		status = APNsReasonStatus(reason)
	}
	a.script.setTokenFailure(token, apnsFailure{status: status, reason: reason})
}

// Hang delays every following answer by d (until the client gives up or the
// fake closes); 0 turns it off.
func (a *APNs) Hang(d time.Duration) { a.script.setHang(d) }

// SetRecording turns keeping each request's details on (the default) or off
// (only Count goes on), e.g. for benchmarks.
func (a *APNs) SetRecording(on bool) { a.script.setRecording(on) }

// Reset forgets the recorded requests and every scripted failure and hang
// (trusted keys stay).
func (a *APNs) Reset() { a.script.reset() }

// Messages returns a copy of the requests received so far.
func (a *APNs) Messages() []APNsMessage { return a.script.messages() }

// Count is how many requests arrived (recorded or not).
func (a *APNs) Count() int { return a.script.Count() }

// WaitFor waits until at least n requests have arrived, whatever was
// answered, or timeout passes. It reports whether they did.
func (a *APNs) WaitFor(n int, timeout time.Duration) bool { return a.script.WaitFor(n, timeout) }

// GenerateP8 writes a fresh P-256 key in Apple's .p8 form (PKCS #8 PEM) to
// dir/AuthKey_<keyID>.p8 and returns the path, a random 10-character key id
// and the public key to trust (APNs.AddKey).
func GenerateP8(dir string) (path, keyID string, pub *ecdsa.PublicKey, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	keyID = randomString(10)
	path = filepath.Join(dir, "AuthKey_"+keyID+".p8")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", nil, err
	}
	return path, keyID, &key.PublicKey, nil
}

// authenticate checks the request's client certificate or provider token.
// It returns the failure reason ("" when authenticated) and fills m.
func (a *APNs) authenticate(r *http.Request, m *APNsMessage) (status int, reason string) {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		leaf := r.TLS.PeerCertificates[0]
		m.Auth, m.CertSubject = "certificate", leaf.Subject.String()
		inter := x509.NewCertPool()
		for _, c := range r.TLS.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: a.ca.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}); err != nil {
			return http.StatusForbidden, APNsBadCertificate
		}
		certTopic, _ := strings.CutPrefix(leaf.Subject.CommonName, APNsCertCommonName)
		if topic := r.Header.Get("apns-topic"); topic != "" && topic != certTopic {
			return http.StatusBadRequest, APNsTopicDisallowed
		}
		return 0, ""
	}
	authz := r.Header.Get("authorization")
	if authz == "" {
		return http.StatusForbidden, APNsMissingProviderToken
	}
	m.Auth = "token"
	scheme, bearer, _ := strings.Cut(authz, " ")
	if !strings.EqualFold(scheme, "bearer") || bearer == "" {
		return http.StatusForbidden, APNsInvalidProviderToken
	}
	now := time.Now().Unix()
	a.mu.Lock()
	v, ok := a.verified[bearer]
	a.mu.Unlock()
	if !ok {
		t, err := parseJWS(bearer)
		if err != nil {
			return http.StatusForbidden, APNsInvalidProviderToken
		}
		a.mu.Lock()
		key, known := a.keys[t.header.Kid]
		a.mu.Unlock()
		iat, hasIat := t.num("iat")
		if !known || !hasIat || t.str("iss") != key.teamID || !t.verifyES256(key.pub) {
			return http.StatusForbidden, APNsInvalidProviderToken
		}
		v = verifiedBearer{keyID: t.header.Kid, teamID: key.teamID, iat: iat}
		a.mu.Lock()
		if len(a.verified) > 1000 {
			clear(a.verified)
		}
		a.verified[bearer] = v
		a.mu.Unlock()
	}
	m.KeyID, m.TeamID = v.keyID, v.teamID
	if v.iat < now-3600 || v.iat > now+300 {
		return http.StatusForbidden, APNsExpiredProviderToken
	}
	if r.Header.Get("apns-topic") == "" {
		return http.StatusBadRequest, APNsMissingTopic
	}
	return 0, ""
}

// checkHeaders applies APNs's header rules.
func checkHeaders(h http.Header) (status int, reason string) {
	switch h.Get("apns-push-type") {
	case "", "alert", "background", "location", "voip", "complication", "fileprovider", "mdm", "liveactivity", "pushtotalk", "widgets":
	default:
		return http.StatusBadRequest, "InvalidPushType"
	}
	switch h.Get("apns-priority") {
	case "", "1", "5", "10":
	default:
		return http.StatusBadRequest, "BadPriority"
	}
	if v := h.Get("apns-expiration"); v != "" {
		if _, err := strconv.ParseInt(v, 10, 64); err != nil {
			return http.StatusBadRequest, "BadExpirationDate"
		}
	}
	if len(h.Get("apns-collapse-id")) > 64 {
		return http.StatusBadRequest, "BadCollapseId"
	}
	if id := h.Get("apns-id"); id != "" && !isUUID(id) {
		return http.StatusBadRequest, "BadMessageId"
	}
	return 0, ""
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return false
			}
		}
	}
	return true
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (a *APNs) serve(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.URL.Path, "/3/device/")
	if !ok || token == "" || strings.Contains(token, "/") {
		writeAPNsError(w, http.StatusNotFound, "BadPath", "")
		return
	}
	if r.Method != http.MethodPost {
		writeAPNsError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "")
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	m := APNsMessage{Token: token, Header: r.Header.Clone(), Raw: raw, Received: time.Now()}
	payloadErr := json.Unmarshal(raw, &m.Payload)
	status, reason := a.authenticate(r, &m)
	if status == 0 {
		status, reason = checkHeaders(r.Header)
	}
	if status == 0 {
		switch {
		case len(raw) == 0:
			status, reason = http.StatusBadRequest, "PayloadEmpty"
		case len(raw) > 4096:
			status, reason = http.StatusRequestEntityTooLarge, APNsPayloadTooLarge
		case payloadErr != nil:
			status, reason = http.StatusBadRequest, "BadPayload" // the fake's own: APNs documents no reason for it
		}
	}

	f, failed, hang, idx := a.script.arrive(token, status == 0, func() APNsMessage { return m })
	var retryAfter string
	if failed {
		status, reason, retryAfter = f.status, f.reason, f.retryAfter
	}
	setStatus := func(status int, reason string) {
		a.script.answered(idx, func(m *APNsMessage) { m.Status, m.Reason = status, reason })
	}

	if !wait(r.Context(), a.done, hang) {
		setStatus(499, "")
		return
	}
	if status != 0 {
		setStatus(status, reason)
		writeAPNsError(w, status, reason, retryAfter)
		return
	}
	id := r.Header.Get("apns-id")
	if id == "" {
		id = newUUID()
	}
	setStatus(http.StatusOK, "")
	w.Header().Set("apns-id", id)
	w.WriteHeader(http.StatusOK)
}

func writeAPNsError(w http.ResponseWriter, status int, reason, retryAfter string) {
	body := map[string]any{"reason": reason}
	if status == http.StatusGone {
		body["timestamp"] = time.Now().UnixMilli()
	}
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("apns-id", newUUID())
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// Connections is how many connections clients opened to the fake: with
// connection reuse it stays small however many requests arrive.
func (a *APNs) Connections() int { return int(a.conns.Load()) }

func (a *APNs) connState(_ net.Conn, s http.ConnState) {
	if s == http.StateNew {
		a.conns.Add(1)
	}
}
