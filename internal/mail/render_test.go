package mail_test

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/mail"
)

func TestRenderChallengeDefaults(t *testing.T) {
	base := mail.ChallengeMail{
		Brand: "clicktopurchase", To: testTo, Action: "verify_property",
		RequestedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Link:        testLink,
		ExpiresAt:   time.Date(2026, 1, 2, 3, 14, 5, 0, time.UTC),
	}
	m, err := mail.RenderChallenge(base)
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind != mail.KindChallenge || m.To != testTo || m.Subject != "clicktopurchase - Two-Factor Authentication Request" {
		t.Errorf("%+v", m)
	}
	for _, part := range []string{m.Text, m.HTML} {
		for _, want := range []string{"Verify property", "IP address", "unknown", "Fri 2 Jan 2026, 03:04 UTC", "03:14 UTC"} {
			if !strings.Contains(part, want) {
				t.Errorf("lacks %q:\n%s", want, part)
			}
		}
	}
	if !strings.HasPrefix(m.Text, "Approve \u201cVerify property\u201d?\n") {
		t.Errorf("derived heading: %q", strings.SplitN(m.Text, "\n", 2)[0])
	}

	b := base
	b.Action = "login"
	if m, _ := mail.RenderChallenge(b); !strings.HasPrefix(m.Text, "Approve this sign-in?") {
		t.Errorf("login heading: %q", strings.SplitN(m.Text, "\n", 2)[0])
	}
	b.Brand = "Ĉlick ✓"
	if m, _ := mail.RenderChallenge(b); m.Subject != "Ĉlick ✓ - Two-Factor Authentication Request" {
		t.Errorf("Subject %q", m.Subject)
	}
}

func TestRenderChallengeNeutralisesValues(t *testing.T) {
	m, err := mail.RenderChallenge(mail.ChallengeMail{
		Brand: "clicktopurchase", To: testTo, Action: "submit_offer",
		ActionText: "Approve\n\nhttps://evil.example/ offer?",
		Context: []mail.KV{
			{Name: "Offer\r\nLink", Value: "1\nhttps://evil.example/e/x\n"},
			{Name: "Name", Value: "abc\u202Egpj.exe"},
			{Name: `"><a href="https://evil.example/">`, Value: `<img src=x onerror=alert(1)>`},
		},
		RequestedAt: time.Now(), IP: "2001:db8::1", Link: testLink, ExpiresAt: time.Now().Add(10 * time.Minute),
	})
	if err != nil {
		t.Fatal(err)
	}
	// No value starts a line of its own in the text part.
	for _, line := range strings.Split(m.Text, "\n") {
		if strings.HasPrefix(line, "https://evil") {
			t.Errorf("a value forged a line: %q", line)
		}
	}
	if strings.ContainsRune(m.Text+m.HTML, '\u202E') {
		t.Error("bidi override kept")
	}
	if !strings.Contains(m.Text, "Offer  Link: 1 https://evil.example/e/x ") {
		t.Errorf("text:\n%s", m.Text)
	}
	if strings.Contains(m.HTML, "<img") || strings.Count(m.HTML, "<a ") != 1 || strings.Count(m.HTML, `href="`) != 1 {
		t.Errorf("HTML not neutralised:\n%s", m.HTML)
	}
	if !strings.Contains(m.HTML, "&lt;img src=x onerror=alert(1)&gt;") {
		t.Errorf("HTML lacks the escaped value")
	}
}

func TestRenderChallengeRejects(t *testing.T) {
	ok := mail.ChallengeMail{
		Brand: "b", To: testTo, Action: "login", RequestedAt: time.Now(), Link: testLink,
		ExpiresAt: time.Now().Add(time.Minute),
	}
	if _, err := mail.RenderChallenge(ok); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*mail.ChallengeMail){
		"no brand":         func(c *mail.ChallengeMail) { c.Brand = " " },
		"brand with CRLF":  func(c *mail.ChallengeMail) { c.Brand = "a\r\nBcc: x@y.example" },
		"bad to":           func(c *mail.ChallengeMail) { c.To = "alice" },
		"bad action":       func(c *mail.ChallengeMail) { c.Action = "Log In" },
		"javascript link":  func(c *mail.ChallengeMail) { c.Link = "javascript:alert(1)" },
		"relative link":    func(c *mail.ChallengeMail) { c.Link = "/e/abc" },
		"link with spaces": func(c *mail.ChallengeMail) { c.Link = "https://a.example/e/x y" },
		"no requested at":  func(c *mail.ChallengeMail) { c.RequestedAt = time.Time{} },
		"no expiry":        func(c *mail.ChallengeMail) { c.ExpiresAt = time.Time{} },
	} {
		c := ok
		mod(&c)
		if _, err := mail.RenderChallenge(c); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestRenderDeviceNotice(t *testing.T) {
	const undo = "https://approve.example.com/e/dW5kb3Rva2VuMTIzNDU2Nzg5MGFi"
	linked := time.Date(2026, 5, 1, 22, 30, 0, 0, time.FixedZone("EDT", -4*3600))
	m, err := mail.RenderDeviceNotice(mail.DeviceNotice{
		Brand: "clicktopurchase", To: "Bob <bob@example.net>", DeviceName: `Bob's "Pixel" <8> & co`,
		LinkedAt: linked, IP: "198.51.100.23", Link: undo,
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "clicktopurchase - A new device was linked to your account" || m.Kind != mail.KindDeviceLinked ||
		m.To != "Bob <bob@example.net>" {
		t.Errorf("%q %q %q", m.Subject, m.Kind, m.To)
	}
	for _, want := range []string{
		`Device: Bob's "Pixel" <8> & co`, "Linked: Sat 2 May 2026, 02:30 UTC", "IP address: 198.51.100.23",
		"This wasn't me", "for 7 days, until Sat 9 May 2026, 02:30 UTC", "unlinked",
	} {
		if !strings.Contains(m.Text, want) {
			t.Errorf("text lacks %q:\n%s", want, m.Text)
		}
	}
	if strings.Count(m.Text, undo) != 1 || strings.Count(m.Text, "https://") != 1 {
		t.Errorf("text links:\n%s", m.Text)
	}
	for _, want := range []string{
		"Bob&#39;s &#34;Pixel&#34; &lt;8&gt; &amp; co", "Sat 2 May 2026, 02:30 UTC", "198.51.100.23",
		"This wasn't me", "for 7 days, until Sat 9 May 2026, 02:30 UTC",
	} {
		if !strings.Contains(m.HTML, want) {
			t.Errorf("HTML lacks %q:\n%s", want, m.HTML)
		}
	}
	hrefs := regexp.MustCompile(`href="([^"]*)"`).FindAllStringSubmatch(m.HTML, -1)
	if len(hrefs) != 1 || hrefs[0][1] != undo {
		t.Errorf("HTML links %q", hrefs)
	}

	// An explicit expiry, an unknown IP.
	m, err = mail.RenderDeviceNotice(mail.DeviceNotice{
		Brand: "b", To: "bob@example.net", DeviceName: "iPhone", LinkedAt: linked, Link: undo,
		ExpiresAt: linked.Add(36 * time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m.Text, "valid until Sun 3 May 2026, 14:30 UTC") || !strings.Contains(m.Text, "IP address: unknown") {
		t.Errorf("text:\n%s", m.Text)
	}

	for name, d := range map[string]mail.DeviceNotice{
		"no name":  {Brand: "b", To: testTo, LinkedAt: linked, Link: undo},
		"no time":  {Brand: "b", To: testTo, DeviceName: "x", Link: undo},
		"bad link": {Brand: "b", To: testTo, DeviceName: "x", LinkedAt: linked, Link: "data:text/html,x"},
		"bad to":   {Brand: "b", To: "", DeviceName: "x", LinkedAt: linked, Link: undo},
		"no brand": {To: testTo, DeviceName: "x", LinkedAt: linked, Link: undo},
	} {
		if _, err := mail.RenderDeviceNotice(d); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestHTMLIsSelfContained(t *testing.T) {
	for _, h := range []string{challenge(t).HTML} {
		low := strings.ToLower(h)
		for _, bad := range []string{"<script", "<style", "<link", "<img", "src=", "url(", "@import", "class="} {
			if strings.Contains(low, bad) {
				t.Errorf("HTML contains %q", bad)
			}
		}
		if !strings.Contains(low, `name="viewport"`) {
			t.Error("no viewport meta")
		}
	}
}
