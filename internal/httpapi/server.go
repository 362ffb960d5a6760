package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/gorilla/websocket"
)

// MaxBody is the largest request body accepted.
const MaxBody = 64 << 10

// Watcher serves the browser's watch sockets (realtime.Hub).
type Watcher interface {
	Upgrader(checkOrigin func(*http.Request) bool) *websocket.Upgrader
	Serve(conn *websocket.Conn, object string)
}

// Options configure the HTTP surface.
type Options struct {
	AllowedOrigins []string
	TrustedProxies []netip.Prefix
	JWKS           []byte
	Ready          func(ctx context.Context) error // nil error when dependencies answer
	// Observe sees every request: its route pattern, status and duration.
	Observe func(route string, status int, d time.Duration)
	// Metrics serves GET /metrics (nil: no route).
	Metrics http.Handler
}

// Server holds what the handlers need.
type Server struct {
	svc      *approval.Service
	watch    Watcher
	opts     Options
	log      *slog.Logger
	origins  map[string]bool
	upgrader *websocket.Upgrader
	extra    []func(*http.ServeMux)
}

// New builds the HTTP surface.
func New(svc *approval.Service, watch Watcher, opts Options, log *slog.Logger) *Server {
	s := &Server{svc: svc, watch: watch, opts: opts, log: log, origins: map[string]bool{}}
	for _, o := range opts.AllowedOrigins {
		s.origins[strings.ToLower(o)] = true
	}
	s.upgrader = watch.Upgrader(s.originAllowed)
	s.upgrader.Error = upgradeError
	return s
}

// upgradeError answers a handshake the websocket upgrader refuses with a
// problem, like every other error (gorilla's default is text/plain).
func upgradeError(w http.ResponseWriter, r *http.Request, status int, reason error) {
	code := approval.CodeInvalidRequest
	switch status {
	case http.StatusForbidden:
		code = approval.CodeForbidden
	case http.StatusMethodNotAllowed:
		code = codeMethodNotAllowed
	case http.StatusInternalServerError:
		writeProblem(w, &approval.Error{Code: codeInternal, Detail: "an internal error occurred"})
		return
	}
	writeProblem(w, approval.Errorf(code, "the WebSocket handshake was refused: %v", reason))
}

// Handler returns the routes wrapped in the common middleware.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	rp := s.rpAuth
	dev := s.deviceAuth
	mux.Handle("POST /v1/enrollments", rp(s.createEnrollment))
	mux.Handle("GET /v1/enrollments/{id}", rp(s.getEnrollment))
	mux.HandleFunc("POST /v1/devices", s.linkDevice)
	mux.Handle("GET /v1/users/{user_id}/devices", rp(s.listDevices))
	mux.Handle("DELETE /v1/users/{user_id}/devices/{device_id}", rp(s.removeDevice))
	mux.Handle("PUT /v1/device/push", dev(s.setPush))
	mux.Handle("DELETE /v1/device", dev(s.unlinkSelf))
	mux.Handle("GET /v1/device/challenges", dev(s.deviceChallenges))
	mux.HandleFunc("POST /v1/device/challenges/{id}/decision", s.decide)
	mux.Handle("POST /v1/challenges", rp(s.createChallenge))
	mux.Handle("GET /v1/challenges/{id}", rp(s.getChallenge))
	mux.Handle("POST /v1/challenges/{id}/cancel", rp(s.cancelChallenge))
	mux.Handle("GET /v1/watch", s.cors(http.HandlerFunc(s.watchSocket)))
	mux.Handle("GET /v1/watch/state", s.cors(http.HandlerFunc(s.watchState)))
	mux.Handle("OPTIONS /v1/watch", s.cors(nil))
	mux.Handle("OPTIONS /v1/watch/state", s.cors(nil))
	mux.Handle("OPTIONS /v1/challenges/{id}/email", s.cors(nil))
	mux.Handle("POST /v1/challenges/{id}/email", s.cors(http.HandlerFunc(s.requestEmail)))
	mux.HandleFunc("GET /.well-known/jwks.json", s.jwks)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.opts.Metrics != nil {
		mux.Handle("GET /metrics", s.opts.Metrics)
	}
	for _, extra := range s.extra {
		extra(mux)
	}
	return s.recoverer(s.logRequests(unmatched(mux)))
}

// Register adds routes of another package (pages) to the same mux; call
// before Handler.
func (s *Server) Register(f func(*http.ServeMux)) { s.extra = append(s.extra, f) }

// unmatched answers requests no route takes with problem+json: 405 (with
// Allow) when the path exists for other methods, else 404.
func unmatched(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &statusOnly{header: http.Header{}}
		h.ServeHTTP(rec, r)
		switch rec.status {
		case http.StatusMethodNotAllowed:
			w.Header().Set("Allow", rec.header.Get("Allow"))
			writeProblem(w, approval.Errorf(codeMethodNotAllowed, "%s is not allowed here", r.Method))
		case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
			h.ServeHTTP(w, r)
		default:
			writeProblem(w, approval.Errorf(approval.CodeNotFound, "no such route"))
		}
	})
}

// statusOnly records a status and headers and discards the body.
type statusOnly struct {
	header http.Header
	status int
}

func (s *statusOnly) Header() http.Header         { return s.header }
func (s *statusOnly) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusOnly) WriteHeader(code int)        { s.status = code }

// recoverer answers a panic with a 500 problem, never a stack trace to the
// client (the stack goes to the log).
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic", "route", r.Pattern, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				writeProblem(w, &approval.Error{Code: codeInternal, Detail: "an internal error occurred"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Hijack hands the connection to the websocket upgrader.
func (s *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := s.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the response writer cannot hijack")
	}
	s.status = http.StatusSwitchingProtocols
	return h.Hijack()
}

// Unwrap lets http.ResponseController and the websocket upgrader reach
// the underlying writer (Hijack, Flush).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logRequests writes one line per request: method, route pattern (never
// the path's tokens nor the query), status, duration.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		d := time.Since(start)
		s.log.Info("request", "method", r.Method, "route", route, "status", rec.status, "duration", d)
		if s.opts.Observe != nil {
			s.opts.Observe(route, rec.status, d)
		}
	})
}

// ClientIP is the request's client address, as the limits and the audit
// log see it (see clientIP).
func (s *Server) ClientIP(r *http.Request) string { return s.clientIP(r) }

// clientIP is the connection's address, or, when that is a trusted proxy,
// the rightmost X-Forwarded-For entry that is not a trusted proxy.
func (s *Server) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	addr = addr.Unmap()
	if !s.trusted(addr) {
		return addr.String()
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return addr.String() // a garbled hop: trust nothing to its left
		}
		a = a.Unmap()
		if !s.trusted(a) {
			return a.String()
		}
		addr = a
	}
	return addr.String()
}

func (s *Server) trusted(a netip.Addr) bool {
	for _, p := range s.opts.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// decode reads a JSON body into v: application/json only (415), at most
// MaxBody (413), no unknown members and nothing after the value (400).
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return approval.Errorf(approval.CodeUnsupportedType, "the body must be application/json")
	}
	if r.ContentLength > MaxBody {
		return approval.Errorf(approval.CodeTooLarge, "the body is larger than %d bytes", MaxBody)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return approval.Errorf(approval.CodeTooLarge, "the body is larger than %d bytes", MaxBody)
		}
		return approval.Errorf(approval.CodeInvalidRequest, "the body could not be read")
	}
	var me memberError
	if err := checkMembers(body, reflect.TypeOf(v).Elem()); errors.As(err, &me) {
		return approval.Errorf(approval.CodeInvalidRequest, "the body is not valid: %v", err)
	} // other errors are malformed JSON, which the decoder below reports
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return approval.Errorf(approval.CodeInvalidRequest, "the body is not valid: %s", jsonProblem(err))
	}
	if dec.More() {
		return approval.Errorf(approval.CodeInvalidRequest, "the body has data after the JSON value")
	}
	return nil
}

// jsonProblem describes a decoding error without echoing the input.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return "empty body"
	case errors.As(err, &se):
		return "malformed JSON at byte " + strconv.FormatInt(se.Offset, 10)
	case errors.As(err, &te):
		return "member " + strconv.Quote(te.Field) + " has the wrong type"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown member " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	}
	return "malformed JSON"
}

// bearer returns the Authorization: Bearer credential.
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// apiKeyActor authenticates the request's API key.
func (s *Server) apiKeyActor(r *http.Request) (approval.Actor, error) {
	tok := bearer(r)
	if tok == "" || len(tok) > 256 {
		return approval.Actor{}, approval.Errorf(approval.CodeUnauthorized, "an API key is required (Authorization: Bearer)")
	}
	k, err := s.svc.Store().APIKeyByHash(r.Context(), auth.HashSecret(tok))
	if errors.Is(err, approval.ErrNotFound) || (err == nil && k.RevokedAt != nil) {
		return approval.Actor{}, approval.Errorf(approval.CodeUnauthorized, "the API key is not valid")
	}
	if err != nil {
		return approval.Actor{}, err
	}
	return approval.Actor{Type: approval.ActorAPIKey, Name: k.Name, KeyID: k.ID, IP: s.clientIP(r)}, nil
}

// rpAuth requires a live API key.
func (s *Server) rpAuth(h func(http.ResponseWriter, *http.Request, approval.Actor)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, err := s.apiKeyActor(r)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		h(w, r, a)
	})
}

// deviceAuth requires a valid device assertion.
func (s *Server) deviceAuth(h func(http.ResponseWriter, *http.Request, *approval.Device)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, err := s.svc.AuthenticateDevice(r.Context(), bearer(r))
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		h(w, r, d)
	})
}

// originAllowed: no Origin (not a browser) is allowed; otherwise an exact
// match of scheme, host and port against the allow-list.
func (s *Server) originAllowed(r *http.Request) bool {
	o := r.Header.Get("Origin")
	return o == "" || s.origins[strings.ToLower(o)]
}

// cors answers CORS for the browser routes, preflight included (next nil
// for OPTIONS routes).
func (s *Server) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o := r.Header.Get("Origin")
		if o != "" && s.origins[strings.ToLower(o)] {
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", o)
			h.Add("Vary", "Origin")
			if r.Method == http.MethodOptions {
				h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
				h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
				h.Set("Access-Control-Max-Age", "600")
			}
		}
		if next == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}
