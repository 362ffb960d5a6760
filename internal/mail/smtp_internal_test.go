package mail

import (
	"strings"
	"testing"
)

func TestNewSMTPParses(t *testing.T) {
	for _, tc := range []struct {
		url, from  string
		host       string
		port       int
		tls        bool
		user, pass string
		fromAddr   string
		fromName   string
		fromDomain string
	}{
		{"smtp://mail.example.com", "no-reply@example.com", "mail.example.com", 587, false, "", "", "no-reply@example.com", "", "example.com"},
		{"smtps://mail.example.com", "no-reply@example.com", "mail.example.com", 465, true, "", "", "no-reply@example.com", "", "example.com"},
		{"smtp://u%40x:p%2Fw%3A@mail.example.com:2525/", "clicktopurchase <no-reply@example.org>", "mail.example.com", 2525, false, "u@x", "p/w:", "no-reply@example.org", "clicktopurchase", "example.org"},
		{"SMTPS://u:p@[::1]:1465", "\"Click, Inc.\" <a@b.example>", "::1", 1465, true, "u", "p", "a@b.example", "Click, Inc.", "b.example"},
	} {
		s, err := NewSMTP(tc.url, tc.from)
		if err != nil {
			t.Errorf("NewSMTP(%q, %q): %v", tc.url, tc.from, err)
			continue
		}
		if s.host != tc.host || s.port != tc.port || s.implicitTLS != tc.tls || s.user != tc.user || s.pass != tc.pass ||
			s.from.Address != tc.fromAddr || s.from.Name != tc.fromName || s.fromDomain != tc.fromDomain {
			t.Errorf("NewSMTP(%q, %q) = host %q port %d tls %v user %q pass %q from %q/%q domain %q", tc.url, tc.from,
				s.host, s.port, s.implicitTLS, s.user, s.pass, s.from.Name, s.from.Address, s.fromDomain)
		}
		if s.tlsConfig.ServerName != tc.host {
			t.Errorf("ServerName %q, want %q", s.tlsConfig.ServerName, tc.host)
		}
	}
}

func TestNewSMTPErrors(t *testing.T) {
	const secret = "Sup3rS3cret"
	const okFrom = "no-reply@example.com"
	for _, tc := range []struct{ url, from, want string }{
		{"", okFrom, "APPROVALD_SMTP_URL"},
		{"   ", okFrom, "APPROVALD_SMTP_URL"},
		{"http://u:" + secret + "@mail.example.com", okFrom, "APPROVALD_SMTP_URL"},
		{"mail.example.com:587", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:" + secret + "@", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp:u:" + secret + "@mail.example.com", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:" + secret + "@mail.example.com:99999", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:" + secret + "@mail.example.com:0", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:" + secret + "@mail.example.com:smtp", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:" + secret + "%zz@mail.example.com", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:" + secret + "@mail.example.com/x", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:" + secret + "@mail.example.com?tls=off", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:" + secret + "@mail example.com", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://:" + secret + "@mail.example.com", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u@mail.example.com", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:@mail.example.com", okFrom, "APPROVALD_SMTP_URL"},
		{"smtp://u:" + secret + "@mail.example.com", "", "APPROVALD_MAIL_FROM"},
		{"smtp://u:" + secret + "@mail.example.com", "no-reply", "APPROVALD_MAIL_FROM"},
		{"smtp://u:" + secret + "@mail.example.com", "no-reply@", "APPROVALD_MAIL_FROM"},
		{"smtp://u:" + secret + "@mail.example.com", "a@b.example, c@d.example", "APPROVALD_MAIL_FROM"},
		{"smtp://u:" + secret + "@mail.example.com", "Name <a@b.example>\r\nBcc: x@y.example", "APPROVALD_MAIL_FROM"},
	} {
		_, err := NewSMTP(tc.url, tc.from)
		if err == nil {
			t.Errorf("NewSMTP(%q, %q): no error", tc.url, tc.from)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewSMTP(%q, %q) = %q, want it to name %s", tc.url, tc.from, err, tc.want)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("NewSMTP(%q, %q) = %q: contains the password", tc.url, tc.from, err)
		}
	}
}
