package pushtest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
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

// FCM error codes (google.firebase.fcm.v1.FcmError), as the HTTP v1 API sends
// them in an error's details.
const (
	FCMUnregistered        = "UNREGISTERED"
	FCMSenderIDMismatch    = "SENDER_ID_MISMATCH"
	FCMQuotaExceeded       = "QUOTA_EXCEEDED"
	FCMUnavailable         = "UNAVAILABLE"
	FCMInternal            = "INTERNAL"
	FCMInvalidArgument     = "INVALID_ARGUMENT"
	FCMThirdPartyAuthError = "THIRD_PARTY_AUTH_ERROR"
)

// FCMErrorStatus is the HTTP status FCM answers with for an FCM error code
// (500 for a code it does not know).
func FCMErrorStatus(code string) int {
	switch code {
	case FCMUnregistered:
		return http.StatusNotFound
	case FCMSenderIDMismatch:
		return http.StatusForbidden
	case FCMQuotaExceeded:
		return http.StatusTooManyRequests
	case FCMUnavailable:
		return http.StatusServiceUnavailable
	case FCMInvalidArgument:
		return http.StatusBadRequest
	case FCMThirdPartyAuthError:
		return http.StatusUnauthorized
	}
	return http.StatusInternalServerError
}

// googleStatus is the canonical google.rpc status name for an HTTP status.
func googleStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "INVALID_ARGUMENT"
	case http.StatusUnauthorized:
		return "UNAUTHENTICATED"
	case http.StatusForbidden:
		return "PERMISSION_DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusConflict:
		return "ABORTED"
	case http.StatusTooManyRequests:
		return "RESOURCE_EXHAUSTED"
	case http.StatusInternalServerError:
		return "INTERNAL"
	case http.StatusNotImplemented:
		return "UNIMPLEMENTED"
	case http.StatusServiceUnavailable:
		return "UNAVAILABLE"
	case http.StatusGatewayTimeout:
		return "DEADLINE_EXCEEDED"
	}
	return "UNKNOWN"
}

// FCMMessage is one messages:send request the fake FCM received.
type FCMMessage struct {
	// Project is the project id in the request path.
	Project string
	// Token is the message's registration token.
	Token string
	// Data is the message's data block.
	Data map[string]string
	// Message is the whole "message" object as decoded JSON.
	Message map[string]any
	// Raw is the "message" object as sent.
	Raw json.RawMessage
	// ValidateOnly is the request's validate_only flag.
	ValidateOnly bool
	// Header holds the request's headers (Authorization included).
	Header http.Header
	// Bearer is the OAuth access token presented, "" without one.
	Bearer string
	// Authenticated says Bearer was issued by this fake's token endpoint.
	Authenticated bool
	// Status is the HTTP status the fake answered (0 while it has not yet:
	// a hanging request; 499 when the client went away first).
	Status int
	// ErrorCode is the FCM error code answered, if any.
	ErrorCode string
	// Received is when the request arrived.
	Received time.Time
}

type fcmFailure struct {
	status     int
	code       string
	retryAfter string
}

// FCM is a fake Firebase Cloud Messaging HTTP v1 server. It serves
// POST /v1/projects/{project}/messages:send and an OAuth 2.0 token endpoint
// (POST /token) for service-account credentials whose token_uri points at
// it. Its methods are safe for concurrent use.
type FCM struct {
	srv  *http.Server
	ln   net.Listener
	url  string
	done chan struct{}

	conns atomic.Int64

	script *script[fcmFailure, FCMMessage]

	mu            sync.Mutex
	requireAuth   bool
	accounts      map[string]*rsa.PublicKey // client_email -> key
	accessTokens  map[string]string         // access token -> client_email
	tokenRequests int
	seq           uint64
}

// NewFCM starts a fake FCM over plain HTTP (HTTP/1.1, and HTTP/2 with prior
// knowledge) on 127.0.0.1 and a free port. It panics if it cannot listen,
// as httptest.NewServer does. Close it when done.
func NewFCM() *FCM {
	f, err := newFCM(false)
	if err != nil {
		panic("pushtest: " + err.Error())
	}
	return f
}

// NewFCMTLS starts a fake FCM over HTTPS (HTTP/2 and HTTP/1.1) with a
// certificate from the fakes' authority (see WriteCA).
func NewFCMTLS() (*FCM, error) {
	return newFCM(true)
}

func newFCM(useTLS bool) (*FCM, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &FCM{
		ln:           ln,
		done:         make(chan struct{}),
		script:       newScript[fcmFailure, FCMMessage](),
		accounts:     make(map[string]*rsa.PublicKey),
		accessTokens: make(map[string]string),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", f.serveToken)
	mux.HandleFunc("/", f.serveSend)
	f.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ConnState: f.connState}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	if useTLS {
		ca, err := sharedCA()
		if err != nil {
			ln.Close()
			return nil, err
		}
		cert, err := ca.serverCertificate()
		if err != nil {
			ln.Close()
			return nil, err
		}
		protocols.SetHTTP2(true)
		f.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		f.url = "https://" + ln.Addr().String()
		f.srv.Protocols = &protocols
		go func() { _ = f.srv.ServeTLS(ln, "", "") }()
	} else {
		protocols.SetUnencryptedHTTP2(true)
		f.url = "http://" + ln.Addr().String()
		f.srv.Protocols = &protocols
		go func() { _ = f.srv.Serve(ln) }()
	}
	return f, nil
}

// URL is the server's base URL, e.g. "http://127.0.0.1:41234".
func (f *FCM) URL() string { return f.url }

// Endpoint is the FCM endpoint to configure (APPROVALD_FCM_ENDPOINT,
// option.WithEndpoint): URL() + "/v1".
func (f *FCM) Endpoint() string { return f.url + "/v1" }

// TokenURL is the fake's OAuth 2.0 token endpoint: URL() + "/token".
func (f *FCM) TokenURL() string { return f.url + "/token" }

// Close stops the server and releases hanging requests.
func (f *FCM) Close() {
	select {
	case <-f.done:
		return
	default:
	}
	close(f.done)
	_ = f.srv.Close()
}

// FailNext makes the next n messages:send requests fail with HTTP status
// and FCM error code (status 0: the status FCM uses for code; code "": a
// plain Google API error without FCM details). retryAfter, when not "", is
// sent as the Retry-After header. Calls queue up.
func (f *FCM) FailNext(n, status int, code, retryAfter string) {
	if status == 0 {
		status = FCMErrorStatus(code)
	}
	f.script.queueFailure(n, fcmFailure{status, code, retryAfter})
}

// FailToken makes every request for token fail with status and code (status
// 0: the status FCM uses for code) until FailToken(token, -1, "") clears it.
func (f *FCM) FailToken(token string, status int, code string) {
	if status < 0 {
		f.script.clearTokenFailure(token)
		return
	}
	if status == 0 {
		status = FCMErrorStatus(code)
	}
	f.script.setTokenFailure(token, fcmFailure{status: status, code: code})
}

// Hang delays every following answer by d (until the client gives up or the
// fake closes); 0 turns it off.
func (f *FCM) Hang(d time.Duration) { f.script.setHang(d) }

// RequireAuth makes messages:send answer 401 UNAUTHENTICATED unless the
// request carries a bearer token issued by the fake's token endpoint.
func (f *FCM) RequireAuth(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requireAuth = on
}

// SetRecording turns keeping each request's details on (the default) or off
// (only Count goes on), e.g. for benchmarks.
func (f *FCM) SetRecording(on bool) { f.script.setRecording(on) }

// Reset forgets the recorded requests and every scripted failure and hang.
func (f *FCM) Reset() { f.script.reset() }

// Messages returns a copy of the messages:send requests received so far.
func (f *FCM) Messages() []FCMMessage { return f.script.messages() }

// Count is how many messages:send requests arrived (recorded or not).
func (f *FCM) Count() int { return f.script.Count() }

// TokenRequests is how many access tokens the token endpoint issued.
func (f *FCM) TokenRequests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tokenRequests
}

// WaitFor waits until at least n messages:send requests have arrived,
// whatever was answered, or timeout passes. It reports whether they did.
func (f *FCM) WaitFor(n int, timeout time.Duration) bool { return f.script.WaitFor(n, timeout) }

// WriteServiceAccount writes a service-account credentials file for
// projectID to dir, with a fresh RSA key and token_uri pointing at this fake,
// whose token endpoint then accepts the key's assertions. It returns the path.
func (f *FCM) WriteServiceAccount(dir, projectID string) (string, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", err
	}
	pk8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	email := "approvald-push@" + projectID + ".iam.gserviceaccount.com"
	sa := map[string]string{
		"type":                        "service_account",
		"project_id":                  projectID,
		"private_key_id":              strings.ToLower(randomString(40)),
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8})),
		"client_email":                email,
		"client_id":                   "1" + strconv.FormatInt(time.Now().UnixNano(), 10),
		"auth_uri":                    f.url + "/auth",
		"token_uri":                   f.TokenURL(),
		"auth_provider_x509_cert_url": f.url + "/certs",
		"client_x509_cert_url":        f.url + "/certs/" + email,
		"universe_domain":             "googleapis.com",
	}
	b, err := json.MarshalIndent(sa, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "service-account-"+projectID+".json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", err
	}
	f.mu.Lock()
	f.accounts[email] = &key.PublicKey
	f.mu.Unlock()
	return path, nil
}

func (f *FCM) serveToken(w http.ResponseWriter, r *http.Request) {
	oauthErr := func(desc string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant", "error_description": desc})
	}
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if err := r.ParseForm(); err != nil {
		oauthErr("bad form")
		return
	}
	if r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		oauthErr("unsupported grant_type")
		return
	}
	t, err := parseJWS(r.PostForm.Get("assertion"))
	if err != nil {
		oauthErr("malformed assertion")
		return
	}
	email := t.str("iss")
	f.mu.Lock()
	pub := f.accounts[email]
	f.mu.Unlock()
	if pub == nil || !t.verifyRS256(pub) {
		oauthErr("Invalid JWT Signature.")
		return
	}
	now := time.Now().Unix()
	iat, ok1 := t.num("iat")
	exp, ok2 := t.num("exp")
	if !ok1 || !ok2 || iat > now+60 || exp < now || exp-iat > 3600 {
		oauthErr("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.")
		return
	}
	if t.str("aud") != f.TokenURL() || t.str("scope") == "" {
		oauthErr("Invalid JWT audience or scope.")
		return
	}
	access := "ya29.pushtest-" + randomString(32)
	f.mu.Lock()
	f.accessTokens[access] = email
	f.tokenRequests++
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": access, "expires_in": 3599, "token_type": "Bearer"})
}

func (f *FCM) serveSend(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/projects/")
	project, ok2 := strings.CutSuffix(rest, "/messages:send")
	if !ok || !ok2 || project == "" || strings.Contains(project, "/") {
		writeGoogleError(w, http.StatusNotFound, "", "Requested entity was not found.", "")
		return
	}
	if r.Method != http.MethodPost {
		writeGoogleError(w, http.StatusMethodNotAllowed, "", "Method not allowed.", "")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	var req struct {
		ValidateOnly bool            `json:"validate_only"`
		Message      json.RawMessage `json:"message"`
	}
	var m struct {
		Token string            `json:"token"`
		Data  map[string]string `json:"data"`
	}
	var whole map[string]any
	decodeErr := json.Unmarshal(body, &req)
	if decodeErr == nil {
		decodeErr = json.Unmarshal(req.Message, &m)
	}
	if decodeErr == nil {
		decodeErr = json.Unmarshal(req.Message, &whole)
	}
	bearer, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")

	f.mu.Lock()
	f.seq++
	seq := f.seq
	_, authenticated := f.accessTokens[bearer]
	requireAuth := f.requireAuth
	f.mu.Unlock()
	failure, failed, hang, idx := f.script.arrive(m.Token, true, func() FCMMessage {
		return FCMMessage{
			Project: project, Token: m.Token, Data: m.Data, Message: whole, Raw: req.Message,
			ValidateOnly: req.ValidateOnly, Header: r.Header.Clone(), Bearer: bearer,
			Authenticated: authenticated, Received: time.Now(),
		}
	})
	setStatus := func(status int, code string) {
		f.script.answered(idx, func(m *FCMMessage) { m.Status, m.ErrorCode = status, code })
	}

	if !wait(r.Context(), f.done, hang) {
		setStatus(499, "")
		return
	}
	switch {
	case requireAuth && !authenticated:
		setStatus(http.StatusUnauthorized, "")
		writeGoogleError(w, http.StatusUnauthorized, "",
			"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "")
	case decodeErr != nil:
		setStatus(http.StatusBadRequest, FCMInvalidArgument)
		writeGoogleError(w, http.StatusBadRequest, FCMInvalidArgument, "Invalid JSON payload received. "+decodeErr.Error(), "")
	case m.Token == "":
		setStatus(http.StatusBadRequest, FCMInvalidArgument)
		writeGoogleError(w, http.StatusBadRequest, FCMInvalidArgument, "Recipient of the message is not set.", "")
	case failed:
		setStatus(failure.status, failure.code)
		writeGoogleError(w, failure.status, failure.code, "pushtest: scripted failure "+failure.code, failure.retryAfter)
	default:
		setStatus(http.StatusOK, "")
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		fmt.Fprintf(w, "{\n  \"name\": \"projects/%s/messages/0:%d%%pushtest\"\n}\n", project, seq)
	}
}

// writeGoogleError writes a Google API error in the shape FCM uses:
// {"error":{"code","message","status","details":[FcmError]}}.
func writeGoogleError(w http.ResponseWriter, status int, fcmCode, message, retryAfter string) {
	type detail struct {
		Type      string `json:"@type"`
		ErrorCode string `json:"errorCode"`
	}
	var body struct {
		Error struct {
			Code    int      `json:"code"`
			Message string   `json:"message"`
			Status  string   `json:"status"`
			Details []detail `json:"details,omitempty"`
		} `json:"error"`
	}
	body.Error.Code = status
	body.Error.Message = message
	body.Error.Status = googleStatus(status)
	if fcmCode != "" {
		body.Error.Details = []detail{{Type: "type.googleapis.com/google.firebase.fcm.v1.FcmError", ErrorCode: fcmCode}}
	}
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// Connections is how many connections clients opened to the fake: with
// connection reuse it stays small however many requests arrive.
func (f *FCM) Connections() int { return int(f.conns.Load()) }

func (f *FCM) connState(_ net.Conn, s http.ConnState) {
	if s == http.StateNew {
		f.conns.Add(1)
	}
}
