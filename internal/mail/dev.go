package mail

import (
	"context"
	"log/slog"
	netmail "net/mail"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// DefaultDevKeep is how many mails a Dev sender keeps when NewDev is given
// zero or less.
const DefaultDevKeep = 50

// Sent is a mail the Dev sender accepted, and when.
type Sent struct {
	Message
	At time.Time
}

// Dev is the development sender used when no SMTP URL is configured. It
// delivers nothing: it logs one line per mail (kind, masked recipient,
// subject; never the body or the link, which carries a secret) and keeps the
// last mails in memory, newest first, for the demo mailbox page. Whoever can
// read Recent can use the links in it, so that page belongs to a demo only.
// It is safe for concurrent use.
type Dev struct {
	log  *slog.Logger
	keep int

	mu   sync.Mutex
	ring []Sent // a ring buffer; next is the slot written next once full
	next int
}

// NewDev returns a development sender that logs with log (slog.Default if
// nil) and keeps the last keep mails (DefaultDevKeep if keep <= 0).
func NewDev(log *slog.Logger, keep int) *Dev {
	if log == nil {
		log = slog.Default()
	}
	if keep <= 0 {
		keep = DefaultDevKeep
	}
	return &Dev{log: log, keep: keep, ring: make([]Sent, 0, keep)}
}

// Send records m and logs one line about it. It fails only if ctx is done.
func (d *Dev) Send(ctx context.Context, m Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s := Sent{Message: m, At: time.Now().UTC()}
	d.mu.Lock()
	if len(d.ring) < d.keep {
		d.ring = append(d.ring, s)
	} else {
		d.ring[d.next] = s
	}
	d.next = (d.next + 1) % d.keep
	d.mu.Unlock()
	d.log.InfoContext(ctx, "mail not delivered (development sender)",
		slog.String("kind", m.Kind),
		slog.String("to", Mask(m.To)),
		slog.String("subject", m.Subject))
	return nil
}

// Recent returns the kept mails, newest first. The slice is a copy.
func (d *Dev) Recent() []Sent {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.ring)
	out := make([]Sent, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, d.ring[(d.next-i+n)%n])
	}
	return out
}

// Mask hides most of an address for logs and API answers:
// "alice@example.com" becomes "a•••@example.com" (the first character of the
// local part, then •••, then the domain); a display name is dropped; anything
// that is not an address becomes "•••".
func Mask(addr string) string {
	const dots = "•••"
	a, err := netmail.ParseAddress(strings.TrimSpace(addr))
	if err != nil {
		return dots
	}
	at := strings.LastIndexByte(a.Address, '@')
	if at <= 0 || at == len(a.Address)-1 {
		return dots
	}
	local, domain := a.Address[:at], a.Address[at+1:]
	r, _ := utf8.DecodeRuneInString(local)
	if r == utf8.RuneError || isControl(r) {
		return dots
	}
	return string(r) + dots + "@" + domain
}
