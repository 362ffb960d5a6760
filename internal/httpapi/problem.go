// Package httpapi is approvald's HTTP surface: the RP, device and browser
// routes of the protocol. Handlers are thin: decode, call the Service,
// encode. Every error leaves through writeError as problem+json.
package httpapi

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/clicktopurchase/approvald/internal/approval"
)

// statusOf maps the protocol's error codes to HTTP statuses.
var statusOf = map[string]int{
	approval.CodeInvalidRequest:  http.StatusBadRequest,
	approval.CodeInvalidCode:     http.StatusBadRequest,
	approval.CodeUnauthorized:    http.StatusUnauthorized,
	approval.CodeForbidden:       http.StatusForbidden,
	approval.CodeStepUpRequired:  http.StatusForbidden,
	approval.CodeNotFound:        http.StatusNotFound,
	approval.CodeNotPending:      http.StatusConflict,
	approval.CodeNoDevice:        http.StatusConflict,
	approval.CodeExpired:         http.StatusGone,
	approval.CodeTooLarge:        http.StatusRequestEntityTooLarge,
	approval.CodeUnsupportedType: http.StatusUnsupportedMediaType,
	approval.CodeNumberMismatch:  http.StatusUnprocessableEntity,
	approval.CodeRateLimited:     http.StatusTooManyRequests,
	approval.CodeUserLocked:      http.StatusTooManyRequests,
	approval.CodeUnavailable:     http.StatusServiceUnavailable,
	codeMethodNotAllowed:         http.StatusMethodNotAllowed,
	codeInternal:                 http.StatusInternalServerError,
}

const (
	codeMethodNotAllowed = "method_not_allowed"
	codeInternal         = "internal"
)

// Problem is an RFC 9457 problem details body.
type Problem struct {
	Type          string `json:"type"`
	Title         string `json:"title"`
	Status        int    `json:"status"`
	Detail        string `json:"detail,omitempty"`
	Code          string `json:"code"`
	CurrentStatus string `json:"current_status,omitempty"`
}

func writeProblem(w http.ResponseWriter, e *approval.Error) {
	status, ok := statusOf[e.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(e.RetryAfter.Seconds())))
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{
		Type: "https://approvald.dev/problems/" + e.Code, Title: http.StatusText(status), Status: status,
		Detail: e.Detail, Code: e.Code, CurrentStatus: e.CurrentStatus,
	})
}

// writeError answers err: an *approval.Error as itself, anything else as
// an opaque 500 (logged, never shown).
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var e *approval.Error
	if errors.As(err, &e) {
		writeProblem(w, e)
		return
	}
	log.Error("request failed", "method", r.Method, "route", r.Pattern, "err", err)
	writeProblem(w, &approval.Error{Code: codeInternal, Detail: "an internal error occurred"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
