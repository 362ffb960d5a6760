package approval

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/clicktopurchase/approvald/push"
)

// Pushers are the configured push providers by name ("fcm", "apns"); a
// provider that is not configured is absent.
type Pushers map[string]push.Sender

// PushText chooses what a push says. No secret is ever in a push; by
// default it names the action but not the context values, which would
// pass through Google's and Apple's servers.
type PushText struct {
	Titles      map[string]string // per action; defaults for the known actions
	FullContext bool              // APPROVALD_PUSH_CONTEXT=full
}

var defaultTitles = map[string]string{
	"login":           "Approve sign-in?",
	"verify_property": "Approve property verification?",
	"submit_offer":    "Approve your offer?",
	ActionLinkDevice:  "Approve linking a new device?",
}

// PushBudget is how long creating a challenge waits for the providers.
const PushBudget = 2 * time.Second

// pushAttemptTimeout bounds one provider call.
const pushAttemptTimeout = 10 * time.Second

// ActionTitle is the question a push (and an email) asks for action,
// e.g. "Approve your offer?".
func (s *Service) ActionTitle(action string) string {
	if t := s.pushText.Titles[action]; t != "" {
		return t
	}
	if t := defaultTitles[action]; t != "" {
		return t
	}
	return "Approve " + strings.NewReplacer("_", " ", ".", " ", "-", " ").Replace(action) + "?"
}

func (s *Service) pushBody(c *Challenge) string {
	if !s.pushText.FullContext {
		return "Open the app to review and approve."
	}
	var parts []string
	for _, m := range ContextMembers(c.Context) {
		parts = append(parts, m.Name+": "+m.Value)
	}
	if len(parts) == 0 {
		return "Open the app to review and approve."
	}
	body := strings.Join(parts, " · ")
	if r := []rune(body); len(r) > 240 {
		body = string(r[:239]) + "…"
	}
	return body
}

// deliveryRun tracks one challenge's pushes to its devices.
type deliveryRun struct {
	mu          sync.Mutex
	outstanding int
	delivered   bool
	reported    bool // the create call has answered
	answered    string
	firstDone   chan struct{} // closed when every device has a first verdict
	firstLeft   int
}

// pushChallenge sends c to every device that takes pushes, concurrently,
// and waits at most PushBudget for the verdict: sent (a provider accepted
// it, a device polls, or delivery is still being retried), failed (every
// device refused), or no_device. Retries go on in the background within
// the challenge's life; if they all end in failure, the stored delivery
// becomes failed and watchers hear it.
func (s *Service) pushChallenge(c *Challenge, devices []Device) (state string, pushed int) {
	if len(devices) == 0 {
		return DeliveryNoDevice, 0
	}
	msg := push.Message{Kind: push.KindChallenge, ChallengeID: c.ID, Action: c.Action, Title: s.ActionTitle(c.Action),
		Body: s.pushBody(c), ExpiresAt: c.ExpiresAt, NumberMatching: c.Number != ""}
	run := &deliveryRun{firstDone: make(chan struct{})}
	polling := false
	type job struct {
		d      Device
		sender push.Sender
	}
	var jobs []job
	pollers := 0
	for _, d := range devices {
		switch {
		case d.PushProvider == "none":
			polling = true
			pollers++
		case d.PushTokenInvalid || d.PushToken == "":
			s.log.Info("push skipped: the device's push token is invalid until the app sends a new one", "device", d.ID)
		case s.pushers[d.PushProvider] == nil:
			s.log.Warn("push failed: provider not configured", "provider", d.PushProvider, "device", d.ID)
		default:
			jobs = append(jobs, job{d, s.pushers[d.PushProvider]})
		}
	}
	pushed = len(jobs) + pollers
	if len(jobs) == 0 {
		if polling {
			return DeliverySent, pushed
		}
		return DeliveryFailed, pushed
	}
	run.outstanding, run.firstLeft = len(jobs), len(jobs)
	for _, j := range jobs {
		s.goBackground(func(ctx context.Context) {
			ok := s.sendWithRetry(ctx, c, j.d, j.sender, msg, func(ok bool) { run.first(ok) })
			run.finish(s, c, ok, polling)
		})
	}
	timer := time.NewTimer(PushBudget)
	defer timer.Stop()
	select {
	case <-run.firstDone:
	case <-timer.C:
	}
	run.mu.Lock()
	defer run.mu.Unlock()
	run.reported = true
	// A device reports its first verdict only when a provider accepted the
	// push or refused it for good (a retry is no verdict): with every
	// verdict in and none accepted, every device refused.
	switch {
	case polling || run.delivered || run.firstLeft > 0:
		run.answered = DeliverySent
	default:
		run.answered = DeliveryFailed
	}
	return run.answered, pushed
}

// first records a device's first attempt: delivered, or a final refusal
// (ok=false). A retryable first attempt does not count as a verdict.
func (r *deliveryRun) first(ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ok {
		r.delivered = true
	}
	r.firstLeft--
	if r.firstLeft == 0 {
		close(r.firstDone)
	}
}

// finish records a device's last attempt; when the last device has given
// up without any delivery after the create call answered sent, the
// challenge's delivery becomes failed.
func (r *deliveryRun) finish(s *Service, c *Challenge, ok, polling bool) {
	r.mu.Lock()
	if ok {
		r.delivered = true
	}
	r.outstanding--
	fail := r.outstanding == 0 && !r.delivered && !polling && r.reported && r.answered == DeliverySent
	r.mu.Unlock()
	if !fail {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done, err := s.store.SetDelivery(ctx, c.ID, DeliveryFailed, -1, "")
	if err != nil {
		s.log.Error("record failed delivery", "challenge", c.ID, "err", err)
		return
	}
	if !done.Final() {
		s.publishChallenge(ctx, done)
	}
}

// sendWithRetry sends msg to d until a provider accepts it, refuses it for
// good, or the challenge ends. first is called once with the first
// verdict (a retry is not one). It returns whether the push was accepted.
func (s *Service) sendWithRetry(ctx context.Context, c *Challenge, d Device, sender push.Sender, msg push.Message, first func(ok bool)) bool {
	backoff := 250 * time.Millisecond
	reported := false
	report := func(ok bool) {
		if !reported {
			reported = true
			first(ok)
		}
	}
	defer report(false)
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, pushAttemptTimeout)
		r := sender.Send(actx, d.PushToken, msg)
		cancel()
		s.metrics.Push(d.PushProvider, string(msg.Kind), r.Outcome.String())
		switch r.Outcome {
		case push.Delivered:
			report(true)
			return true
		case push.TokenInvalid:
			s.log.Info("push token invalid", "provider", d.PushProvider, "device", d.ID, "reason", r.Reason, "token", push.Redact(d.PushToken))
			a := Actor{Type: ActorSystem, Name: "push"}
			audit := a.audit("device.push_token_invalid", "device", d.ID, d.UserID, s.clock())
			audit.Detail, _ = json.Marshal(map[string]string{"provider": d.PushProvider, "reason": r.Reason})
			if err := s.store.InvalidatePushToken(context.Background(), d.ID, d.PushToken, audit); err != nil {
				s.log.Error("invalidate push token", "device", d.ID, "err", err)
			}
			return false
		case push.Retry:
		default:
			s.log.Warn("push refused", "provider", d.PushProvider, "device", d.ID, "reason", r.Reason)
			return false
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if r.RetryAfter > wait {
			wait = r.RetryAfter
		}
		backoff = min(backoff*2, 30*time.Second)
		if !s.now().Add(wait).Before(c.ExpiresAt) {
			s.log.Warn("push given up: the challenge ends before the next attempt", "provider", d.PushProvider, "device", d.ID, "reason", r.Reason, "attempts", attempt)
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
		if msg.Kind == push.KindChallenge {
			cur, err := s.store.GetChallenge(ctx, c.ID)
			if err == nil && cur.Final() {
				return false // decided meanwhile: the resolved push follows
			}
		}
	}
}

// pushSilent sends a resolved or retired push to devices, retrying within
// a minute, in the background.
func (s *Service) pushSilent(devices []Device, msg push.Message) {
	for _, d := range devices {
		sender := s.pushers[d.PushProvider]
		if sender == nil || d.PushToken == "" || d.PushTokenInvalid {
			continue
		}
		s.goBackground(func(ctx context.Context) {
			life := &Challenge{ID: msg.ChallengeID, ExpiresAt: s.now().Add(time.Minute)}
			s.sendWithRetry(ctx, life, d, sender, msg, func(bool) {})
		})
	}
}

// pushResolved tells the user's devices that c is final.
func (s *Service) pushResolved(ctx context.Context, c *Challenge) {
	if len(s.pushers) == 0 || !c.HasMethod(MethodPush) {
		return
	}
	devices, err := s.store.ActiveDevices(ctx, c.UserID)
	if err != nil {
		s.log.Error("resolved push: devices", "err", err)
		return
	}
	s.pushSilent(devices, push.Message{Kind: push.KindResolved, ChallengeID: c.ID})
}

// goBackground runs f until it returns or the service closes.
func (s *Service) goBackground(f func(ctx context.Context)) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		f(s.bgCtx)
	}()
}

// Close stops background work (push retries) and waits for it.
func (s *Service) Close() {
	s.bgStop()
	s.bg.Wait()
}
