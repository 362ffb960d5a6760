package mail

import (
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	netmail "net/mail"
	"net/url"
	"regexp"
	"strings"
	texttemplate "text/template"
	"time"
	"unicode"
	"unicode/utf8"
)

//go:embed templates
var templateFS embed.FS

var (
	challengeText = texttemplate.Must(texttemplate.ParseFS(templateFS, "templates/challenge.txt"))
	challengeHTML = htmltemplate.Must(htmltemplate.ParseFS(templateFS, "templates/layout.html", "templates/challenge.html"))
	deviceText    = texttemplate.Must(texttemplate.ParseFS(templateFS, "templates/device.txt"))
	deviceHTML    = htmltemplate.Must(htmltemplate.ParseFS(templateFS, "templates/layout.html", "templates/device.html"))
)

// DeviceLinkValidity is how long the "This wasn't me" link of a new-device
// notice lives unless DeviceNotice.ExpiresAt says otherwise.
const DeviceLinkValidity = 7 * 24 * time.Hour

// KV is one member of a challenge's context, shown as "Name: Value".
type KV struct{ Name, Value string }

// ChallengeMail is what the challenge email shows.
type ChallengeMail struct {
	// Brand names the service ("clicktopurchase").
	Brand string
	// To is the recipient.
	To string
	// Action is the challenge's action, e.g. "submit_offer".
	Action string
	// ActionText is the heading, e.g. "Approve your offer?". If empty, one
	// is derived from Action.
	ActionText string
	// Context is shown in this order, as text.
	Context []KV
	// RequestedAt is when the challenge was created.
	RequestedAt time.Time
	// IP is the requesting client's address; empty shows "unknown".
	IP string
	// Link is the one link of the mail, <public url>/e/<token>.
	Link string
	// ExpiresAt is when the link dies.
	ExpiresAt time.Time
}

// DeviceNotice is what the new-device email shows.
type DeviceNotice struct {
	// Brand names the service ("clicktopurchase").
	Brand string
	// To is the recipient.
	To string
	// DeviceName is the name the device gave when linking.
	DeviceName string
	// LinkedAt is when the device was linked.
	LinkedAt time.Time
	// IP is the linking device's address; empty shows "unknown".
	IP string
	// Link is the "This wasn't me" link.
	Link string
	// ExpiresAt is when Link dies; zero means LinkedAt + DeviceLinkValidity.
	ExpiresAt time.Time
}

type challengeView struct {
	Brand, Subject, Heading, Action string
	Context                         []KV
	RequestedAt, IP, Link           string
	ExpiresAt                       string
}

type deviceView struct {
	Brand, Subject, DeviceName string
	LinkedAt, IP, Link         string
	Validity                   string
}

var actionRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)

// RenderChallenge renders the challenge email: subject
// "<Brand> - Two-Factor Authentication Request", a text and an HTML part that
// show the action, each context member, the time (UTC), the requesting IP,
// the one link, its expiry, and what to do if it wasn't you. All values are
// shown as text: HTML-escaped in the HTML part, with control and
// bidirectional-override characters replaced by spaces in both.
func RenderChallenge(c ChallengeMail) (Message, error) {
	var errs []error
	brand, err := checkBrand(c.Brand)
	errs = append(errs, err)
	errs = append(errs, checkTo(c.To))
	if !actionRE.MatchString(c.Action) {
		errs = append(errs, fmt.Errorf("mail: invalid action %q", c.Action))
	}
	link, err := checkLink(c.Link)
	errs = append(errs, err)
	if c.RequestedAt.IsZero() {
		errs = append(errs, errors.New("mail: RequestedAt is required"))
	}
	if c.ExpiresAt.IsZero() {
		errs = append(errs, errors.New("mail: ExpiresAt is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return Message{}, err
	}

	heading := clean(c.ActionText)
	if strings.TrimSpace(heading) == "" {
		heading = actionHeading(c.Action)
	}
	v := challengeView{
		Brand:       brand,
		Subject:     brand + " - Two-Factor Authentication Request",
		Heading:     heading,
		Action:      humanize(c.Action),
		Context:     make([]KV, 0, len(c.Context)),
		RequestedAt: formatTime(c.RequestedAt),
		IP:          orUnknown(c.IP),
		Link:        link,
		ExpiresAt:   formatTime(c.ExpiresAt),
	}
	for _, kv := range c.Context {
		v.Context = append(v.Context, KV{Name: clean(kv.Name), Value: clean(kv.Value)})
	}
	return render(c.To, KindChallenge, v.Subject, v, challengeText, challengeHTML)
}

// RenderDeviceNotice renders the new-device email: subject
// "<Brand> - A new device was linked to your account", with the device's
// name, the time (UTC) and IP, and the "This wasn't me" link with its
// validity (7 days by default). Values are shown as text, as in
// RenderChallenge.
func RenderDeviceNotice(d DeviceNotice) (Message, error) {
	var errs []error
	brand, err := checkBrand(d.Brand)
	errs = append(errs, err)
	errs = append(errs, checkTo(d.To))
	if strings.TrimSpace(d.DeviceName) == "" {
		errs = append(errs, errors.New("mail: DeviceName is required"))
	}
	link, err := checkLink(d.Link)
	errs = append(errs, err)
	if d.LinkedAt.IsZero() {
		errs = append(errs, errors.New("mail: LinkedAt is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return Message{}, err
	}

	exp := d.ExpiresAt
	if exp.IsZero() {
		exp = d.LinkedAt.Add(DeviceLinkValidity)
	}
	validity := "until " + formatTime(exp)
	if days := exp.Sub(d.LinkedAt); days > 0 && days%(24*time.Hour) == 0 {
		n := int(days / (24 * time.Hour))
		unit := "days"
		if n == 1 {
			unit = "day"
		}
		validity = fmt.Sprintf("for %d %s, until %s", n, unit, formatTime(exp))
	}
	v := deviceView{
		Brand:      brand,
		Subject:    brand + " - A new device was linked to your account",
		DeviceName: clean(d.DeviceName),
		LinkedAt:   formatTime(d.LinkedAt),
		IP:         orUnknown(d.IP),
		Link:       link,
		Validity:   validity,
	}
	return render(d.To, KindDeviceLinked, v.Subject, v, deviceText, deviceHTML)
}

func render(to, kind, subject string, view any, text *texttemplate.Template, html *htmltemplate.Template) (Message, error) {
	var tb, hb strings.Builder
	if err := text.Execute(&tb, view); err != nil {
		return Message{}, fmt.Errorf("mail: rendering %s text: %w", kind, err)
	}
	if err := html.Execute(&hb, view); err != nil {
		return Message{}, fmt.Errorf("mail: rendering %s HTML: %w", kind, err)
	}
	return Message{To: to, Subject: subject, Text: tb.String(), HTML: hb.String(), Kind: kind}, nil
}

func checkBrand(b string) (string, error) {
	b = strings.TrimSpace(b)
	if b == "" {
		return "", errors.New("mail: Brand is required")
	}
	if strings.ContainsFunc(b, isControl) {
		return "", errors.New("mail: Brand contains control characters")
	}
	return b, nil
}

func checkTo(to string) error {
	if _, err := netmail.ParseAddress(to); err != nil {
		return fmt.Errorf("mail: invalid recipient address %s", Mask(to))
	}
	return nil
}

// checkLink accepts an absolute http(s) URL, so that the template never has
// to neutralise it.
func checkLink(link string) (string, error) {
	u, err := url.Parse(link)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
		strings.ContainsFunc(link, func(r rune) bool { return isControl(r) || unicode.IsSpace(r) }) {
		return "", errors.New("mail: Link must be an absolute http(s) URL")
	}
	return link, nil
}

// formatTime shows t in UTC, e.g. "Mon 2 Jan 2006, 15:04 UTC".
func formatTime(t time.Time) string {
	return t.UTC().Format("Mon 2 Jan 2006, 15:04 UTC")
}

func orUnknown(ip string) string {
	ip = strings.TrimSpace(clean(ip))
	if ip == "" {
		return "unknown"
	}
	return ip
}

// actionHeading derives a heading from an action.
func actionHeading(action string) string {
	switch action {
	case "login":
		return "Approve this sign-in?"
	case "link_device":
		return "Approve linking a new device?"
	}
	return "Approve \u201c" + humanize(action) + "\u201d?"
}

// humanize turns "submit_offer" into "Submit offer".
func humanize(action string) string {
	s := strings.NewReplacer("_", " ", "-", " ", ".", " ").Replace(action)
	s = strings.Join(strings.Fields(s), " ")
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 {
		return s
	}
	return string(unicode.ToUpper(r)) + s[n:]
}

// clean replaces control characters (line breaks included: a value cannot
// fake a line of the text part) and bidirectional overrides (which can
// reorder what the reader sees) with spaces.
func clean(s string) string {
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isControl(r) {
			return ' '
		}
		return r
	}, s)
}

// isControl reports C0 and C1 controls, DEL, the invalid-UTF-8 marker and
// bidirectional formatting characters.
func isControl(r rune) bool {
	switch {
	case unicode.IsControl(r), r == utf8.RuneError:
		return true
	case r == '\u061c', r == '\u200e', r == '\u200f',
		r >= '\u202a' && r <= '\u202e',
		r >= '\u2066' && r <= '\u2069':
		return true
	}
	return false
}
