package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/mail"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	approvalmail "github.com/clicktopurchase/approvald/internal/mail"
	"rsc.io/qr"
)

// Purposes of the challenges the site creates.
const (
	purposeLogin    = "login"
	purposeVerify   = "verify_property"
	purposeOffer    = "submit_offer"
	purposeChange   = "change_device"
	purposeRemove   = "remove_device"
	actionLinkDev   = "link_device"
	pendingLifetime = 30 * time.Minute
)

type kv struct{ Name, Value string }

// pendingChallenge is what the site remembers of a challenge it created
// for a session: the browser only ever names it by id.
type pendingChallenge struct {
	ID, SID, UserID, Action, Purpose string
	DeviceID                         string // remove_device: the device to remove
	Context                          []kv
	WatchToken, Number, ExpiresAt    string
	Push                             string // delivery.push at creation
	Email                            bool   // email in methods and an address known
	Created                          time.Time
}

// pendingEnrollment is what the site remembers of an enrollment.
type pendingEnrollment struct {
	ID, SID, UserID, Code, URI, WatchToken, ExpiresAt, StepUp string
	Created                                                   time.Time
}

func (s *Site) remember(p *pendingChallenge) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.purgeLocked()
	s.challenges[p.ID] = p
}

func (s *Site) rememberEnrollment(e *pendingEnrollment) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.purgeLocked()
	s.enrollments[e.ID] = e
}

func (s *Site) purgeLocked() {
	cut := time.Now().Add(-pendingLifetime)
	for id, p := range s.challenges {
		if p.Created.Before(cut) {
			delete(s.challenges, id)
		}
	}
	for id, e := range s.enrollments {
		if e.Created.Before(cut) {
			delete(s.enrollments, id)
		}
	}
}

func (s *Site) challengeOf(sess *session, id string) *pendingChallenge {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.challenges[id]
	if p == nil || sess == nil || p.SID != sess.SID {
		return nil
	}
	return p
}

func (s *Site) enrollmentOf(sess *session, id string) *pendingEnrollment {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.enrollments[id]
	if e == nil || sess == nil || e.SID != sess.SID {
		return nil
	}
	return e
}

// signedIn returns the signed-in session, or redirects to the sign-in page
// and returns nil.
func (s *Site) signedIn(w http.ResponseWriter, r *http.Request) *session {
	sess, _ := s.session(r)
	if sess == nil || !sess.In {
		http.Redirect(w, r, "/demo/", http.StatusSeeOther)
		return nil
	}
	return sess
}

// apiFailure shows an error answer of approvald (or a failed call).
func (s *Site) apiFailure(w http.ResponseWriter, r *http.Request, err error) {
	var e *apiError
	if errors.As(err, &e) {
		status := e.Status
		if status >= 500 {
			status = http.StatusBadGateway
		}
		text := e.Detail
		switch e.Code {
		case "user_locked":
			text = "Requests on this account are paused for 15 minutes after a “This wasn't me”. " + e.Detail
		case "rate_limited":
			text = "Too many requests: wait a little and try again. " + e.Detail
		case "no_device":
			text = "There is no linked device to ask. Link one first."
		}
		s.message(w, r, status, "approvald said no ("+e.Code+")", text)
		return
	}
	s.log.Error("demo: calling approvald", "err", err)
	s.message(w, r, http.StatusBadGateway, "approvald could not be reached", "The demo site could not call approvald's API at "+s.opts.PublicURL+". Is APPROVALD_PUBLIC_URL the address this instance is reachable at?")
}

type deviceRow struct {
	ID, Name, Platform, Provider, Linked, LastSeen string
}

func rows(ds []device) []deviceRow {
	out := make([]deviceRow, 0, len(ds))
	for _, d := range ds {
		row := deviceRow{ID: d.ID, Name: d.Name, Platform: d.Platform, Provider: d.PushProvider, Linked: showTime(d.CreatedAt), LastSeen: "never"}
		if d.LastSeenAt != nil {
			row.LastSeen = showTime(*d.LastSeenAt)
		}
		out = append(out, row)
	}
	return out
}

func showTime(rfc string) string {
	t, err := time.Parse(time.RFC3339Nano, rfc)
	if err != nil {
		return rfc
	}
	return t.UTC().Format("2 Jan 2006, 15:04 UTC")
}

type homeData struct {
	Error       string
	FormUser    string
	FormEmail   string
	WaitingFor  string // a sign-in waits for approval
	Devices     []deviceRow
	DeviceError string
}

func (s *Site) home(w http.ResponseWriter, r *http.Request) {
	sess, _ := s.session(r)
	if sess == nil || !sess.In {
		d := homeData{}
		if sess != nil {
			d.WaitingFor, d.FormUser, d.FormEmail = sess.User, sess.User, sess.Email
		}
		s.render(w, r, http.StatusOK, "signin.html", "Sign in", sess, d)
		return
	}
	d := homeData{}
	ds, err := s.api.devices(r.Context(), sess.UserID())
	if err != nil {
		d.DeviceError = err.Error()
	}
	d.Devices = rows(ds)
	s.render(w, r, http.StatusOK, "home.html", "Your account", sess, d)
}

func printable(v string, max int) bool {
	if v == "" || len(v) > max {
		return false
	}
	for _, c := range v {
		if !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}

func (s *Site) signIn(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.PostFormValue("user"))
	email := strings.TrimSpace(r.PostFormValue("email"))
	d := homeData{FormUser: name, FormEmail: email}
	if !printable(name, 64) {
		d.Error = "Type a user name of 1 to 64 characters."
	} else if a, err := mail.ParseAddress(email); err != nil || a.Address != email || len(email) > 254 {
		d.Error = "Type an email address like alice@example.com: the demo's mails go to the mailbox page, nowhere else."
	}
	if d.Error != "" {
		s.render(w, r, http.StatusBadRequest, "signin.html", "Sign in", nil, d)
		return
	}
	sess := &session{SID: randomID(), User: name, Email: email}
	if old, _ := s.session(r); old != nil && old.User == name {
		sess.SID = old.SID // a sign-in again replaces the one still waiting
	}
	ds, err := s.api.devices(r.Context(), sess.UserID())
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	if len(ds) == 0 {
		sess.In = true
		s.setSession(w, sess)
		http.Redirect(w, r, "/demo/", http.StatusSeeOther)
		return
	}
	// A linked device makes the sign-in itself a protected action.
	p, err := s.challenge(r.Context(), r, sess, purposeLogin, "login", []kv{{"Site", s.opts.Brand}, {"Account", name}}, nil, false)
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	s.setSession(w, sess)
	http.Redirect(w, r, "/demo/wait/"+p.ID, http.StatusSeeOther)
}

func (s *Site) signOut(w http.ResponseWriter, r *http.Request) {
	s.clearSession(w)
	http.Redirect(w, r, "/demo/", http.StatusSeeOther)
}

// challenge creates a challenge for the session and remembers it. Like
// an RP that keeps one pending action per session, it first cancels the
// session's earlier challenges that are still pending (a user who walks
// away from a waiting page would otherwise run into the limit of pending
// challenges).
func (s *Site) challenge(ctx context.Context, r *http.Request, sess *session, purpose, action string, c []kv, methods []string, numberMatching bool) (*pendingChallenge, error) {
	var earlier []string
	s.mu.Lock()
	for id, p := range s.challenges {
		if p.SID == sess.SID {
			earlier = append(earlier, id)
			delete(s.challenges, id)
		}
	}
	s.mu.Unlock()
	for _, id := range earlier {
		_ = s.api.do(ctx, http.MethodPost, "/v1/challenges/"+url.PathEscape(id)+"/cancel", nil, nil) // 409 once final: fine
	}
	m := orderedJSON(c)
	ua := r.UserAgent()
	if len(ua) > 512 {
		ua = ua[:512]
	}
	ch, err := s.api.createChallenge(ctx, challengeReq{UserID: sess.UserID(), Action: action, Context: m, UserEmail: sess.Email,
		IP: s.clientIP(r), UserAgent: ua, Methods: methods, NumberMatching: numberMatching})
	if err != nil {
		return nil, err
	}
	p := &pendingChallenge{ID: ch.ID, SID: sess.SID, UserID: sess.UserID(), Action: action, Purpose: purpose, Context: c,
		WatchToken: ch.WatchToken, Number: ch.Number, ExpiresAt: ch.ExpiresAt, Push: ch.Delivery.Push, Created: time.Now()}
	for _, x := range ch.Methods {
		p.Email = p.Email || (x == "email" && sess.Email != "")
	}
	s.remember(p)
	return p, nil
}

// orderedJSON encodes c as a JSON object keeping its order (a Go map
// would sort the members, and the phone shows them in the RP's order).
func orderedJSON(c []kv) json.RawMessage {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, x := range c {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(x.Name)
		v, _ := json.Marshal(x.Value)
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes()
}

func (s *Site) startLink(w http.ResponseWriter, r *http.Request) {
	sess := s.signedIn(w, r)
	if sess == nil {
		return
	}
	s.link(w, r, sess, "")
}

// link starts an enrollment (authorizedBy: an approved link_device
// challenge, when the user has a device) and shows the link page.
func (s *Site) link(w http.ResponseWriter, r *http.Request, sess *session, authorizedBy string) {
	e, err := s.api.createEnrollment(r.Context(), enrollmentReq{UserID: sess.UserID(), UserEmail: sess.Email, AuthorizedBy: authorizedBy})
	var ae *apiError
	if errors.As(err, &ae) && ae.Code == "step_up_required" {
		s.message(w, r, http.StatusConflict, "You already have a linked device",
			"To link another phone, open “Manage your linked device” and change it: your current phone (or, if it is lost, your email) approves first.")
		return
	}
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	s.rememberEnrollment(&pendingEnrollment{ID: e.ID, SID: sess.SID, UserID: sess.UserID(), Code: e.Code, URI: e.EnrollURI,
		WatchToken: e.WatchToken, ExpiresAt: e.ExpiresAt, StepUp: e.StepUpMethod, Created: time.Now()})
	http.Redirect(w, r, "/demo/link/"+e.ID, http.StatusSeeOther)
}

func (s *Site) linkPage(w http.ResponseWriter, r *http.Request) {
	sess := s.signedIn(w, r)
	if sess == nil {
		return
	}
	e := s.enrollmentOf(sess, r.PathValue("id"))
	if e == nil {
		s.message(w, r, http.StatusNotFound, "No such link code", "This code was not made for you, or the demo was restarted. Start again from your account page.")
		return
	}
	s.render(w, r, http.StatusOK, "link.html", "Link your device", sess, e)
}

func (s *Site) linkQR(w http.ResponseWriter, r *http.Request) {
	sess, _ := s.session(r)
	e := s.enrollmentOf(sess, r.PathValue("id"))
	if e == nil || sess == nil || !sess.In {
		http.NotFound(w, r)
		return
	}
	c, err := qr.Encode(e.URI, qr.M)
	if err != nil {
		s.log.Error("demo: QR code", "err", err)
		http.Error(w, "no QR code", http.StatusInternalServerError)
		return
	}
	c.Scale = 6
	w.Header().Set("Content-Type", "image/png")
	_, _ = w.Write(c.PNG())
}

// formatAmount turns "350000", "350,000" or "£350,000.00" into "£350,000".
func formatAmount(v string) (string, bool) {
	v = strings.TrimSpace(v)
	v = strings.TrimPrefix(v, "£")
	if i := strings.IndexByte(v, '.'); i >= 0 {
		v = v[:i]
	}
	v = strings.ReplaceAll(strings.ReplaceAll(v, ",", ""), " ", "")
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 || n > 1_000_000_000 {
		return "", false
	}
	digits := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, d := range digits {
		if i > 0 && (len(digits)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(d)
	}
	return "£" + b.String(), true
}

func (s *Site) startAction(w http.ResponseWriter, r *http.Request) {
	sess := s.signedIn(w, r)
	if sess == nil {
		return
	}
	property := strings.TrimSpace(r.PostFormValue("property"))
	if !printable(property, 200) {
		s.message(w, r, http.StatusBadRequest, "Which property?", "Type the property's address (1 to 200 characters).")
		return
	}
	nm := r.PostFormValue("number_matching") != ""
	var p *pendingChallenge
	var err error
	switch r.PathValue("kind") {
	case "verify":
		p, err = s.challenge(r.Context(), r, sess, purposeVerify, "verify_property", []kv{{"Property", property}}, nil, nm)
	case "offer":
		amount, ok := formatAmount(r.PostFormValue("amount"))
		if !ok {
			s.message(w, r, http.StatusBadRequest, "How much?", "Type the amount of your offer in pounds, like 350000.")
			return
		}
		p, err = s.challenge(r.Context(), r, sess, purposeOffer, "submit_offer", []kv{{"Property", property}, {"Offer", amount}}, nil, nm)
	default:
		s.message(w, r, http.StatusNotFound, "No such action", "")
		return
	}
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	http.Redirect(w, r, "/demo/wait/"+p.ID, http.StatusSeeOther)
}

var waitTitles = map[string]string{
	purposeLogin:  "Approve the sign-in",
	purposeVerify: "Confirm your verification request",
	purposeOffer:  "Confirm your offer",
	purposeChange: "Confirm linking a new device",
	purposeRemove: "Confirm removing your device",
}

type waitData struct {
	*pendingChallenge
	Title, MaskedEmail string
}

func (s *Site) waitPage(w http.ResponseWriter, r *http.Request) {
	sess, _ := s.session(r)
	p := s.challengeOf(sess, r.PathValue("id"))
	if p == nil {
		s.message(w, r, http.StatusNotFound, "Nothing is waiting here", "This request was not made in your session, or the demo was restarted. Start again from your account page.")
		return
	}
	s.render(w, r, http.StatusOK, "wait.html", waitTitles[p.Purpose], sess,
		waitData{pendingChallenge: p, Title: waitTitles[p.Purpose], MaskedEmail: approvalmail.Mask(sess.Email)})
}

type doneData struct {
	State, Purpose, Heading, Text, Status string
	Context                               []kv
}

// done is where the waiting page posts when the watch socket said
// "approved". The browser's word is not taken: the site asks approvald
// (GET /v1/challenges/{id}, with its API key) and accepts only a challenge
// it created for this session, approved, of this user and action, once.
func (s *Site) done(w http.ResponseWriter, r *http.Request) {
	sess, _ := s.session(r)
	id := r.PathValue("id")
	refuse := func(status int, cur, text string) {
		s.render(w, r, status, "done.html", "Not confirmed", sess, doneData{State: "refused", Status: cur,
			Heading: "We could not confirm this approval", Text: text})
	}
	p := s.challengeOf(sess, id)
	if p == nil {
		refuse(http.StatusForbidden, "", "This request was not made in your session (or was already completed), so nothing was done.")
		return
	}
	if p.Purpose != purposeLogin && !sess.In {
		refuse(http.StatusForbidden, "", "Sign in first.")
		return
	}
	ch, err := s.api.getChallenge(r.Context(), id)
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	if ch.UserID != p.UserID || ch.UserID != sess.UserID() || ch.Action != p.Action {
		refuse(http.StatusForbidden, ch.Status, "This approval is for another user or another action, so nothing was done.")
		return
	}
	if ch.Status != "approved" {
		refuse(http.StatusConflict, ch.Status, "approvald says this request is “"+ch.Status+"”, not approved, so nothing was done.")
		return
	}
	s.mu.Lock()
	if s.challenges[id] != p {
		s.mu.Unlock()
		refuse(http.StatusConflict, ch.Status, "This approval was already used.")
		return
	}
	delete(s.challenges, id)
	s.mu.Unlock()

	d := doneData{State: "approved", Purpose: p.Purpose, Status: ch.Status, Context: p.Context}
	switch p.Purpose {
	case purposeLogin:
		sess.In = true
		s.setSession(w, sess)
		d.Heading, d.Text = "Signed in", "Welcome back, "+sess.User+". Your phone approved the sign-in."
	case purposeVerify:
		d.Heading, d.Text = "Verification requested", "We asked the agent to verify the property. You will hear from them soon."
	case purposeOffer:
		d.Heading, d.Text = "Offer submitted", "Your offer was sent to the agent."
	case purposeRemove:
		if err := s.api.removeDevice(r.Context(), p.UserID, p.DeviceID, id); err != nil {
			s.apiFailure(w, r, err)
			return
		}
		d.Heading, d.Text = "Device removed", "The device can no longer approve anything for your account. Link a new one from your account page."
	case purposeChange:
		s.link(w, r, sess, id)
		return
	}
	s.render(w, r, http.StatusOK, "done.html", d.Heading, sess, d)
}

type deviceData struct {
	Devices     []deviceRow
	MaskedEmail string
}

func (s *Site) devicePage(w http.ResponseWriter, r *http.Request) {
	sess := s.signedIn(w, r)
	if sess == nil {
		return
	}
	ds, err := s.api.devices(r.Context(), sess.UserID())
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	s.render(w, r, http.StatusOK, "device.html", "Manage your linked device", sess, deviceData{Devices: rows(ds), MaskedEmail: approvalmail.Mask(sess.Email)})
}

// stepUpMethods: the current phone approves (push), or, for a user who
// says the phone is lost, the emailed link does.
func stepUpMethods(r *http.Request) []string {
	if r.PostFormValue("method") == "email" {
		return []string{"email"}
	}
	return []string{"push"}
}

func (s *Site) changeDevice(w http.ResponseWriter, r *http.Request) {
	sess := s.signedIn(w, r)
	if sess == nil {
		return
	}
	ds, err := s.api.devices(r.Context(), sess.UserID())
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	if len(ds) == 0 { // nothing to change: a first device needs no step-up
		s.link(w, r, sess, "")
		return
	}
	p, err := s.challenge(r.Context(), r, sess, purposeChange, actionLinkDev,
		[]kv{{"Request", "Link a new device"}, {"Current device", ds[len(ds)-1].Name}}, stepUpMethods(r), false)
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	http.Redirect(w, r, "/demo/wait/"+p.ID, http.StatusSeeOther)
}

func (s *Site) removeDevice(w http.ResponseWriter, r *http.Request) {
	sess := s.signedIn(w, r)
	if sess == nil {
		return
	}
	ds, err := s.api.devices(r.Context(), sess.UserID())
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	id := r.PostFormValue("device")
	var target *device
	for i := range ds {
		if ds[i].ID == id {
			target = &ds[i]
		}
	}
	if target == nil {
		s.message(w, r, http.StatusNotFound, "No such device", "That device is not linked to your account.")
		return
	}
	p, err := s.challenge(r.Context(), r, sess, purposeRemove, actionLinkDev,
		[]kv{{"Request", "Remove a device"}, {"Device", target.Name}}, stepUpMethods(r), false)
	if err != nil {
		s.apiFailure(w, r, err)
		return
	}
	s.mu.Lock()
	p.DeviceID = target.ID
	s.mu.Unlock()
	http.Redirect(w, r, "/demo/wait/"+p.ID, http.StatusSeeOther)
}

type phoneData struct{ Phone string }

// phoneName keeps ?phone= to letters, digits, space, '-' and '_' (at most
// 32): it names the phone's key store and its default device name.
func phoneName(v string) string {
	var b strings.Builder
	for _, c := range v {
		if b.Len() >= 32 {
			break
		}
		if unicode.IsLetter(c) || unicode.IsDigit(c) || c == ' ' || c == '-' || c == '_' {
			b.WriteRune(c)
		}
	}
	return strings.TrimSpace(b.String())
}

func (s *Site) phone(w http.ResponseWriter, r *http.Request) {
	name := phoneName(r.URL.Query().Get("phone"))
	if name == "" {
		name = "default"
	}
	sess, _ := s.session(r)
	s.render(w, r, http.StatusOK, "phone.html", "Phone", sess, phoneData{Phone: name})
}
