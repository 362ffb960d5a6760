package mail

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	netmail "net/mail"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	gomail "github.com/wneessen/go-mail"
)

// Default ports of the two URL schemes.
const (
	DefaultSMTPPort  = 587 // smtp://: submission, STARTTLS when offered
	DefaultSMTPSPort = 465 // smtps://: implicit TLS
)

// DefaultTimeout bounds one Send when the context has no earlier deadline.
const DefaultTimeout = 30 * time.Second

// SMTP sends mail through an SMTP server with github.com/wneessen/go-mail,
// one connection per Send. It is safe for concurrent use.
type SMTP struct {
	host        string
	port        int
	implicitTLS bool
	user, pass  string
	from        *netmail.Address
	fromDomain  string
	tlsConfig   *tls.Config
	timeout     time.Duration
}

// Option adjusts an SMTP sender.
type Option func(*options)

type options struct {
	rootCAs *x509.CertPool
	timeout time.Duration
}

// WithRootCAs makes the sender verify the server's certificate against pool
// instead of the system's roots (tests use mailtest.Server.RootCAs).
func WithRootCAs(pool *x509.CertPool) Option {
	return func(o *options) { o.rootCAs = pool }
}

// WithTimeout bounds each Send (dial, TLS, AUTH and transfer together) when
// the context's deadline is later or absent. The default is DefaultTimeout.
// A zero or negative d keeps the default.
func WithTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.timeout = d
		}
	}
}

// NewSMTP returns a sender for APPROVALD_SMTP_URL (rawURL) sending from
// APPROVALD_MAIL_FROM (from).
//
// rawURL is smtp://[user:pass@]host[:port] (default port 587; STARTTLS
// whenever the server offers it, with the certificate verified) or
// smtps://[user:pass@]host[:port] (TLS from the start, default port 465).
// Special characters in the user name and password must be percent-encoded.
// With credentials, the sender authenticates with the strongest mechanism the
// server offers, and sends the password (PLAIN, LOGIN) only over TLS; without
// them it does not authenticate.
//
// from is an address, optionally with a display name:
// "clicktopurchase <no-reply@example.com>".
//
// Errors name the setting at fault and never contain the password.
func NewSMTP(rawURL, from string, opts ...Option) (*SMTP, error) {
	o := options{timeout: DefaultTimeout}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	s := &SMTP{timeout: o.timeout}

	const usage = "expected smtp://[user:pass@]host[:port] or smtps://[user:pass@]host[:port], " +
		"with special characters in the user name and password percent-encoded"
	rawURL = strings.TrimSpace(rawURL)
	if rawURL == "" {
		return nil, fmt.Errorf("APPROVALD_SMTP_URL is empty; %s", usage)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the whole URL, password included: say less.
		return nil, fmt.Errorf("APPROVALD_SMTP_URL is not a valid URL; %s", usage)
	}
	switch u.Scheme {
	case "smtp":
		s.port = DefaultSMTPPort
	case "smtps":
		s.port, s.implicitTLS = DefaultSMTPSPort, true
	default:
		return nil, fmt.Errorf("APPROVALD_SMTP_URL: unsupported scheme %q; %s", u.Scheme, usage)
	}
	if u.Opaque != "" {
		return nil, fmt.Errorf("APPROVALD_SMTP_URL: missing // after %s:; %s", u.Scheme, usage)
	}
	s.host = u.Hostname()
	if s.host == "" {
		return nil, fmt.Errorf("APPROVALD_SMTP_URL: missing host; %s", usage)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("APPROVALD_SMTP_URL: invalid port %q", p)
		}
		s.port = n
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("APPROVALD_SMTP_URL: unexpected path, query or fragment; %s", usage)
	}
	if u.User != nil {
		s.user = u.User.Username()
		s.pass, _ = u.User.Password()
		if s.user == "" || s.pass == "" {
			return nil, errors.New("APPROVALD_SMTP_URL: give both a user name and a password, or neither")
		}
	}
	s.tlsConfig = &tls.Config{ServerName: s.host, MinVersion: tls.VersionTLS12, RootCAs: o.rootCAs}

	from = strings.TrimSpace(from)
	if from == "" {
		return nil, errors.New("APPROVALD_MAIL_FROM is required to send mail over SMTP")
	}
	addr, err := netmail.ParseAddress(from)
	if err != nil {
		return nil, fmt.Errorf("APPROVALD_MAIL_FROM: %q is not a valid address (%v); "+
			"expected name@example.com or \"Name <name@example.com>\"", from, err)
	}
	at := strings.LastIndexByte(addr.Address, '@')
	if at <= 0 || at == len(addr.Address)-1 {
		return nil, fmt.Errorf("APPROVALD_MAIL_FROM: %q has no domain", from)
	}
	s.from, s.fromDomain = addr, addr.Address[at+1:]
	return s, nil
}

// Send delivers m over a new connection. It returns when the server has
// accepted the message, refused it, or ctx is done (the connection is then
// closed at once). Errors mask the recipient; see IsTemporary for retrying.
func (s *SMTP) Send(ctx context.Context, m Message) error {
	to, err := netmail.ParseAddress(m.To)
	if err != nil {
		return &permanentError{fmt.Sprintf("mail: invalid recipient address %s", Mask(m.To))}
	}
	msg, err := s.build(to, m)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return s.wrap(m.Kind, to.Address, err, nil)
	}
	timeout := s.timeout
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < timeout {
			timeout = left
		}
	}
	if timeout <= 0 {
		return s.wrap(m.Kind, to.Address, context.DeadlineExceeded, nil)
	}

	guard := &connGuard{}
	stop := context.AfterFunc(ctx, guard.kill)
	defer stop()
	// go-mail leaves the connection open when EHLO, STARTTLS or AUTH fails.
	defer guard.kill()

	copts := []gomail.Option{
		gomail.WithPort(s.port),
		gomail.WithTimeout(timeout),
		gomail.WithTLSConfig(s.tlsConfig),
		gomail.WithDialContextFunc(s.dialer(guard)),
		// For smtps:// the connection is TLS already; the server offers no
		// STARTTLS and go-mail sees the TLS state, so the policy only acts
		// for smtp://.
		gomail.WithTLSPolicy(gomail.TLSOpportunistic),
	}
	if s.user != "" {
		// AutoDiscover picks SCRAM/CRAM-MD5 first and allows PLAIN and
		// LOGIN only on an encrypted connection.
		copts = append(copts,
			gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover),
			gomail.WithUsername(s.user),
			gomail.WithPassword(s.pass))
	}
	client, err := gomail.NewClient(s.host, copts...)
	if err != nil {
		return s.wrap(m.Kind, to.Address, err, nil)
	}
	if err := client.DialAndSendWithContext(ctx, msg); err != nil {
		return s.wrap(m.Kind, to.Address, err, contextErr(ctx))
	}
	return nil
}

// contextErr is ctx.Err(), or DeadlineExceeded once the deadline has passed:
// the connection's own deadline (set to the context's) may fire before the
// context notices.
func contextErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// build turns m into a go-mail message.
func (s *SMTP) build(to *netmail.Address, m Message) (*gomail.Msg, error) {
	if m.Text == "" {
		return nil, &permanentError{"mail: message has no text part"}
	}
	if strings.ContainsFunc(m.Subject, isControl) {
		return nil, &permanentError{"mail: subject contains control characters"}
	}
	msg := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	msg.FromMailAddress(s.from)
	msg.ToMailAddress(to)
	msg.Subject(m.Subject)
	msg.SetDateWithValue(time.Now())
	msg.SetMessageIDWithValue(rand.Text() + "@" + s.fromDomain)
	// RFC 3834: keeps vacation responders from answering.
	msg.SetGenHeader(gomail.Header("Auto-Submitted"), "auto-generated")
	msg.SetBodyString(gomail.TypeTextPlain, m.Text)
	if m.HTML != "" {
		msg.AddAlternativeString(gomail.TypeTextHTML, m.HTML)
	}
	return msg, nil
}

// dialer connects to the server (over TLS for smtps://) and hands the
// connection to guard, which closes it when the Send's context is done.
// It returns the *tls.Conn itself so that go-mail sees the connection as
// encrypted.
func (s *SMTP) dialer(guard *connGuard) func(ctx context.Context, network, _ string) (net.Conn, error) {
	addr := net.JoinHostPort(s.host, strconv.Itoa(s.port))
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		var (
			conn net.Conn
			err  error
		)
		if s.implicitTLS {
			d := &tls.Dialer{Config: s.tlsConfig}
			conn, err = d.DialContext(ctx, network, addr)
		} else {
			var d net.Dialer
			conn, err = d.DialContext(ctx, network, addr)
		}
		if err != nil {
			return nil, err
		}
		if !guard.set(conn) {
			_ = conn.Close()
			return nil, context.Canceled
		}
		return conn, nil
	}
}

// wrap returns err with the recipient masked and the password removed from
// its text, prefixed with what was being sent where. ctxErr, if not nil, is
// kept in the chain so that errors.Is(err, context.DeadlineExceeded) works.
func (s *SMTP) wrap(kind, rcpt string, err, ctxErr error) error {
	text := err.Error()
	if rcpt != "" {
		text = strings.ReplaceAll(text, rcpt, Mask(rcpt))
	}
	if s.pass != "" {
		text = strings.ReplaceAll(text, s.pass, "***")
	}
	if kind == "" {
		kind = "a"
	}
	e := &sendError{
		text: fmt.Sprintf("mail: sending %s mail to %s via %s: %s",
			kind, Mask(rcpt), net.JoinHostPort(s.host, strconv.Itoa(s.port)), text),
		errs: []error{err},
	}
	if ctxErr != nil {
		e.text += " (" + ctxErr.Error() + ")"
		e.errs = append(e.errs, ctxErr)
	}
	return e
}

// sendError carries a scrubbed message and the original errors.
type sendError struct {
	text string
	errs []error
}

func (e *sendError) Error() string   { return e.text }
func (e *sendError) Unwrap() []error { return e.errs }

// connGuard holds the connection of one Send so that the context can close it.
type connGuard struct {
	mu   sync.Mutex
	conn net.Conn
	dead bool
}

// set records conn; false means the context is already done.
func (g *connGuard) set(conn net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dead {
		return false
	}
	g.conn = conn
	return true
}

// kill closes the connection, if any, and refuses later ones.
func (g *connGuard) kill() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dead = true
	if g.conn != nil {
		_ = g.conn.Close()
	}
}
