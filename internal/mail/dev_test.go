package mail_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/clicktopurchase/approvald/internal/mail"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestDev(t *testing.T) {
	var logs syncBuffer
	d := mail.NewDev(slog.New(slog.NewTextHandler(&logs, nil)), 3)
	var _ mail.Sender = d

	m := challenge(t)
	for i := range 5 {
		mm := m
		mm.Subject = fmt.Sprintf("mail %d", i)
		if err := d.Send(context.Background(), mm); err != nil {
			t.Fatal(err)
		}
	}
	got := d.Recent()
	if len(got) != 3 || got[0].Subject != "mail 4" || got[1].Subject != "mail 3" || got[2].Subject != "mail 2" {
		t.Fatalf("Recent: %+v", got)
	}
	if got[0].At.Before(got[2].At) || got[0].At.IsZero() || got[0].Text != m.Text || got[0].HTML != m.HTML {
		t.Errorf("kept mail: %+v", got[0])
	}

	out := logs.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d log lines, want 5:\n%s", len(lines), out)
	}
	for _, secret := range []string{testLink, "Zm9vYmFy", testTo, "Leeds", "https://"} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{"kind=challenge", "to=a•••@example.com", `subject="mail 4"`} {
		if !strings.Contains(lines[4], want) {
			t.Errorf("log line lacks %q: %s", want, lines[4])
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Send(ctx, m); err == nil {
		t.Error("Send with a done context succeeded")
	}
}

func TestDevDefaultsAndConcurrency(t *testing.T) {
	d := mail.NewDev(slog.New(slog.DiscardHandler), 0)
	var wg sync.WaitGroup
	for i := range 80 {
		wg.Go(func() {
			_ = d.Send(context.Background(), mail.Message{To: testTo, Subject: fmt.Sprint(i)})
			_ = d.Recent()
		})
	}
	wg.Wait()
	if n := len(d.Recent()); n != mail.DefaultDevKeep {
		t.Errorf("kept %d, want %d", n, mail.DefaultDevKeep)
	}
	if len(mail.NewDev(nil, 1).Recent()) != 0 {
		t.Error("new Dev not empty")
	}
}

func TestMask(t *testing.T) {
	for in, want := range map[string]string{
		"alice@example.com":             "a•••@example.com",
		"a@example.com":                 "a•••@example.com",
		"Alice <alice@example.com>":     "a•••@example.com",
		"  bob.smith+tag@mail.example ": "b•••@mail.example",
		"élodie@exemple.fr":             "é•••@exemple.fr",
		"user@[192.0.2.1]":              "u•••@[192.0.2.1]",
		"":                              "•••",
		"alice":                         "•••",
		"@example.com":                  "•••",
		"alice@":                        "•••",
		"a@b@c":                         "•••",
		"a@example.com, b@example.com":  "•••",
		"\x00@example.com":              "•••",
		"not an address at all":         "•••",
	} {
		if got := mail.Mask(in); got != want {
			t.Errorf("Mask(%q) = %q, want %q", in, got, want)
		}
	}
}
