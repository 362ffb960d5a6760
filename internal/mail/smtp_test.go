package mail_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/mail"
	"github.com/clicktopurchase/approvald/internal/mail/mailtest"
)

const (
	testFrom = "clicktopurchase <no-reply@example.com>"
	testTo   = "alice@example.com"
	testLink = "https://approve.example.com/e/Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA"
)

func challenge(t *testing.T) mail.Message {
	t.Helper()
	m, err := mail.RenderChallenge(mail.ChallengeMail{
		Brand:      "clicktopurchase",
		To:         testTo,
		Action:     "submit_offer",
		ActionText: "Approve your offer?",
		Context: []mail.KV{
			{Name: "Property", Value: `12 High St, Leeds <script>alert("x")</script>`},
			{Name: "Offer", Value: "£350,000 & fees"},
			{Name: "Note", Value: `it's "final"`},
		},
		RequestedAt: time.Date(2026, 3, 14, 15, 9, 26, 0, time.FixedZone("CET", 3600)),
		IP:          "203.0.113.7",
		Link:        testLink,
		ExpiresAt:   time.Date(2026, 3, 14, 14, 19, 26, 0, time.UTC),
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newSender(t *testing.T, rawURL string, opts ...mail.Option) *mail.SMTP {
	t.Helper()
	s, err := mail.NewSMTP(rawURL, testFrom, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func withCreds(rawURL, user, pass string) string {
	u, _ := url.Parse(rawURL)
	u.User = url.UserPassword(user, pass)
	return u.String()
}

func send(t *testing.T, s mail.Sender, m mail.Message) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return s.Send(ctx, m)
}

func TestSMTPEndToEnd(t *testing.T) {
	srv := mailtest.Start(t)
	m := challenge(t)
	before := time.Now().Add(-time.Second)
	if err := send(t, newSender(t, srv.URL()), m); err != nil {
		t.Fatal(err)
	}
	got := srv.WaitFor(1, 5*time.Second)[0]
	if got.ParseErr != nil {
		t.Fatalf("parse: %v\n%s", got.ParseErr, got.Data)
	}

	// Envelope and headers.
	if got.From != "no-reply@example.com" || len(got.To) != 1 || got.To[0] != testTo {
		t.Errorf("envelope %q -> %q", got.From, got.To)
	}
	if got.TLS || got.AuthUser != "" {
		t.Errorf("TLS %v, auth %q on a plain server without credentials", got.TLS, got.AuthUser)
	}
	from, err := got.Header.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Address != "no-reply@example.com" || from[0].Name != "clicktopurchase" {
		t.Errorf("From %v, %v", from, err)
	}
	to, err := got.Header.AddressList("To")
	if err != nil || len(to) != 1 || to[0].Address != testTo {
		t.Errorf("To %v, %v", to, err)
	}
	if got.Subject != "clicktopurchase - Two-Factor Authentication Request" {
		t.Errorf("Subject %q", got.Subject)
	}
	date, err := got.Header.Date()
	if err != nil || date.Before(before) || date.After(time.Now().Add(time.Second)) {
		t.Errorf("Date %q: %v, %v", got.Header.Get("Date"), date, err)
	}
	if id := got.Header.Get("Message-ID"); !regexp.MustCompile(`^<[A-Za-z0-9]{20,}@example\.com>$`).MatchString(id) {
		t.Errorf("Message-ID %q", id)
	}
	if v := got.Header.Get("MIME-Version"); v != "1.0" {
		t.Errorf("MIME-Version %q", v)
	}
	if got.MIMEType != "multipart/alternative" {
		t.Errorf("Content-Type %q", got.Header.Get("Content-Type"))
	}
	if v := got.Header.Get("Auto-Submitted"); v != "auto-generated" {
		t.Errorf("Auto-Submitted %q", v)
	}

	// Both parts, as rendered.
	if got.Text != m.Text {
		t.Errorf("text part changed in transit:\n%q\n%q", got.Text, m.Text)
	}
	if got.HTML != m.HTML {
		t.Errorf("HTML part changed in transit")
	}
	for _, want := range []string{
		"Approve your offer?", "Submit offer",
		`Property: 12 High St, Leeds <script>alert("x")</script>`,
		"Offer: £350,000 & fees", `Note: it's "final"`,
		"Sat 14 Mar 2026, 14:09 UTC", "203.0.113.7", "14:19 UTC",
		"This wasn't me", "support",
	} {
		if !strings.Contains(got.Text, want) {
			t.Errorf("text part lacks %q:\n%s", want, got.Text)
		}
	}
	if n := strings.Count(got.Text, "https://"); n != 1 || strings.Count(got.Text, testLink) != 1 {
		t.Errorf("text part has %d links, want exactly the one:\n%s", n, got.Text)
	}
	checkHTML(t, got.HTML)
}

// checkHTML checks the escaping and the single link of the challenge's HTML.
func checkHTML(t *testing.T, h string) {
	t.Helper()
	if strings.Contains(strings.ToLower(h), "<script") {
		t.Errorf("HTML part contains a script element:\n%s", h)
	}
	for _, want := range []string{
		"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;",
		"£350,000 &amp; fees",
		"it&#39;s &#34;final&#34;",
		"Approve your offer?", "Sat 14 Mar 2026, 14:09 UTC", "203.0.113.7",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("HTML part lacks %q", want)
		}
	}
	hrefs := regexp.MustCompile(`(?i)href\s*=\s*"([^"]*)"`).FindAllStringSubmatch(h, -1)
	if len(hrefs) != 1 || hrefs[0][1] != testLink || strings.Count(strings.ToLower(h), "<a ") != 1 {
		t.Errorf("HTML links %q, want exactly %q", hrefs, testLink)
	}
	for _, bad := range []string{"src=", "<img", "<link", "<style", "javascript:", "http://"} {
		if strings.Contains(strings.ToLower(h), bad) {
			t.Errorf("HTML part contains %q", bad)
		}
	}
}

func TestSMTPUTF8Subject(t *testing.T) {
	srv := mailtest.Start(t)
	m := challenge(t)
	m.Subject = "Clíck ✓ – ünïcode and a long subject that must be folded across lines by the encoder, more words"
	if err := send(t, newSender(t, srv.URL()), m); err != nil {
		t.Fatal(err)
	}
	got := srv.WaitFor(1, 5*time.Second)[0]
	if got.Subject != m.Subject {
		t.Errorf("Subject %q, want %q", got.Subject, m.Subject)
	}
	if raw := got.Header.Get("Subject"); !strings.Contains(raw, "=?UTF-8?") {
		t.Errorf("raw Subject %q is not RFC 2047 encoded", raw)
	}
}

func TestSMTPStartTLS(t *testing.T) {
	srv := mailtest.Start(t, mailtest.WithSTARTTLS())
	if err := send(t, newSender(t, srv.URL(), mail.WithRootCAs(srv.RootCAs())), challenge(t)); err != nil {
		t.Fatal(err)
	}
	if got := srv.WaitFor(1, 5*time.Second)[0]; !got.TLS {
		t.Error("server did not see TLS although it offered STARTTLS")
	}

	// An offered STARTTLS whose certificate does not verify is an error,
	// never a fallback to plain text.
	err := send(t, newSender(t, srv.URL()), challenge(t))
	if err == nil {
		t.Fatal("sent although the certificate does not verify")
	}
	t.Log(err)
	if mail.IsTemporary(err) {
		t.Errorf("certificate failure %v is temporary", err)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("%d messages", n)
	}
}

func TestSMTPAuth(t *testing.T) {
	srv := mailtest.Start(t, mailtest.WithSTARTTLS(), mailtest.WithAuth())
	ca := mail.WithRootCAs(srv.RootCAs())

	if err := send(t, newSender(t, withCreds(srv.URL(), mailtest.Username, mailtest.Password), ca), challenge(t)); err != nil {
		t.Fatal(err)
	}
	got := srv.WaitFor(1, 5*time.Second)[0]
	if got.AuthUser != mailtest.Username || !got.TLS {
		t.Errorf("auth user %q, TLS %v", got.AuthUser, got.TLS)
	}

	const wrong = "wr0ng-Passw0rd"
	err := send(t, newSender(t, withCreds(srv.URL(), mailtest.Username, wrong), ca), challenge(t))
	if err == nil {
		t.Fatal("sent with a wrong password")
	}
	if strings.Contains(err.Error(), wrong) {
		t.Errorf("error %q contains the password", err)
	}
	if mail.IsTemporary(err) {
		t.Errorf("535 %v is temporary", err)
	}

	// Without credentials the server refuses MAIL.
	if err := send(t, newSender(t, srv.URL(), ca), challenge(t)); err == nil {
		t.Error("sent without credentials to a server that requires them")
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("%d messages", n)
	}
}

func TestSMTPNoPasswordInClear(t *testing.T) {
	// The server offers only AUTH PLAIN, and over a plain connection: the
	// sender must not hand it the password.
	srv := mailtest.Start(t, mailtest.WithAuth(), mailtest.WithInsecureAuth())
	err := send(t, newSender(t, withCreds(srv.URL(), mailtest.Username, mailtest.Password)), challenge(t))
	if err == nil {
		t.Fatal("authenticated with PLAIN over an unencrypted connection")
	}
	t.Log(err)
	if mail.IsTemporary(err) {
		t.Errorf("%v is temporary", err)
	}
	if strings.Contains(err.Error(), mailtest.Password) {
		t.Errorf("error %q contains the password", err)
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("%d messages", n)
	}
}

func TestSMTPImplicitTLS(t *testing.T) {
	srv := mailtest.Start(t, mailtest.WithImplicitTLS(), mailtest.WithAuth())
	if !strings.HasPrefix(srv.URL(), "smtps://") {
		t.Fatalf("URL %q", srv.URL())
	}
	s := newSender(t, withCreds(srv.URL(), mailtest.Username, mailtest.Password), mail.WithRootCAs(srv.RootCAs()))
	if err := send(t, s, challenge(t)); err != nil {
		t.Fatal(err)
	}
	got := srv.WaitFor(1, 5*time.Second)[0]
	if !got.TLS || got.AuthUser != mailtest.Username {
		t.Errorf("TLS %v, auth user %q", got.TLS, got.AuthUser)
	}
	if got.Subject != "clicktopurchase - Two-Factor Authentication Request" {
		t.Errorf("Subject %q", got.Subject)
	}

	// smtp:// to an implicit-TLS port does not work, and says so.
	plainURL := "smtp://" + srv.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := newSender(t, plainURL).Send(ctx, challenge(t)); err == nil {
		t.Error("smtp:// to an smtps server succeeded")
	}
}

func TestSMTPRefused(t *testing.T) {
	srv := mailtest.Start(t)
	s := newSender(t, srv.URL())

	for _, tc := range []struct {
		name      string
		reject    func()
		temporary bool
	}{
		{"DATA 550", func() { srv.RejectNext(1, 550, "Message refused") }, false},
		{"DATA 451", func() { srv.RejectNext(1, 451, "Try again later") }, true},
		{"RCPT 550", func() { srv.RejectNextRcpt(1, 550, "No such user here") }, false},
		{"RCPT 451", func() { srv.RejectNextRcpt(1, 451, "Greylisted") }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.reject()
			err := send(t, s, challenge(t))
			if err == nil {
				t.Fatal("a refused mail returned no error")
			}
			t.Log(err)
			if mail.IsTemporary(err) != tc.temporary {
				t.Errorf("IsTemporary(%v) = %v", err, !tc.temporary)
			}
			if strings.Contains(err.Error(), testTo) {
				t.Errorf("error %q shows the whole recipient", err)
			}
			if !strings.Contains(err.Error(), "a•••@example.com") {
				t.Errorf("error %q does not name the masked recipient", err)
			}
		})
	}
	if n := len(srv.Messages()); n != 0 {
		t.Fatalf("%d messages accepted", n)
	}
	// The server is fine again.
	if err := send(t, s, challenge(t)); err != nil {
		t.Fatal(err)
	}
	srv.WaitFor(1, 5*time.Second)
}

// silentServer accepts connections and, if greet, sends the greeting, then
// never says anything else.
func silentServer(t *testing.T, greet bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	conns := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(done)
				return
			}
			if greet {
				_, _ = c.Write([]byte("220 slow.example ESMTP\r\n"))
			}
			conns <- c
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		close(conns)
		for c := range conns {
			_ = c.Close()
		}
	})
	return "smtp://" + ln.Addr().String()
}

func TestSMTPContextDeadline(t *testing.T) {
	for _, greet := range []bool{false, true} {
		s := newSender(t, silentServer(t, greet))
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		err := s.Send(ctx, challenge(t))
		cancel()
		if err == nil {
			t.Fatalf("greet %v: no error from a silent server", greet)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("greet %v: Send took %v with a 300ms deadline", greet, d)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("greet %v: %v is not context.DeadlineExceeded", greet, err)
		}
		if !mail.IsTemporary(err) {
			t.Errorf("greet %v: timeout %v is not temporary", greet, err)
		}
	}

	// Cancellation without a deadline stops it too.
	s := newSender(t, silentServer(t, true))
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err := s.Send(ctx, challenge(t))
	if err == nil || !errors.Is(err, context.Canceled) || time.Since(start) > 2*time.Second {
		t.Errorf("cancelled Send: %v after %v", err, time.Since(start))
	}

	// WithTimeout bounds a Send whose context has no deadline.
	s = newSender(t, silentServer(t, true), mail.WithTimeout(300*time.Millisecond))
	start = time.Now()
	if err := s.Send(context.Background(), challenge(t)); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("WithTimeout: %v after %v", err, time.Since(start))
	}

	// A context already done fails at once.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := s.Send(ctx, challenge(t)); !errors.Is(err, context.Canceled) {
		t.Errorf("done context: %v", err)
	}
}

func TestSMTPBadMessage(t *testing.T) {
	srv := mailtest.Start(t)
	s := newSender(t, srv.URL())
	m := challenge(t)
	for name, mod := range map[string]func(*mail.Message){
		"bad recipient":    func(m *mail.Message) { m.To = "not an address" },
		"two recipients":   func(m *mail.Message) { m.To = "a@example.com, b@example.com" },
		"header injection": func(m *mail.Message) { m.Subject = "Hi\r\nBcc: eve@example.com" },
		"no text":          func(m *mail.Message) { m.Text = "" },
	} {
		mm := m
		mod(&mm)
		err := send(t, s, mm)
		if err == nil {
			t.Errorf("%s: sent", name)
			continue
		}
		if mail.IsTemporary(err) {
			t.Errorf("%s: %v is temporary", name, err)
		}
	}
	if n := srv.Connections(); n != 0 {
		t.Errorf("%d connections for invalid messages", n)
	}
}

func TestSMTPConcurrent(t *testing.T) {
	srv := mailtest.Start(t)
	s := newSender(t, srv.URL())
	m := challenge(t)
	errs := make(chan error, 8)
	for range 8 {
		go func() { errs <- send(t, s, m) }()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	srv.WaitFor(8, 5*time.Second)
}
