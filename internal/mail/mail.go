// Package mail sends approvald's emails: the challenge link ("Send code via
// email") and the new-device notice.
//
// Two senders implement [Sender]: [SMTP], configured from
// APPROVALD_SMTP_URL and APPROVALD_MAIL_FROM, and [Dev], used when no SMTP
// server is configured, which logs one line per mail and keeps the last mails
// in memory for the demo mailbox. [RenderChallenge] and [RenderDeviceNotice]
// build the messages from embedded templates.
package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"net/textproto"

	gomail "github.com/wneessen/go-mail"
)

// Kinds of mail, carried in [Message.Kind] for metrics and the demo mailbox.
const (
	KindChallenge    = "challenge"
	KindDeviceLinked = "device_linked"
)

// Message is one rendered mail, ready to send.
type Message struct {
	// To is the recipient's address, optionally with a display name.
	To string
	// Subject is the subject line, plain UTF-8; senders encode it.
	Subject string
	// Text is the text/plain part.
	Text string
	// HTML is the text/html part.
	HTML string
	// Kind is KindChallenge or KindDeviceLinked, for metrics and the demo.
	Kind string
}

// Sender delivers a Message. Send honours ctx's deadline and cancellation.
type Sender interface {
	Send(ctx context.Context, m Message) error
}

// IsTemporary reports whether err, returned by a Sender, is a temporary
// failure worth retrying: a 4xx answer from the SMTP server, a network failure
// or a timeout. A 5xx answer (a refused recipient or message, failed
// authentication), an invalid message, a certificate that does not verify
// and a server offering no authentication mechanism usable on the connection
// are permanent.
func IsTemporary(err error) bool {
	if err == nil {
		return false
	}
	var pe *permanentError
	if errors.As(err, &pe) {
		return false
	}
	var se *gomail.SendError
	if errors.As(err, &se) {
		return se.IsTemp()
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code/100 == 4
	}
	var ce *tls.CertificateVerificationError
	if errors.As(err, &ce) || errors.Is(err, gomail.ErrNoSupportedAuthDiscovered) {
		return false
	}
	// Dial failures, timeouts and dropped connections.
	return true
}

// permanentError marks an error that no retry can fix (a bad message).
type permanentError struct{ msg string }

func (e *permanentError) Error() string { return e.msg }

var (
	_ Sender = (*SMTP)(nil)
	_ Sender = (*Dev)(nil)
)
