package store_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/store"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
)

// Email links: the request that mails one, the decision that uses one up,
// and the "This wasn't me" link of a new-device notice.
func TestEmailLinks(t *testing.T) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st *store.Store)
	}{
		{"RequestEmail", testRequestEmail},
		{"DecideWithLink", testDecideWithLink},
		{"DecideWithLinkRace", testDecideWithLinkRace},
		{"UndoDeviceLink", testUndoDeviceLink},
		{"UndoDeviceLinkExpired", testUndoDeviceLinkExpired},
	}
	for _, dialect := range storetest.Dialects() {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					tc.fn(t, storetest.Open(t, dialect))
				})
			}
		})
	}
}

func challengeLink(hash string, at time.Time) approval.EmailLink {
	return approval.EmailLink{Hash: hash, Kind: approval.LinkChallenge, CreatedAt: at}
}

func requestEmail(st *store.Store, t *testing.T, id, hash string, at, newExpiry time.Time) (*approval.Challenge, error) {
	return st.RequestEmail(t.Context(), id, challengeLink(hash, at), newExpiry, 3, audit("challenge.email_requested"))
}

func countEvents(events []string, event string) int {
	n := 0
	for _, e := range events {
		if e == event {
			n++
		}
	}
	return n
}

func testRequestEmail(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustCreate(t, st, newChallenge("c1", "u1", t0)) // expires at t0+3m

	// Extends to the later of now+10m and the current expiry.
	at := t0.Add(time.Minute)
	got, err := requestEmail(st, t, "c1", "h1", at, at.Add(10*time.Minute))
	if err != nil || !got.ExpiresAt.Equal(t0.Add(11*time.Minute)) || got.EmailsSent != 1 ||
		got.DeliveryEmail != "sending" || got.Version != 2 || got.Status != approval.StatusPending {
		t.Fatalf("RequestEmail = %+v, %v", got, err)
	}
	l, err := st.GetEmailLink(ctx, "h1")
	if err != nil || l.Kind != approval.LinkChallenge || l.ChallengeID != "c1" || l.UserID != "u1" || l.DeviceID != "" ||
		!l.CreatedAt.Equal(at) || !l.ExpiresAt.Equal(got.ExpiresAt) || l.UsedAt != nil {
		t.Fatalf("link = %+v, %v", l, err)
	}
	// Never shortens.
	got, err = requestEmail(st, t, "c1", "h2", t0.Add(2*time.Minute), t0.Add(5*time.Minute))
	if err != nil || !got.ExpiresAt.Equal(t0.Add(11*time.Minute)) || got.EmailsSent != 2 {
		t.Fatalf("second RequestEmail = %+v, %v", got, err)
	}
	got, err = requestEmail(st, t, "c1", "h3", t0.Add(3*time.Minute), t0.Add(13*time.Minute))
	if err != nil || !got.ExpiresAt.Equal(t0.Add(13*time.Minute)) || got.EmailsSent != 3 {
		t.Fatalf("third RequestEmail = %+v, %v", got, err)
	}
	// The fourth is refused and changes nothing.
	_, err = requestEmail(st, t, "c1", "h4", t0.Add(4*time.Minute), t0.Add(14*time.Minute))
	wantErr(t, err, approval.ErrLost)
	if _, err := st.GetEmailLink(ctx, "h4"); err == nil {
		t.Fatal("a refused request stored its link")
	}
	c, _ := st.GetChallenge(ctx, "c1")
	if c.EmailsSent != 3 || !c.ExpiresAt.Equal(t0.Add(13*time.Minute)) || c.Version != 4 {
		t.Fatalf("after the refused fourth: %+v", c)
	}
	if n := countEvents(auditEvents(t, st, "c1"), "challenge.email_requested"); n != 3 {
		t.Fatalf("%d email_requested audit entries, want 3", n)
	}

	// Final, expired and unknown challenges.
	mustCreate(t, st, newChallenge("c2", "u2", t0))
	mustDecide(t, st, "c2", approval.StatusCancelled, t0.Add(time.Second))
	_, err = requestEmail(st, t, "c2", "h5", t0.Add(time.Minute), t0.Add(11*time.Minute))
	wantErr(t, err, approval.ErrLost)
	mustCreate(t, st, newChallenge("c3", "u3", t0))
	_, err = requestEmail(st, t, "c3", "h6", t0.Add(3*time.Minute), t0.Add(13*time.Minute)) // at == expires_at
	wantErr(t, err, approval.ErrLost)
	if c, _ := st.GetChallenge(ctx, "c3"); c.EmailsSent != 0 || !c.ExpiresAt.Equal(t0.Add(3*time.Minute)) {
		t.Fatalf("an expired challenge was extended: %+v", c)
	}
	_, err = requestEmail(st, t, "nope", "h7", t0, t0.Add(10*time.Minute))
	wantErr(t, err, approval.ErrNotFound)
	for _, h := range []string{"h5", "h6", "h7"} {
		if _, err := st.GetEmailLink(ctx, h); err == nil {
			t.Fatalf("refused request stored link %s", h)
		}
	}
	if _, err := st.GetEmailLink(ctx, "never"); err == nil {
		t.Fatal("GetEmailLink found an unknown hash")
	}
}

func linkDecision(id, status, hash string, at time.Time) approval.Decision {
	return approval.Decision{ID: id, Status: status, Method: approval.MethodEmail, LinkHash: hash,
		ResultToken: "tok-" + id, At: at, Audit: audit("challenge." + status)}
}

func testDecideWithLink(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustCreate(t, st, newChallenge("c1", "u1", t0))
	mustCreate(t, st, newChallenge("c2", "u1", t0))
	for _, x := range []struct{ id, hash string }{{"c1", "h1"}, {"c1", "h1b"}, {"c2", "h2"}} {
		if _, err := requestEmail(st, t, x.id, x.hash, t0, t0.Add(10*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CreateEmailLink(ctx, approval.EmailLink{Hash: "hd", Kind: approval.LinkDevice, DeviceID: "d1", UserID: "u1",
		CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	at := t0.Add(time.Minute)

	// Another challenge's link, a device link and an unknown link decide nothing.
	_, err := st.Decide(ctx, linkDecision("c1", approval.StatusApproved, "h2", at))
	wantErr(t, err, approval.ErrLost)
	_, err = st.Decide(ctx, linkDecision("c1", approval.StatusApproved, "hd", at))
	wantErr(t, err, approval.ErrLost)
	_, err = st.Decide(ctx, linkDecision("c1", approval.StatusApproved, "nope", at))
	wantErr(t, err, approval.ErrNotFound)
	// A decision that fails on the challenge leaves the link unused.
	_, err = st.Decide(ctx, linkDecision("c1", approval.StatusApproved, "h1", t0.Add(20*time.Minute)))
	wantErr(t, err, approval.ErrLost)
	for _, h := range []string{"h1", "h2", "hd"} {
		if l, err := st.GetEmailLink(ctx, h); err != nil || l.UsedAt != nil {
			t.Fatalf("link %s after refused decisions: %+v, %v", h, l, err)
		}
	}
	if c, _ := st.GetChallenge(ctx, "c1"); c.Status != approval.StatusPending {
		t.Fatalf("c1 = %+v", c)
	}

	// The right link decides, once, and locks the user with the decision.
	lock := at.Add(15 * time.Minute)
	d := linkDecision("c1", approval.StatusDenied, "h1", at)
	d.Fraud, d.LockUntil = true, lock
	got, err := st.Decide(ctx, d)
	if err != nil || got.Status != approval.StatusDenied || got.Method != approval.MethodEmail || !got.FraudReported {
		t.Fatalf("Decide by link = %+v, %v", got, err)
	}
	if l, _ := st.GetEmailLink(ctx, "h1"); l.UsedAt == nil || !l.UsedAt.Equal(at) {
		t.Fatalf("link not used: %+v", l)
	}
	if until, err := st.UserLockedUntil(ctx, "u1"); err != nil || !until.Equal(lock) {
		t.Fatalf("UserLockedUntil = %v, %v; want %v", until, err, lock)
	}
	_, err = st.Decide(ctx, linkDecision("c1", approval.StatusApproved, "h1", at))
	wantErr(t, err, approval.ErrLost)
	// The challenge's other link does not decide it again.
	_, err = st.Decide(ctx, linkDecision("c1", approval.StatusApproved, "h1b", at))
	wantErr(t, err, approval.ErrLost)
	if l, _ := st.GetEmailLink(ctx, "h1b"); l.UsedAt != nil {
		t.Fatalf("a lost decision used link h1b: %+v", l)
	}
	if ev := auditEvents(t, st, "c1"); len(ev) != 4 || ev[3] != "challenge.denied" {
		t.Fatalf("audit = %v", ev)
	}
}

func testDecideWithLinkRace(t *testing.T, st *store.Store) {
	for round := range 3 {
		id, hash := fmt.Sprintf("c%d", round), fmt.Sprintf("h%d", round)
		mustCreate(t, st, newChallenge(id, "u1", t0))
		if _, err := requestEmail(st, t, id, hash, t0, t0.Add(10*time.Minute)); err != nil {
			t.Fatal(err)
		}
		const n = 20
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				status := approval.StatusApproved
				if i%2 == 1 {
					status = approval.StatusDenied
				}
				_, errs[i] = st.Decide(t.Context(), linkDecision(id, status, hash, t0.Add(time.Duration(i)*time.Millisecond)))
			})
		}
		close(start)
		wg.Wait()
		winners := 0
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
			case !errors.Is(err, approval.ErrLost):
				t.Fatalf("round %d, caller %d: %v, want ErrLost", round, i, err)
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d winners, want 1", round, winners)
		}
		c, _ := st.GetChallenge(t.Context(), id)
		if c.Status == approval.StatusPending || c.Version != 3 {
			t.Fatalf("round %d: %+v", round, c)
		}
		if ev := auditEvents(t, st, id); len(ev) != 3 {
			t.Fatalf("round %d: audit %v", round, ev)
		}
	}
}

func deviceLink(hash, device, user string, at, expires time.Time) approval.EmailLink {
	return approval.EmailLink{Hash: hash, Kind: approval.LinkDevice, DeviceID: device, UserID: user, CreatedAt: at, ExpiresAt: expires}
}

func testUndoDeviceLink(t *testing.T, st *store.Store) {
	ctx := t.Context()
	// d1, then d2 with step-up: d2 retires d1.
	mustEnroll(t, st, newEnrollment("e1", "u1", t0))
	if _, err := link(st, t, "e1", newDevice("d1"), t0.Add(time.Minute), 1); err != nil {
		t.Fatal(err)
	}
	e2 := newEnrollment("e2", "u1", t0.Add(2*time.Minute))
	e2.AuthorizedBy, e2.StepUpMethod = "step-e2", approval.MethodPush
	mustEnroll(t, st, e2)
	res, err := link(st, t, "e2", newDevice("d2"), t0.Add(3*time.Minute), 1)
	if err != nil || len(res.Retired) != 1 || res.Retired[0].ID != "d1" {
		t.Fatalf("link d2 = %+v, %v", res, err)
	}
	for _, l := range []approval.EmailLink{
		deviceLink("h1", "d1", "u1", t0.Add(time.Minute), t0.Add(7*24*time.Hour)),
		deviceLink("h2", "d2", "u1", t0.Add(3*time.Minute), t0.Add(7*24*time.Hour)),
		{Hash: "hc", Kind: approval.LinkChallenge, ChallengeID: "c1", UserID: "u1", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)},
	} {
		if err := st.CreateEmailLink(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	at := t0.Add(time.Hour)
	lock := at.Add(15 * time.Minute)

	_, _, err = st.UndoDeviceLink(ctx, "nope", at, lock, audit("device.removed"))
	wantErr(t, err, approval.ErrNotFound)
	_, _, err = st.UndoDeviceLink(ctx, "hc", at, lock, audit("device.removed"))
	wantErr(t, err, approval.ErrLost)
	if until, _ := st.UserLockedUntil(ctx, "u1"); !until.IsZero() {
		t.Fatalf("a refused undo locked the user until %v", until)
	}

	removed, reactivated, err := st.UndoDeviceLink(ctx, "h2", at, lock, audit("device.removed"))
	if err != nil || removed == nil || removed.ID != "d2" || removed.Status != approval.DeviceRemoved ||
		removed.EndedAt == nil || !removed.EndedAt.Equal(at) {
		t.Fatalf("UndoDeviceLink = %+v, %+v, %v", removed, reactivated, err)
	}
	if len(reactivated) != 1 || reactivated[0].ID != "d1" || reactivated[0].Status != approval.DeviceActive ||
		reactivated[0].RetiredBy != "" || reactivated[0].EndedAt != nil {
		t.Fatalf("reactivated = %+v", reactivated)
	}
	if active, err := st.ActiveDevices(ctx, "u1"); err != nil || len(active) != 1 || active[0].ID != "d1" {
		t.Fatalf("active = %+v, %v", active, err)
	}
	if d, _ := st.GetDevice(ctx, "d2"); d.Status != approval.DeviceRemoved {
		t.Fatalf("d2 = %+v", d)
	}
	if until, err := st.UserLockedUntil(ctx, "u1"); err != nil || !until.Equal(lock) {
		t.Fatalf("UserLockedUntil = %v, %v; want %v", until, err, lock)
	}
	if l, _ := st.GetEmailLink(ctx, "h2"); l.UsedAt == nil || !l.UsedAt.Equal(at) {
		t.Fatalf("link h2 = %+v", l)
	}
	entries, err := st.AuditLog(ctx, "d2")
	if err != nil || len(entries) == 0 {
		t.Fatalf("audit = %+v, %v", entries, err)
	}
	last := entries[len(entries)-1]
	if last.Event != "device.removed" || last.ObjectType != "device" || last.UserID != "u1" || !last.At.Equal(at) {
		t.Fatalf("audit entry = %+v", last)
	}

	// Single use: the second changes nothing.
	_, _, err = st.UndoDeviceLink(ctx, "h2", at.Add(time.Minute), lock.Add(time.Hour), audit("device.removed"))
	wantErr(t, err, approval.ErrLost)
	if active, _ := st.ActiveDevices(ctx, "u1"); len(active) != 1 || active[0].ID != "d1" {
		t.Fatalf("active after the second undo = %+v", active)
	}
	if until, _ := st.UserLockedUntil(ctx, "u1"); !until.Equal(lock) {
		t.Fatalf("the second undo moved the lock to %v", until)
	}
	if n := len(auditEvents(t, st, "d2")); n != len(entries) {
		t.Fatalf("the second undo wrote audit: %d entries, want %d", n, len(entries))
	}

	// d1's own link (d1 is active again): removes it, reactivates nothing;
	// without lockUntil the lock is left alone.
	removed, reactivated, err = st.UndoDeviceLink(ctx, "h1", at.Add(2*time.Minute), time.Time{}, audit("device.removed"))
	if err != nil || removed == nil || removed.ID != "d1" || len(reactivated) != 0 {
		t.Fatalf("undo d1 = %+v, %+v, %v", removed, reactivated, err)
	}
	if active, _ := st.ActiveDevices(ctx, "u1"); len(active) != 0 {
		t.Fatalf("active = %+v", active)
	}
	if until, _ := st.UserLockedUntil(ctx, "u1"); !until.Equal(lock) {
		t.Fatalf("lock = %v, want %v", until, lock)
	}
}

func testUndoDeviceLinkExpired(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustEnroll(t, st, newEnrollment("e1", "u1", t0))
	if _, err := link(st, t, "e1", newDevice("d1"), t0.Add(time.Minute), 1); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateEmailLink(ctx, deviceLink("h1", "d1", "u1", t0, t0.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Time{t0.Add(time.Hour), t0.Add(2 * time.Hour)} {
		_, _, err := st.UndoDeviceLink(ctx, "h1", at, at.Add(15*time.Minute), audit("device.removed"))
		wantErr(t, err, approval.ErrLost)
	}
	if d, _ := st.GetDevice(ctx, "d1"); d.Status != approval.DeviceActive {
		t.Fatalf("an expired link removed the device: %+v", d)
	}
	if l, _ := st.GetEmailLink(ctx, "h1"); l.UsedAt != nil {
		t.Fatalf("an expired link was used: %+v", l)
	}
	if until, _ := st.UserLockedUntil(ctx, "u1"); !until.IsZero() {
		t.Fatalf("an expired link locked the user until %v", until)
	}
	// Still usable just before it expires.
	if _, _, err := st.UndoDeviceLink(ctx, "h1", t0.Add(time.Hour-time.Millisecond), time.Time{}, audit("device.removed")); err != nil {
		t.Fatal(err)
	}
}
