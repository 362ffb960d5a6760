package approval

import (
	"fmt"
	"time"
)

// Error codes of the protocol. Each maps to one HTTP status in httpapi.
const (
	CodeInvalidRequest  = "invalid_request"
	CodeInvalidCode     = "invalid_code"
	CodeUnauthorized    = "unauthorized"
	CodeForbidden       = "forbidden"
	CodeStepUpRequired  = "step_up_required"
	CodeNotFound        = "not_found"
	CodeNotPending      = "not_pending"
	CodeNoDevice        = "no_device"
	CodeExpired         = "expired"
	CodeNumberMismatch  = "number_mismatch"
	CodeRateLimited     = "rate_limited"
	CodeUserLocked      = "user_locked"
	CodeUnavailable     = "unavailable"
	CodeTooLarge        = "payload_too_large"
	CodeUnsupportedType = "unsupported_media_type"
)

// Error is a refusal a client can act on: a stable code, a human detail,
// and for some codes the current status or when to retry.
type Error struct {
	Code          string
	Detail        string
	CurrentStatus string        // with not_pending
	RetryAfter    time.Duration // with rate_limited and user_locked
}

func (e *Error) Error() string { return e.Code + ": " + e.Detail }

// Errorf makes an *Error with a formatted detail.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Detail: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) *Error { return Errorf(CodeInvalidRequest, format, args...) }

func notPending(status string) *Error {
	return &Error{Code: CodeNotPending, Detail: "the challenge is already " + status, CurrentStatus: status}
}

func rateLimited(detail string, after time.Duration) *Error {
	return &Error{Code: CodeRateLimited, Detail: detail, RetryAfter: roundUp(after)}
}

func roundUp(d time.Duration) time.Duration {
	if d < time.Second {
		return time.Second
	}
	return (d + time.Second - 1).Truncate(time.Second)
}
