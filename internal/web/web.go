// Package web serves approvald's server-rendered pages: the email link's
// confirmation page at /e/{token}. Pages are plain HTML from embedded
// templates, readable on a phone, with no JavaScript.
package web

import (
	"bytes"
	"embed"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static/*
var staticFS embed.FS

// Pages serves the email-link pages.
type Pages struct {
	ip    func(*http.Request) string
	svc   *approval.Service
	brand string
	log   *slog.Logger
	tmpl  *template.Template
}

// New builds the pages; clientIP tells the client's address (trusted
// proxies considered) for the audit log.
func New(svc *approval.Service, brand string, log *slog.Logger, clientIP func(*http.Request) string) *Pages {
	t := template.Must(template.New("").Funcs(template.FuncMap{
		"time": func(t time.Time) string { return t.UTC().Format("2 Jan 2006, 15:04 UTC") },
	}).ParseFS(templateFS, "templates/*.html"))
	return &Pages{svc: svc, brand: brand, log: log, tmpl: t, ip: clientIP}
}

// Register adds the routes to mux.
func (p *Pages) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /e/{token}", p.get)
	mux.HandleFunc("POST /e/{token}", p.post)
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.HandlerFunc(p.static)))
}

// pageHeaders are sent with every page: no caching, no referrer (the URL
// carries a secret), no framing, nothing but our own styles.
func pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
}

func (p *Pages) static(w http.ResponseWriter, r *http.Request) {
	b, err := staticFS.ReadFile("static/" + r.URL.Path)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Header().Set("Cache-Control", "public, max-age=3600")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(b)
}

type view struct {
	Brand     string
	State     string
	Title     string
	Question  string
	Context   []approval.Member
	Requested time.Time
	IP        string
	UserAgent string
	Number    bool
	Left      int
	Status    string
	Device    *approval.Device
}

func (p *Pages) get(w http.ResponseWriter, r *http.Request) {
	page, err := p.svc.OpenLink(r.Context(), r.PathValue("token"))
	p.render(w, r, page, err)
}

func (p *Pages) post(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		pageHeaders(w)
		status := http.StatusBadRequest
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			status = http.StatusRequestEntityTooLarge
		}
		http.Error(w, "The form could not be read. Nothing was changed.", status)
		return
	}
	decision := r.PostForm.Get("decision")
	if decision != "approve" && decision != "deny" {
		page, err := p.svc.OpenLink(r.Context(), r.PathValue("token"))
		p.render(w, r, page, err)
		return
	}
	page, err := p.svc.ActOnLink(r.Context(), r.PathValue("token"), decision, r.PostForm.Get("number"), p.ip(r))
	p.render(w, r, page, err)
}

var statusOf = map[string]int{
	approval.PageUnknown: http.StatusNotFound,
	approval.PageUsed:    http.StatusGone,
	approval.PageExpired: http.StatusGone,
}

func (p *Pages) render(w http.ResponseWriter, r *http.Request, page *approval.LinkPage, err error) {
	pageHeaders(w)
	if err != nil {
		p.log.Error("email link page", "err", err)
		page = &approval.LinkPage{State: "error"}
	}
	v := view{Brand: p.brand, State: page.State, Left: page.Left, Status: page.Status, Device: page.Device}
	if c := page.Challenge; c != nil {
		v.Question = p.svc.ActionTitle(c.Action)
		v.Context = approval.ContextMembers(c.Context)
		v.Requested, v.IP, v.UserAgent, v.Number = c.CreatedAt, c.RequesterIP, c.RequesterUA, c.Number != ""
	}
	status := http.StatusOK
	if s, ok := statusOf[page.State]; ok {
		status = s
	}
	if page.State == "error" {
		status = http.StatusInternalServerError
	}
	var buf bytes.Buffer
	if err := p.tmpl.ExecuteTemplate(&buf, "page.html", v); err != nil {
		p.log.Error("render page", "err", err)
		http.Error(w, "Something went wrong.", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
