package app

import (
	"context"
	"encoding/json"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/mail"
)

// mailer adapts internal/mail to approval.Mailer: it renders the two
// mails and sends them, marking permanent failures as not worth a retry.
type mailer struct {
	sender mail.Sender
	brand  string
	title  func(action string) string
}

type mailError struct{ err error }

func (e mailError) Error() string   { return e.err.Error() }
func (e mailError) Unwrap() error   { return e.err }
func (e mailError) Temporary() bool { return mail.IsTemporary(e.err) }

func (m *mailer) send(ctx context.Context, msg mail.Message, err error) error {
	if err != nil {
		return err // a rendering error: permanent (no Temporary method)
	}
	if err := m.sender.Send(ctx, msg); err != nil {
		return mailError{err}
	}
	return nil
}

func (m *mailer) ChallengeLink(ctx context.Context, c *approval.Challenge, to, link string) error {
	msg, err := mail.RenderChallenge(mail.ChallengeMail{Brand: m.brand, To: to, Action: c.Action,
		ActionText: m.title(c.Action), Context: contextKV(c.Context), RequestedAt: c.CreatedAt,
		IP: c.RequesterIP, Link: link, ExpiresAt: c.ExpiresAt})
	return m.send(ctx, msg, err)
}

func (m *mailer) DeviceLinked(ctx context.Context, d *approval.Device, to, link string, expires time.Time) error {
	msg, err := mail.RenderDeviceNotice(mail.DeviceNotice{Brand: m.brand, To: to, DeviceName: d.Name,
		LinkedAt: d.CreatedAt, IP: d.LinkIP, Link: link, ExpiresAt: expires})
	return m.send(ctx, msg, err)
}

// contextKV lists a context's members in the order the RP gave them.
func contextKV(raw json.RawMessage) []mail.KV {
	var out []mail.KV
	for _, m := range approval.ContextMembers(raw) {
		out = append(out, mail.KV{Name: m.Name, Value: m.Value})
	}
	return out
}
