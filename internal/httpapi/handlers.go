package httpapi

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/mail"
	"github.com/gorilla/websocket"
)

// waitParam reads ?wait=N (0..30 seconds).
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 30 {
		return 0, approval.Errorf(approval.CodeInvalidRequest, "wait must be a whole number of seconds from 0 to 30")
	}
	return time.Duration(n) * time.Second, nil
}

type createdEnrollment struct {
	ID           string `json:"id"`
	UserID       string `json:"user_id"`
	Status       string `json:"status"`
	Code         string `json:"code"`
	EnrollURI    string `json:"enroll_uri"`
	ExpiresAt    string `json:"expires_at"`
	WatchToken   string `json:"watch_token"`
	StepUpMethod string `json:"step_up_method,omitempty"`
}

func (s *Server) createEnrollment(w http.ResponseWriter, r *http.Request, a approval.Actor) {
	var req approval.CreateEnrollmentRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	ce, err := s.svc.CreateEnrollment(r.Context(), a, req)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	e := ce.Enrollment
	writeJSON(w, http.StatusCreated, createdEnrollment{ID: e.ID, UserID: e.UserID, Status: e.Status, Code: ce.Code,
		EnrollURI: ce.EnrollURI, ExpiresAt: approval.RFC3339(e.ExpiresAt), WatchToken: ce.WatchToken, StepUpMethod: e.StepUpMethod})
}

func (s *Server) getEnrollment(w http.ResponseWriter, r *http.Request, a approval.Actor) {
	e, err := s.svc.GetEnrollment(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, e.View())
}

func (s *Server) linkDevice(w http.ResponseWriter, r *http.Request) {
	var req approval.LinkDeviceRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	res, err := s.svc.LinkDevice(r.Context(), s.clientIP(r), req)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusCreated, res)
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request, a approval.Actor) {
	ds, err := s.svc.ListDevices(r.Context(), r.PathValue("user_id"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	out := make([]approval.DeviceView, 0, len(ds))
	for i := range ds {
		out = append(out, ds[i].View())
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out})
}

func (s *Server) removeDevice(w http.ResponseWriter, r *http.Request, a approval.Actor) {
	err := s.svc.RemoveDevice(r.Context(), a, r.PathValue("user_id"), r.PathValue("device_id"), r.URL.Query().Get("authorized_by"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setPush(w http.ResponseWriter, r *http.Request, d *approval.Device) {
	var req approval.PushRegistration
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if err := s.svc.SetPushToken(r.Context(), d, s.clientIP(r), req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) unlinkSelf(w http.ResponseWriter, r *http.Request, d *approval.Device) {
	if err := s.svc.UnlinkSelf(r.Context(), d, s.clientIP(r)); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) deviceChallenges(w http.ResponseWriter, r *http.Request, d *approval.Device) {
	wait, err := waitParam(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	list, err := s.svc.DeviceChallenges(r.Context(), d, wait)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	out := make([]approval.DeviceChallengeView, 0, len(list))
	for i := range list {
		out = append(out, list[i].DeviceView())
	}
	writeJSON(w, http.StatusOK, map[string]any{"challenges": out})
}

type decisionBody struct {
	Response string `json:"response"`
}

func (s *Server) decide(w http.ResponseWriter, r *http.Request) {
	var req decisionBody
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	res, err := s.svc.Decide(r.Context(), r.PathValue("id"), req.Response, s.clientIP(r))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) createChallenge(w http.ResponseWriter, r *http.Request, a approval.Actor) {
	var req approval.CreateChallengeRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	cc, err := s.svc.CreateChallenge(r.Context(), a, a.KeyID, r.Header.Get("Idempotency-Key"), req)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	v := cc.Challenge.View()
	v.WatchToken = cc.WatchToken
	writeJSON(w, http.StatusCreated, v)
}

func (s *Server) getChallenge(w http.ResponseWriter, r *http.Request, a approval.Actor) {
	wait, err := waitParam(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	c, err := s.svc.GetChallenge(r.Context(), r.PathValue("id"), wait)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, c.View())
}

func (s *Server) cancelChallenge(w http.ResponseWriter, r *http.Request, a approval.Actor) {
	if err := emptyBody(w, r); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	c, err := s.svc.CancelChallenge(r.Context(), a, r.PathValue("id"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, c.View())
}

// watchToken reads the watch token from ?token= or Authorization: Bearer.
func watchToken(r *http.Request) string {
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	return bearer(r)
}

func (s *Server) watchSocket(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	key, err := s.svc.ResolveWatchToken(r.Context(), r.URL.Query().Get("token"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if !s.originAllowed(r) {
		writeProblem(w, approval.Errorf(approval.CodeForbidden, "this origin may not watch"))
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		writeProblem(w, approval.Errorf(approval.CodeInvalidRequest, "this route upgrades to a WebSocket"))
		return
	}
	conn, err := s.upgrader.Upgrade(w, r, http.Header{"Cache-Control": {"no-store"}})
	if err != nil {
		return // the upgrader has answered
	}
	// The socket outlives this handler: returning frees the request's
	// goroutine and buffers, so an idle socket costs a third as much.
	go s.watch.Serve(conn, key)
}

func (s *Server) watchState(w http.ResponseWriter, r *http.Request) {
	key, err := s.svc.ResolveWatchToken(r.Context(), watchToken(r))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	st, err := s.svc.Load(r.Context(), key)
	if err != nil {
		writeError(w, r, s.log, approval.Errorf(approval.CodeUnauthorized, "a valid watch token is required"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(st.Data)
}

func (s *Server) jwks(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(s.opts.JWKS)
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.opts.Ready != nil {
		if err := s.opts.Ready(r.Context()); err != nil {
			s.log.Warn("not ready", "err", err)
			writeProblem(w, approval.Errorf(approval.CodeUnavailable, "%v", err))
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// requestEmail mails the challenge's link, for the RP (API key) or the
// waiting browser (the challenge's own watch token).
func (s *Server) requestEmail(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := emptyBody(w, r); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	var a approval.Actor
	if tok := watchToken(r); tok != "" && s.svc.WatchTokenFor(r.Context(), tok, id) {
		a = approval.Actor{Type: approval.ActorBrowser, Name: "watch_token", IP: s.clientIP(r)}
	} else {
		var err error
		if a, err = s.apiKeyActor(r); err != nil {
			var e *approval.Error
			if errors.As(err, &e) {
				err = approval.Errorf(approval.CodeUnauthorized, "an API key or this challenge's watch token is required")
			}
			writeError(w, r, s.log, err)
			return
		}
	}
	sent, err := s.svc.RequestEmail(r.Context(), a, id)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"sent_to": mail.Mask(sent.To), "expires_at": approval.RFC3339(sent.ExpiresAt)})
}

// emptyBody accepts a route that takes no body: none at all, or a JSON
// object without members ({}). Anything else is refused like any body
// (415, 413, 400 for a member: unknown members are always refused).
func emptyBody(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength == 0 && len(r.TransferEncoding) == 0 {
		return nil
	}
	var none struct{}
	return decode(w, r, &none)
}
