// Package demo is approvald's demo (approvald serve --demo): a stand-in of
// the clicktopurchase site at /demo/ that is a real relying party of
// approvald's public HTTP API (it holds an API key and calls the API over
// HTTP like any RP backend), an in-browser phone at /demo/phone that is a
// real device client of the protocol (WebCrypto keys, signed JWS), and the
// development mailbox at /demo/mail.
//
// Pages are server-rendered from embedded templates; scripts and styles are
// separate embedded files under /demo/assets/, so the Content-Security-Policy
// allows no inline script.
package demo

import (
	"bytes"
	"embed"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/clicktopurchase/approvald/internal/mail"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static/*
var staticFS embed.FS

// UserPrefix is put before every demo user name to make the user_id the
// demo sends to approvald, so that a demo left running on a real database
// can never act on (link a device to, remove the device of) a real user.
const UserPrefix = "demo:"

// Options configure the demo.
type Options struct {
	// PublicURL is approvald's public URL: the pages are served from it and
	// the site calls the API there.
	PublicURL string
	// APIKey is the site's API key.
	APIKey string
	// Brand is the product name shown on the pages.
	Brand string
	// Mail is the development sender whose mails /demo/mail lists; nil
	// (an SMTP server is configured) means no mailbox.
	Mail *mail.Dev
	// ClientIP tells the browser's address, reported to approvald as the
	// requester's ip (nil: the connection's address).
	ClientIP func(*http.Request) string
	// HTTP is the client for API calls (nil: a client with a 40 s timeout).
	HTTP *http.Client
	// Log receives errors (nil: slog.Default()).
	Log *slog.Logger
}

// Site serves the demo pages.
type Site struct {
	opts   Options
	api    *apiClient
	log    *slog.Logger
	pages  map[string]*template.Template
	cookie *cookieCodec
	origin string // scheme://host of PublicURL
	host   string // host[:port] of PublicURL
	secure bool

	mu          sync.Mutex
	challenges  map[string]*pendingChallenge
	enrollments map[string]*pendingEnrollment
}

// New builds the demo site.
func New(o Options) *Site {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 40 * time.Second}
	}
	if o.Brand == "" {
		o.Brand = "clicktopurchase"
	}
	o.PublicURL = strings.TrimRight(o.PublicURL, "/")
	s := &Site{
		opts:        o,
		api:         &apiClient{base: o.PublicURL, key: o.APIKey, hc: o.HTTP},
		log:         o.Log,
		cookie:      newCookieCodec(),
		challenges:  map[string]*pendingChallenge{},
		enrollments: map[string]*pendingEnrollment{},
	}
	if u, err := url.Parse(o.PublicURL); err == nil {
		s.origin = strings.ToLower(u.Scheme + "://" + u.Host)
		s.host = strings.ToLower(u.Host)
		s.secure = u.Scheme == "https"
	}
	s.pages = parsePages()
	return s
}

func parsePages() map[string]*template.Template {
	base := template.Must(template.New("").Funcs(template.FuncMap{
		"time": func(t time.Time) string { return t.UTC().Format("2 Jan 2006, 15:04:05 UTC") },
	}).ParseFS(templateFS, "templates/layout.html"))
	out := map[string]*template.Template{}
	names, _ := templateFS.ReadDir("templates")
	for _, n := range names {
		if n.Name() == "layout.html" {
			continue
		}
		t := template.Must(base.Clone())
		out[n.Name()] = template.Must(t.ParseFS(templateFS, "templates/"+n.Name()))
	}
	return out
}

// Register adds the demo routes to mux.
func (s *Site) Register(mux *http.ServeMux) {
	h := func(pattern string, f http.HandlerFunc) { mux.Handle(pattern, s.guard(f)) }
	mux.Handle("GET /demo", http.RedirectHandler("/demo/", http.StatusSeeOther))
	h("GET /demo/{$}", s.home)
	h("POST /demo/signin", s.signIn)
	h("POST /demo/signout", s.signOut)
	h("POST /demo/link", s.startLink)
	h("GET /demo/link/{id}", s.linkPage)
	h("GET /demo/link/{id}/qr.png", s.linkQR)
	h("POST /demo/actions/{kind}", s.startAction)
	h("GET /demo/wait/{id}", s.waitPage)
	h("POST /demo/wait/{id}/done", s.done)
	h("GET /demo/device", s.devicePage)
	h("POST /demo/device/change", s.changeDevice)
	h("POST /demo/device/remove", s.removeDevice)
	h("GET /demo/phone", s.phone)
	if s.opts.Mail != nil {
		h("GET /demo/mail", s.mailbox)
	}
	mux.HandleFunc("GET /demo/assets/{file}", s.asset)
}

// guard sets the headers of every page and refuses cross-site form posts
// (the session cookie is SameSite=Lax already; this also covers browsers
// that send a foreign Origin on a top-level POST).
func (s *Site) guard(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.pageHeaders(w)
		if r.Method == http.MethodPost {
			if o := r.Header.Get("Origin"); o != "" && !s.sameOrigin(r, o) {
				s.message(w, r, http.StatusForbidden, "Refused", "This form was posted from another site.")
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
		}
		next(w, r)
	})
}

func (s *Site) sameOrigin(r *http.Request, origin string) bool {
	o := strings.ToLower(origin)
	if o == s.origin {
		return true
	}
	scheme := "http://"
	if r.TLS != nil {
		scheme = "https://"
	}
	return o == scheme+strings.ToLower(r.Host)
}

// pageHeaders: no caching, no referrer to other sites, no framing;
// scripts, styles and connections only to this origin (plus its
// WebSocket), images from here or data: URIs. (Referrer-Policy is
// same-origin, not no-referrer: with no-referrer the browser sends
// "Origin: null" on our own form posts, which the guard refuses.)
func (s *Site) pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	connect := "'self'"
	if s.host != "" {
		connect += " ws://" + s.host + " wss://" + s.host
	}
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src "+connect+
		"; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
}

var assetTypes = map[string]string{
	".css": "text/css; charset=utf-8",
	".js":  "text/javascript; charset=utf-8",
	".svg": "image/svg+xml",
}

func (s *Site) asset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	ct, ok := assetTypes[path.Ext(name)]
	b, err := staticFS.ReadFile("static/" + name)
	if !ok || err != nil || strings.Contains(name, "/") {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(b)
}

// page is what every template gets.
type page struct {
	Brand    string
	Title    string
	User     string // the signed-in user's name, "" when signed out
	Email    string
	Mailbox  bool
	WrongURL string // the public URL, set when the page was opened at another host
	Data     any
}

func (s *Site) render(w http.ResponseWriter, r *http.Request, status int, name, title string, sess *session, data any) {
	p := page{Brand: s.opts.Brand, Title: title, Mailbox: s.opts.Mail != nil, Data: data}
	if sess != nil && sess.In {
		p.User, p.Email = sess.User, sess.Email
	}
	if s.host != "" && !strings.EqualFold(r.Host, s.host) {
		p.WrongURL = s.opts.PublicURL + "/demo/"
	}
	var buf bytes.Buffer
	if err := s.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		s.log.Error("demo: render", "page", name, "err", err)
		http.Error(w, "Something went wrong.", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

type messageData struct {
	State, Heading, Text string
}

// message renders a short page with a heading and a sentence.
func (s *Site) message(w http.ResponseWriter, r *http.Request, status int, heading, text string) {
	state := "error"
	if status < 400 {
		state = "ok"
	}
	sess, _ := s.session(r)
	s.render(w, r, status, "message.html", heading, sess, messageData{State: state, Heading: heading, Text: text})
}

func (s *Site) clientIP(r *http.Request) string {
	if s.opts.ClientIP != nil {
		return s.opts.ClientIP(r)
	}
	host := r.RemoteAddr
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = strings.Trim(host[:i], "[]")
	}
	return host
}
