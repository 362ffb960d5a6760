package demo

import (
	"net/http"
	"regexp"
	"strings"
	"time"
)

// segment is a piece of a mail's text: plain text, or a link.
type segment struct {
	Text string
	Link bool
}

var linkRE = regexp.MustCompile(`https?://[^\s<>"']+`)

// segments splits text into text and http(s) links, so the template can
// make the links clickable while escaping everything.
func segments(text string) []segment {
	var out []segment
	last := 0
	for _, m := range linkRE.FindAllStringIndex(text, -1) {
		end := m[1]
		for end > m[0] && strings.ContainsRune(".,;:)]", rune(text[end-1])) {
			end--
		}
		if m[0] > last {
			out = append(out, segment{Text: text[last:m[0]]})
		}
		out = append(out, segment{Text: text[m[0]:end], Link: true})
		last = end
	}
	if last < len(text) {
		out = append(out, segment{Text: text[last:]})
	}
	return out
}

type mailRow struct {
	Kind, To, Subject string
	At                time.Time
	Body              []segment
}

// mailbox lists the mails the development sender kept, newest first. The
// links in them are live: whoever reads this page can approve with them,
// which is why it exists only with --demo and without SMTP.
func (s *Site) mailbox(w http.ResponseWriter, r *http.Request) {
	var list []mailRow
	for _, m := range s.opts.Mail.Recent() {
		list = append(list, mailRow{Kind: m.Kind, To: m.To, Subject: m.Subject, At: m.At, Body: segments(m.Text)})
	}
	sess, _ := s.session(r)
	s.render(w, r, http.StatusOK, "mail.html", "Mailbox", sess, list)
}
