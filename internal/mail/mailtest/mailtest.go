// Package mailtest runs a real SMTP server (github.com/emersion/go-smtp) in
// the test's process, on 127.0.0.1, and records what it receives, parsed.
//
//	srv := mailtest.Start(t, mailtest.WithSTARTTLS())
//	sender, _ := mail.NewSMTP(srv.URL(), "app <app@example.com>", mail.WithRootCAs(srv.RootCAs()))
//	... send ...
//	got := srv.WaitFor(1, 5*time.Second)
package mailtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// The fixed credentials WithAuth requires.
const (
	Username = "approvald"
	Password = "pa55-w0rd-for-tests"
)

// Received is one message the server accepted.
type Received struct {
	// Envelope.
	From string
	To   []string
	// Data is the message as transferred (headers and body).
	Data []byte
	// TLS reports whether the connection was encrypted (STARTTLS or
	// implicit TLS) when the message was transferred.
	TLS bool
	// AuthUser is the user that authenticated, or "".
	AuthUser string

	// Parsed from Data. ParseErr is set if Data could not be parsed; the
	// fields below are then partly filled.
	Header   mail.Header
	Subject  string // decoded (RFC 2047)
	MIMEType string // of the top-level body, e.g. "multipart/alternative"
	Text     string // the text/plain part, decoded
	HTML     string // the text/html part, decoded
	ParseErr error
}

// Opt configures Start.
type Opt func(*config)

type config struct {
	startTLS, implicitTLS bool
	auth, insecureAuth    bool
}

// WithSTARTTLS makes the server offer STARTTLS, with a self-signed
// certificate for 127.0.0.1 that RootCAs verifies.
func WithSTARTTLS() Opt { return func(c *config) { c.startTLS = true } }

// WithImplicitTLS makes the server speak TLS from the first byte (smtps://),
// with the certificate RootCAs verifies.
func WithImplicitTLS() Opt { return func(c *config) { c.implicitTLS = true } }

// WithAuth offers AUTH PLAIN and requires Username and Password before MAIL.
// As real servers do, AUTH is offered only over TLS unless WithInsecureAuth.
func WithAuth() Opt { return func(c *config) { c.auth = true } }

// WithInsecureAuth offers AUTH on an unencrypted connection too.
func WithInsecureAuth() Opt { return func(c *config) { c.insecureAuth = true } }

// Server is a running test SMTP server.
type Server struct {
	t       testing.TB
	cfg     config
	srv     *smtp.Server
	ln      net.Listener
	rootCAs *x509.CertPool
	done    chan struct{}

	mu          sync.Mutex
	msgs        []Received
	arrived     chan struct{} // closed and replaced on each new message
	rejectData  []rejection
	rejectRcpt  []rejection
	connections int
}

type rejection struct {
	code int
	msg  string
}

// Start starts a server on 127.0.0.1:0 and stops it when the test ends.
func Start(t testing.TB, opts ...Opt) *Server {
	t.Helper()
	s := &Server{t: t, done: make(chan struct{}), arrived: make(chan struct{})}
	for _, o := range opts {
		o(&s.cfg)
	}

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "mailtest.localhost"
	srv.ErrorLog = log.New(io.Discard, "", 0)
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.MaxMessageBytes = 10 << 20
	srv.AllowInsecureAuth = s.cfg.insecureAuth
	s.srv = srv

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mailtest: listen: %v", err)
	}
	if s.cfg.startTLS || s.cfg.implicitTLS {
		cert, pool, err := selfSigned()
		if err != nil {
			_ = ln.Close()
			t.Fatalf("mailtest: certificate: %v", err)
		}
		s.rootCAs = pool
		tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if s.cfg.startTLS {
			srv.TLSConfig = tc
		}
		if s.cfg.implicitTLS {
			ln = tls.NewListener(ln, tc)
		}
	}
	s.ln = ln

	go func() {
		defer close(s.done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		// Serve may not have registered ln yet when Close runs.
		_ = ln.Close()
		<-s.done
	})
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is smtp://127.0.0.1:port (smtps:// WithImplicitTLS), without
// credentials.
func (s *Server) URL() string {
	if s.cfg.implicitTLS {
		return "smtps://" + s.Addr()
	}
	return "smtp://" + s.Addr()
}

// RootCAs verifies the server's certificate (nil without TLS).
func (s *Server) RootCAs() *x509.CertPool { return s.rootCAs }

// Messages returns the accepted messages, oldest first.
func (s *Server) Messages() []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Received(nil), s.msgs...)
}

// Connections is how many SMTP sessions have started (one per EHLO/HELO
// greeting that created a session).
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connections
}

// WaitFor waits until at least n messages have been accepted and returns
// them all; it fails the test if they do not arrive within timeout. Call it
// from the test's goroutine.
func (s *Server) WaitFor(n int, timeout time.Duration) []Received {
	s.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		if len(s.msgs) >= n {
			out := append([]Received(nil), s.msgs...)
			s.mu.Unlock()
			return out
		}
		arrived, have := s.arrived, len(s.msgs)
		s.mu.Unlock()
		select {
		case <-arrived:
		case <-deadline.C:
			s.t.Fatalf("mailtest: WaitFor(%d): only %d message(s) after %v", n, have, timeout)
			return nil
		}
	}
}

// RejectNext makes the server refuse the next n messages after their data,
// answering DATA's end with code (e.g. 550 or 451) and msg.
func (s *Server) RejectNext(n, code int, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.rejectData = append(s.rejectData, rejection{code, msg})
	}
}

// RejectNextRcpt makes the server refuse the next n RCPT TO commands with
// code and msg.
func (s *Server) RejectNextRcpt(n, code int, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.rejectRcpt = append(s.rejectRcpt, rejection{code, msg})
	}
}

// takeRejection pops the next queued rejection, if any.
func (s *Server) takeRejection(q *[]rejection) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(*q) == 0 {
		return nil
	}
	r := (*q)[0]
	*q = (*q)[1:]
	return &smtp.SMTPError{
		Code:         r.code,
		EnhancedCode: smtp.EnhancedCode{r.code / 100, 0, 0},
		Message:      r.msg,
	}
}

func (s *Server) add(r Received) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, r)
	close(s.arrived)
	s.arrived = make(chan struct{})
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	s.connections++
	s.mu.Unlock()
	return &session{s: s, conn: c}, nil
}

// session is one SMTP session; go-smtp calls it from one goroutine.
type session struct {
	s        *Server
	conn     *smtp.Conn
	authUser string
	from     string
	to       []string
}

var _ smtp.AuthSession = (*session)(nil)

func (ss *session) AuthMechanisms() []string {
	if !ss.s.cfg.auth {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if !ss.s.cfg.auth || mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if (identity != "" && identity != username) || username != Username || password != Password {
			return smtp.ErrAuthFailed
		}
		ss.authUser = username
		return nil
	}), nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.s.cfg.auth && ss.authUser == "" {
		return smtp.ErrAuthRequired
	}
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := ss.s.takeRejection(&ss.s.rejectRcpt); err != nil {
		return err
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if err := ss.s.takeRejection(&ss.s.rejectData); err != nil {
		return err
	}
	_, isTLS := ss.conn.TLSConnectionState()
	rec := Received{
		From:     ss.from,
		To:       append([]string(nil), ss.to...),
		Data:     data,
		TLS:      isTLS,
		AuthUser: ss.authUser,
	}
	parse(&rec)
	ss.s.add(rec)
	return nil
}

func (ss *session) Reset() {
	ss.from, ss.to = "", nil
}

func (ss *session) Logout() error { return nil }

// parse fills the parsed fields of r from r.Data.
func parse(r *Received) {
	m, err := mail.ReadMessage(bytes.NewReader(r.Data))
	if err != nil {
		r.ParseErr = err
		return
	}
	r.Header = m.Header
	var dec mime.WordDecoder
	if r.Subject, err = dec.DecodeHeader(m.Header.Get("Subject")); err != nil {
		r.ParseErr = fmt.Errorf("subject: %w", err)
		return
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil {
		mt, params = "text/plain", nil
	}
	r.MIMEType = mt
	r.ParseErr = walk(r, mt, params, m.Header.Get("Content-Transfer-Encoding"), m.Body)
}

// walk decodes a body of media type mt, descending into multipart bodies,
// and keeps the first text/plain and text/html parts.
func walk(r *Received, mt string, params map[string]string, cte string, body io.Reader) error {
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			pmt, pparams, err := mime.ParseMediaType(p.Header.Get("Content-Type"))
			if err != nil {
				pmt, pparams = "text/plain", nil
			}
			if err := walk(r, pmt, pparams, p.Header.Get("Content-Transfer-Encoding"), p); err != nil {
				return err
			}
		}
	}
	var dec io.Reader
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "quoted-printable":
		dec = quotedprintable.NewReader(body)
	case "base64":
		dec = base64.NewDecoder(base64.StdEncoding, newlineStripper{body})
	default:
		dec = body
	}
	b, err := io.ReadAll(dec)
	if err != nil {
		return fmt.Errorf("%s part: %w", mt, err)
	}
	text := strings.ReplaceAll(string(b), "\r\n", "\n")
	switch {
	case mt == "text/plain" && r.Text == "":
		r.Text = text
	case mt == "text/html" && r.HTML == "":
		r.HTML = text
	}
	return nil
}

// newlineStripper drops CR and LF from a base64 body.
type newlineStripper struct{ r io.Reader }

func (n newlineStripper) Read(p []byte) (int, error) {
	for {
		k, err := n.r.Read(p)
		j := 0
		for _, c := range p[:k] {
			if c != '\r' && c != '\n' {
				p[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// selfSigned makes a certificate for 127.0.0.1 and localhost, valid for a
// day, and a pool that trusts it.
func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "mailtest"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}
