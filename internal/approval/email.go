package approval

import (
	"context"
	"crypto/subtle"
	"errors"
	"time"

	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/clicktopurchase/approvald/push"
)

// Mailer sends the mails approvald writes (app adapts internal/mail). An
// error whose Temporary() is false is not retried.
type Mailer interface {
	ChallengeLink(ctx context.Context, c *Challenge, to, link string) error
	DeviceLinked(ctx context.Context, d *Device, to, link string, linkExpires time.Time) error
}

// Email limits.
const (
	MaxEmailsPerChallenge = 3
	EmailExtension        = 10 * time.Minute   // an email request keeps the challenge alive this long
	DeviceLinkLife        = 7 * 24 * time.Hour // "This wasn't me" on a new-device notice
	mailAttempts          = 3                  // sending tries before delivery.email is failed
	mailRetryBase         = 2 * time.Second    // then 4 s
	mailTimeout           = 30 * time.Second   // one sending attempt
)

// EmailSent is the answer to an email request.
type EmailSent struct {
	To        string // the address (httpapi masks it)
	ExpiresAt time.Time
}

func (s *Service) linkURL(token string) string { return s.rules.PublicURL + "/e/" + token }

// RequestEmail mails the challenge's link to the user_email given at
// creation (never an address the caller chooses), keeping the challenge
// alive at least EmailExtension longer. Sending happens in the
// background; watchers see delivery.email become sent or failed.
func (s *Service) RequestEmail(ctx context.Context, a Actor, id string) (*EmailSent, error) {
	c, err := s.getChallenge(ctx, id)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	if err := s.checkLock(ctx, c.UserID, now); err != nil {
		return nil, err
	}
	if !c.HasMethod(MethodEmail) {
		return nil, Errorf(CodeForbidden, "email is not among this challenge's methods")
	}
	if c.UserEmail == "" {
		return nil, invalid("the challenge was created without a user_email")
	}
	if c.Final() {
		return nil, notPending(c.Status)
	}
	if c.EmailsSent >= MaxEmailsPerChallenge {
		return nil, rateLimited("at most 3 emails per challenge", c.ExpiresAt.Sub(now))
	}
	if s.mailer == nil {
		return nil, Errorf(CodeUnavailable, "email is not configured")
	}
	token := auth.NewSecret("")
	link := EmailLink{Hash: auth.HashSecret(token), Kind: LinkChallenge, CreatedAt: now}
	done, err := s.store.RequestEmail(ctx, id, link, now.Add(EmailExtension), MaxEmailsPerChallenge,
		a.audit("challenge.email_requested", "challenge", id, c.UserID, now))
	if isLost(err) {
		cur, gerr := s.getChallenge(ctx, id)
		if gerr != nil {
			return nil, gerr
		}
		if cur.Final() {
			return nil, notPending(cur.Status)
		}
		return nil, rateLimited("at most 3 emails per challenge", cur.ExpiresAt.Sub(s.clock()))
	}
	if err != nil {
		return nil, internal("request email", err)
	}
	s.publishChallenge(ctx, done)
	s.goBackground(func(bg context.Context) {
		state := DeliverySent
		if err := s.sendMail(bg, func(ctx context.Context) error {
			return s.mailer.ChallengeLink(ctx, done, done.UserEmail, s.linkURL(token))
		}); err != nil {
			s.log.Warn("challenge email failed", "challenge", id, "err", err)
			state = DeliveryFailed
		}
		s.metrics.Email(LinkChallenge, state)
		upd, err := s.store.SetDelivery(context.WithoutCancel(bg), id, "", -1, state)
		if err != nil {
			s.log.Error("record email delivery", "challenge", id, "err", err)
			return
		}
		if !upd.Final() {
			s.publishChallenge(context.WithoutCancel(bg), upd)
		}
	})
	return &EmailSent{To: done.UserEmail, ExpiresAt: done.ExpiresAt}, nil
}

// sendMail tries send a few times, backing off, unless it fails for good.
func (s *Service) sendMail(ctx context.Context, send func(ctx context.Context) error) error {
	var err error
	for attempt := 1; attempt <= mailAttempts; attempt++ {
		actx, cancel := context.WithTimeout(ctx, mailTimeout)
		err = send(actx)
		cancel()
		if err == nil {
			return nil
		}
		var t interface{ Temporary() bool }
		if errors.As(err, &t) && !t.Temporary() {
			return err
		}
		if attempt < mailAttempts {
			select {
			case <-ctx.Done():
				return err
			case <-time.After(mailRetryBase << (attempt - 1)):
			}
		}
	}
	return err
}

// Link page states.
const (
	PageAsk         = "ask"          // show what is asked, with the buttons
	PageApproved    = "approved"     // the challenge is approved
	PageDenied      = "denied"       // reported: denied, user locked
	PageWrongNumber = "wrong_number" // try again
	PageTooMany     = "too_many"     // the last wrong number denied it
	PageUsed        = "used"         // this link was used
	PageExpired     = "expired"      // the challenge ended or the link expired
	PageUnknown     = "unknown"      // no such link
	PageRemoved     = "removed"      // the new device was unlinked
)

// LinkPage is what an email link's page shows.
type LinkPage struct {
	State     string
	Kind      string // LinkChallenge or LinkDevice
	Challenge *Challenge
	Device    *Device
	Status    string // the challenge's final status, when it ended
	Left      int    // number attempts left, with PageWrongNumber
}

// OpenLink reads what a link is for; it never changes anything (mail
// scanners follow links).
func (s *Service) OpenLink(ctx context.Context, token string) (*LinkPage, error) {
	l, err := s.findLink(ctx, token)
	if err != nil || l == nil {
		return &LinkPage{State: PageUnknown}, err
	}
	now := s.clock()
	p := &LinkPage{Kind: l.Kind}
	switch l.Kind {
	case LinkChallenge:
		c, err := s.store.GetChallenge(ctx, l.ChallengeID)
		if err != nil {
			return nil, internal("link challenge", err)
		}
		p.Challenge = c
		switch st := effectiveStatus(c, now); {
		case l.UsedAt != nil:
			p.State = PageUsed
		case st != StatusPending:
			p.State, p.Status = PageExpired, st
		default:
			p.State = PageAsk
		}
	case LinkDevice:
		d, err := s.store.GetDevice(ctx, l.DeviceID)
		if err != nil {
			return nil, internal("link device", err)
		}
		p.Device = d
		switch {
		case l.UsedAt != nil:
			p.State = PageUsed
		case !l.ExpiresAt.After(now):
			p.State = PageExpired
		default:
			p.State = PageAsk
		}
	default:
		p.State = PageUnknown
	}
	return p, nil
}

func (s *Service) findLink(ctx context.Context, token string) (*EmailLink, error) {
	if token == "" || len(token) > 128 {
		return nil, nil
	}
	l, err := s.store.GetEmailLink(ctx, auth.HashSecret(token))
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, internal("email link", err)
	}
	return l, nil
}

// ActOnLink applies a link page's form: for a challenge link, decision
// "approve" (with number when the challenge uses number matching) or
// "deny" (This wasn't me: a fraud report); for a device link, "deny"
// unlinks that device. A used, unknown or expired link changes nothing.
func (s *Service) ActOnLink(ctx context.Context, token, decision, number, ip string) (*LinkPage, error) {
	p, err := s.OpenLink(ctx, token)
	if err != nil || p.State != PageAsk {
		return p, err
	}
	a := Actor{Type: ActorLink, Name: "email", IP: ip}
	hash := auth.HashSecret(token)
	now := s.clock()
	if p.Kind == LinkDevice {
		if decision != "deny" {
			return p, nil // only "This wasn't me" acts: show the question again
		}
		return s.undoDeviceLink(ctx, a, token, p, now)
	}
	c := p.Challenge
	var d Decision
	switch decision {
	case "approve":
		if c.Number != "" && subtle.ConstantTimeCompare([]byte(number), []byte(c.Number)) != 1 {
			n, err := s.store.CountNumberMismatch(ctx, c.ID, now, a.audit("challenge.number_mismatch", "challenge", c.ID, c.UserID, now))
			if isLost(err) {
				return s.OpenLink(ctx, token)
			}
			if err != nil {
				return nil, internal("count mismatch", err)
			}
			if n < s.rules.MaxNumberAttempts {
				p.State, p.Left = PageWrongNumber, s.rules.MaxNumberAttempts-n
				return p, nil
			}
			d = Decision{ID: c.ID, Status: StatusDenied, Method: MethodEmail, At: now,
				Audit: a.audit("challenge.denied", "challenge", c.ID, c.UserID, now)}
			if _, err := s.finish(ctx, c, d); err != nil && !isLost(err) {
				return nil, err
			}
			p.State = PageTooMany
			return p, nil
		}
		d = Decision{ID: c.ID, Status: StatusApproved, Method: MethodEmail, LinkHash: hash, At: now,
			Audit: a.audit("challenge.approved", "challenge", c.ID, c.UserID, now)}
	case "deny":
		d = Decision{ID: c.ID, Status: StatusDenied, Method: MethodEmail, LinkHash: hash, Fraud: true, At: now,
			LockUntil: now.Add(s.rules.FraudLock), Audit: a.audit("challenge.denied", "challenge", c.ID, c.UserID, now)}
	default:
		return nil, invalid("decision must be approve or deny")
	}
	done, err := s.finish(ctx, c, d)
	if isLost(err) || errors.Is(err, ErrNotFound) {
		return s.OpenLink(ctx, token)
	}
	if err != nil {
		return nil, err
	}
	p.Challenge = done
	if done.Status == StatusApproved {
		p.State = PageApproved
		return p, nil
	}
	s.fraudReported(ctx, a, done.UserID, done.ID)
	p.State = PageDenied
	return p, nil
}

func (s *Service) undoDeviceLink(ctx context.Context, a Actor, token string, p *LinkPage, now time.Time) (*LinkPage, error) {
	d := p.Device
	removed, reactivated, err := s.store.UndoDeviceLink(ctx, auth.HashSecret(token), now, now.Add(s.rules.FraudLock),
		a.audit("device.removed", "device", d.ID, d.UserID, now))
	if isLost(err) || errors.Is(err, ErrNotFound) {
		return s.OpenLink(ctx, token)
	}
	if err != nil {
		return nil, internal("undo device link", err)
	}
	if removed != nil {
		s.pushSilent([]Device{*removed}, push.Message{Kind: push.KindRetired})
	}
	if len(reactivated) > 0 {
		s.log.Info("devices reactivated after a new-device report", "user", d.UserID, "count", len(reactivated))
	}
	s.fraudReported(ctx, a, d.UserID, d.ID)
	p.State = PageRemoved
	return p, nil
}

// noticeNewDevice mails the new-device notice with its "This wasn't me"
// link, when an address is known for the user.
func (s *Service) noticeNewDevice(ctx context.Context, e *Enrollment, d *Device) {
	if s.mailer == nil {
		return
	}
	// The address known when the device linked, not one learned later.
	to := e.UserEmail
	if to == "" {
		var err error
		if to, err = s.store.UserEmail(ctx, d.UserID); err != nil {
			s.log.Error("new-device notice: user email", "err", err)
			return
		}
	}
	if to == "" {
		return
	}
	s.goBackground(func(ctx context.Context) {
		now := s.clock()
		token := auth.NewSecret("")
		l := EmailLink{Hash: auth.HashSecret(token), Kind: LinkDevice, DeviceID: d.ID, UserID: d.UserID, CreatedAt: now, ExpiresAt: now.Add(DeviceLinkLife)}
		if err := s.store.CreateEmailLink(ctx, l); err != nil {
			s.log.Error("new-device notice: link", "err", err)
			return
		}
		if err := s.sendMail(ctx, func(ctx context.Context) error {
			return s.mailer.DeviceLinked(ctx, d, to, s.linkURL(token), l.ExpiresAt)
		}); err != nil {
			s.log.Warn("new-device notice failed", "device", d.ID, "err", err)
			s.metrics.Email(LinkDevice, DeliveryFailed)
		} else {
			s.metrics.Email(LinkDevice, DeliverySent)
		}
	})
}
