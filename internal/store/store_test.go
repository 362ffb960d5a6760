package store_test

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/store"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
	"github.com/clicktopurchase/approvald/schema"
)

func TestSQLite(t *testing.T) {
	runSuite(t, func(t *testing.T) *store.Store { return storetest.Open(t, store.SQLite) })
}

func TestPostgres(t *testing.T) {
	runSuite(t, func(t *testing.T) *store.Store { return storetest.Open(t, store.Postgres) })
}

// runSuite runs every store test against stores made by open, each on a
// fresh database.
func runSuite(t *testing.T, open func(t *testing.T) *store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st *store.Store)
	}{
		{"MigrateTwice", testMigrateTwice},
		{"SecretFirstWriterWins", testSecret},
		{"APIKeys", testAPIKeys},
		{"Users", testUsers},
		{"CreateEnrollmentEndsOthers", testCreateEnrollment},
		{"ConsumeStepUp", testConsumeStepUp},
		{"CreateEnrollmentStepUp", testCreateEnrollmentStepUp},
		{"LinkDevice", testLinkDevice},
		{"LinkDeviceRetiresOldest", testLinkDeviceRetires},
		{"RemoveDevice", testRemoveDevice},
		{"PushToken", testPushToken},
		{"CreateChallengeCounts", testCreateChallengeCounts},
		{"CreateChallengeRefused", testCreateChallengeRefused},
		{"Idempotency", testIdempotency},
		{"IdempotencyConcurrent", testIdempotencyConcurrent},
		{"NumbersUniqueConcurrent", testNumbersConcurrent},
		{"NumberCollisionRetried", testNumberRetry},
		{"LimitsHoldConcurrent", testLimitsConcurrent},
		{"DecideRace", testDecideRace},
		{"DecideConditions", testDecideConditions},
		{"Expire", testExpire},
		{"Due", testDue},
		{"CountNumberMismatch", testCountNumberMismatch},
		{"PendingChallenges", testPendingChallenges},
		{"SetDelivery", testSetDelivery},
		{"RememberJTI", testRememberJTI},
		{"CodeFailures", testCodeFailures},
		{"Hit", testHit},
		{"Audit", testAudit},
		{"Purge", testPurge},
		{"ConcurrentWriters", testConcurrentWriters},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, open(t))
		})
	}
}

// TestMigrateConcurrent starts several instances on one fresh database at once.
func TestMigrateConcurrent(t *testing.T) {
	for _, dialect := range storetest.Dialects() {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			url := storetest.URL(t, dialect)
			stores := make([]*store.Store, 4)
			for i := range stores {
				stores[i] = storetest.OpenURL(t, url)
			}
			errs := make([]error, len(stores))
			var wg sync.WaitGroup
			for i, st := range stores {
				wg.Go(func() { errs[i] = st.Migrate(t.Context()) })
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("instance %d: %v", i, err)
				}
			}
			checkSchemaVersion(t, stores[0])
		})
	}
}

// TestSQLiteTwoPools writes from two pools on one SQLite file at once, as
// two processes would: they wait on busy_timeout instead of failing.
func TestSQLiteTwoPools(t *testing.T) {
	url := storetest.URL(t, store.SQLite)
	a := storetest.OpenURL(t, url)
	if err := a.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	b := storetest.OpenURL(t, url)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 100 {
		st := a
		if i%2 == 1 {
			st = b
		}
		wg.Go(func() {
			c := newChallenge(fmt.Sprintf("c%d", i), fmt.Sprintf("u%d", i%7), t0)
			if _, _, err := st.CreateChallenge(t.Context(), approval.NewChallenge{Challenge: c, Audit: audit("challenge.created")}); err != nil {
				errs <- err
			}
			if _, err := st.Hit(t.Context(), "dev", time.Minute, t0); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n, err := a.Hit(t.Context(), "dev", time.Minute, t0); err != nil || n != 101 {
		t.Fatalf("Hit = %d, %v; want 101", n, err)
	}
}

func TestOpenRejects(t *testing.T) {
	for _, dsn := range []string{"mysql://x", "sqlite:", ":memory:"} {
		if st, err := store.Open(t.Context(), dsn); err == nil {
			st.Close()
			t.Errorf("Open(%q) succeeded", dsn)
		}
	}
}

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 6e6, time.UTC)

func newChallenge(id, user string, at time.Time) *approval.Challenge {
	return &approval.Challenge{
		ID:           id,
		UserID:       user,
		Action:       "submit_offer",
		Context:      json.RawMessage(`{"Property":"12 High St","Offer":"£350,000"}`),
		UserEmail:    "alice@example.com",
		RequesterIP:  "203.0.113.9",
		RequesterUA:  "Mozilla/5.0",
		RequesterKey: user + "|203.0.113.9",
		Methods:      "push,email",
		Status:       approval.StatusPending,
		CreatedAt:    at,
		ExpiresAt:    at.Add(3 * time.Minute),
		DeliveryPush: approval.DeliveryPending,
		APIKeyName:   "shop",
	}
}

func audit(event string) approval.AuditEntry {
	return approval.AuditEntry{ActorType: approval.ActorSystem, Actor: "test", Event: event}
}

func mustCreate(t *testing.T, st *store.Store, c *approval.Challenge) *approval.Challenge {
	t.Helper()
	got, replayed, err := st.CreateChallenge(t.Context(), approval.NewChallenge{
		Challenge: c, Since: c.CreatedAt.Add(-time.Hour), Audit: audit("challenge.created"),
	})
	if err != nil || replayed {
		t.Fatalf("CreateChallenge(%s) = %v, replayed %v", c.ID, err, replayed)
	}
	return got
}

func mustDecide(t *testing.T, st *store.Store, id, status string, at time.Time) *approval.Challenge {
	t.Helper()
	c, err := st.Decide(t.Context(), approval.Decision{ID: id, Status: status, Method: approval.MethodPush,
		DeviceID: "d1", ResultToken: "tok-" + id, At: at, Audit: audit("challenge." + status)})
	if err != nil {
		t.Fatalf("Decide(%s, %s): %v", id, status, err)
	}
	return c
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
}

func checkSchemaVersion(t *testing.T, st *store.Store) {
	t.Helper()
	ms, err := schema.Migrations(st.Dialect())
	if err != nil {
		t.Fatal(err)
	}
	v, err := st.SchemaVersion(t.Context())
	if err != nil || v != len(ms) {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, len(ms))
	}
	var n int
	if err := st.DB().GetContext(t.Context(), &n, "SELECT COUNT(*) FROM schema_migrations"); err != nil || n != len(ms) {
		t.Fatalf("schema_migrations has %d rows, %v; want %d", n, err, len(ms))
	}
}

func auditEvents(t *testing.T, st *store.Store, objectID string) []string {
	t.Helper()
	entries, err := st.AuditLog(t.Context(), objectID)
	if err != nil {
		t.Fatal(err)
	}
	var events []string
	for _, e := range entries {
		events = append(events, e.Event)
	}
	return events
}

func testMigrateTwice(t *testing.T, st *store.Store) {
	for range 2 {
		if err := st.Migrate(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	checkSchemaVersion(t, st)
	if err := st.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func testSecret(t *testing.T, st *store.Store) {
	const n = 20
	got := make([][]byte, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			got[i], errs[i] = st.GetOrCreateSecret(t.Context(), "signing", func() ([]byte, error) {
				b := make([]byte, 32)
				rand.Read(b)
				return b, nil
			})
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if string(got[i]) != string(got[0]) || len(got[i]) != 32 {
			t.Fatalf("caller %d got a different secret", i)
		}
	}
	again, err := st.GetOrCreateSecret(t.Context(), "signing", func() ([]byte, error) {
		return nil, errors.New("must not be called")
	})
	if err != nil || string(again) != string(got[0]) {
		t.Fatalf("second read = %x, %v", again, err)
	}
	other, err := st.GetOrCreateSecret(t.Context(), "watch", func() ([]byte, error) { return []byte{0, 1, 2}, nil })
	if err != nil || string(other) != "\x00\x01\x02" {
		t.Fatalf("other secret = %x, %v", other, err)
	}
}

func testAPIKeys(t *testing.T, st *store.Store) {
	ctx := t.Context()
	k1 := &approval.APIKey{ID: "k1", Name: "shop", Hash: "h1", CreatedAt: t0}
	if err := st.CreateAPIKey(ctx, k1); err != nil {
		t.Fatal(err)
	}
	wantErr(t, st.CreateAPIKey(ctx, &approval.APIKey{ID: "k2", Name: "shop", Hash: "h2", CreatedAt: t0}), approval.ErrConflict)
	got, err := st.APIKeyByHash(ctx, "h1")
	if err != nil || got.ID != "k1" || got.Name != "shop" || !got.CreatedAt.Equal(t0) || got.RevokedAt != nil {
		t.Fatalf("APIKeyByHash = %+v, %v", got, err)
	}
	_, err = st.APIKeyByHash(ctx, "nope")
	wantErr(t, err, approval.ErrNotFound)

	if err := st.RevokeAPIKey(ctx, "shop", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	wantErr(t, st.RevokeAPIKey(ctx, "shop", t0.Add(time.Hour)), approval.ErrNotFound)
	wantErr(t, st.RevokeAPIKey(ctx, "nobody", t0), approval.ErrNotFound)
	_, err = st.APIKeyByHash(ctx, "h1")
	wantErr(t, err, approval.ErrNotFound)

	// The name is free again once revoked.
	if err := st.CreateAPIKey(ctx, &approval.APIKey{ID: "k3", Name: "shop", Hash: "h3", CreatedAt: t0.Add(2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	keys, err := st.ListAPIKeys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("ListAPIKeys = %+v, %v", keys, err)
	}
	if keys[0].ID != "k1" || keys[0].RevokedAt == nil || !keys[0].RevokedAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("first key = %+v", keys[0])
	}
	if keys[1].ID != "k3" || keys[1].RevokedAt != nil {
		t.Fatalf("second key = %+v", keys[1])
	}
}

func testUsers(t *testing.T, st *store.Store) {
	ctx := t.Context()
	if email, err := st.UserEmail(ctx, "u1"); err != nil || email != "" {
		t.Fatalf("UserEmail of unknown = %q, %v", email, err)
	}
	if until, err := st.UserLockedUntil(ctx, "u1"); err != nil || !until.IsZero() {
		t.Fatalf("UserLockedUntil of unknown = %v, %v", until, err)
	}
	if err := st.SetUserEmail(ctx, "u1", "a@example.com", t0); err != nil {
		t.Fatal(err)
	}
	if until, err := st.UserLockedUntil(ctx, "u1"); err != nil || !until.IsZero() {
		t.Fatalf("UserLockedUntil of unlocked = %v, %v", until, err)
	}
	if err := st.LockUser(ctx, "u1", t0.Add(15*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := st.SetUserEmail(ctx, "u1", "b@example.com", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if email, err := st.UserEmail(ctx, "u1"); err != nil || email != "b@example.com" {
		t.Fatalf("UserEmail = %q, %v", email, err)
	}
	if err := st.LockUser(ctx, "u1", t0.Add(5*time.Minute)); err != nil { // never shortens
		t.Fatal(err)
	}
	if until, err := st.UserLockedUntil(ctx, "u1"); err != nil || !until.Equal(t0.Add(15*time.Minute)) {
		t.Fatalf("UserLockedUntil = %v, %v", until, err)
	}
	if err := st.LockUser(ctx, "u1", t0.Add(30*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if until, err := st.UserLockedUntil(ctx, "u1"); err != nil || !until.Equal(t0.Add(30*time.Minute)) || until.Location() != time.UTC {
		t.Fatalf("UserLockedUntil = %v, %v", until, err)
	}
	// A lock of a user never seen before.
	if err := st.LockUser(ctx, "u2", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if email, err := st.UserEmail(ctx, "u2"); err != nil || email != "" {
		t.Fatalf("UserEmail(u2) = %q, %v", email, err)
	}
}

func newEnrollment(id, user string, at time.Time) *approval.Enrollment {
	return &approval.Enrollment{ID: id, UserID: user, CodeHash: "hash-" + id, CreatedAt: at,
		ExpiresAt: at.Add(10 * time.Minute), UserEmail: "a@example.com", APIKeyName: "shop"}
}

func mustEnroll(t *testing.T, st *store.Store, e *approval.Enrollment) []approval.Enrollment {
	t.Helper()
	ended, err := st.CreateEnrollment(t.Context(), e, "", time.Time{}, audit("enrollment.created"))
	if err != nil {
		t.Fatalf("CreateEnrollment(%s): %v", e.ID, err)
	}
	return ended
}

func testCreateEnrollment(t *testing.T, st *store.Store) {
	ctx := t.Context()
	e1 := newEnrollment("e1", "u1", t0)
	if ended := mustEnroll(t, st, e1); len(ended) != 0 {
		t.Fatalf("first enrollment ended %v", ended)
	}
	if e1.Status != approval.EnrollPending || e1.Version != 1 {
		t.Fatalf("created = %+v", e1)
	}
	mustEnroll(t, st, newEnrollment("o1", "u2", t0))
	ended := mustEnroll(t, st, newEnrollment("e2", "u1", t0.Add(time.Minute)))
	if len(ended) != 1 || ended[0].ID != "e1" || ended[0].Status != approval.EnrollExpired || ended[0].Version != 2 ||
		ended[0].EndedAt == nil || !ended[0].EndedAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("ended = %+v", ended)
	}
	if got, err := st.GetEnrollment(ctx, "e1"); err != nil || got.Status != approval.EnrollExpired {
		t.Fatalf("e1 = %+v, %v", got, err)
	}
	if got, err := st.GetEnrollment(ctx, "o1"); err != nil || got.Status != approval.EnrollPending {
		t.Fatalf("other user's enrollment = %+v, %v", got, err)
	}
	got, err := st.EnrollmentByCodeHash(ctx, "hash-e2")
	if err != nil || got.ID != "e2" || got.UserEmail != "a@example.com" || got.APIKeyName != "shop" ||
		!got.ExpiresAt.Equal(t0.Add(11*time.Minute)) {
		t.Fatalf("EnrollmentByCodeHash = %+v, %v", got, err)
	}
	_, err = st.EnrollmentByCodeHash(ctx, "nope")
	wantErr(t, err, approval.ErrNotFound)
	_, err = st.GetEnrollment(ctx, "nope")
	wantErr(t, err, approval.ErrNotFound)

	// A code is unique among pending enrollments: another user's new
	// enrollment cannot take e2's code while e2 is pending.
	dup := newEnrollment("e3", "u9", t0.Add(2*time.Minute))
	dup.CodeHash = "hash-e2"
	_, err = st.CreateEnrollment(ctx, dup, "", time.Time{}, audit("enrollment.created"))
	wantErr(t, err, approval.ErrConflict)
	if got, _ := st.GetEnrollment(ctx, "e2"); got.Status != approval.EnrollPending {
		t.Fatalf("a refused create ended e2: %+v", got)
	}
	if ev := auditEvents(t, st, "e2"); len(ev) != 1 || ev[0] != "enrollment.created" {
		t.Fatalf("audit of e2 = %v", ev)
	}
	if ev := auditEvents(t, st, "e3"); len(ev) != 0 {
		t.Fatalf("audit of refused e3 = %v", ev)
	}
}

// approvedLinkDevice creates a link_device challenge of user approved at at.
func approvedLinkDevice(t *testing.T, st *store.Store, id, user string, at time.Time, method string) {
	t.Helper()
	c := newChallenge(id, user, at.Add(-time.Minute))
	c.Action = approval.ActionLinkDevice
	mustCreate(t, st, c)
	if _, err := st.Decide(t.Context(), approval.Decision{ID: id, Status: approval.StatusApproved,
		Method: method, DeviceID: "d0", At: at}); err != nil {
		t.Fatal(err)
	}
}

func testConsumeStepUp(t *testing.T, st *store.Store) {
	ctx := t.Context()
	decided := t0.Add(time.Minute)
	approvedLinkDevice(t, st, "s1", "u1", decided, approval.MethodPush)

	login := newChallenge("login", "u1", t0)
	mustCreate(t, st, login)
	mustDecide(t, st, "login", approval.StatusApproved, decided)

	pending := newChallenge("pending", "u1", t0)
	pending.Action = approval.ActionLinkDevice
	mustCreate(t, st, pending)

	denied := newChallenge("denied", "u1", t0)
	denied.Action = approval.ActionLinkDevice
	mustCreate(t, st, denied)
	mustDecide(t, st, "denied", approval.StatusDenied, decided)

	at := t0.Add(2 * time.Minute)
	since := t0
	for _, tc := range []struct {
		name, id, user string
		since          time.Time
	}{
		{"wrong user", "s1", "u2", since},
		{"wrong action", "login", "u1", since},
		{"not approved", "pending", "u1", since},
		{"denied", "denied", "u1", since},
		{"too old", "s1", "u1", decided.Add(time.Millisecond)},
		{"unknown", "nope", "u1", since},
	} {
		_, err := st.ConsumeStepUp(ctx, tc.id, tc.user, tc.since, at)
		if !errors.Is(err, approval.ErrLost) {
			t.Fatalf("%s: error = %v, want ErrLost", tc.name, err)
		}
	}
	c, err := st.ConsumeStepUp(ctx, "s1", "u1", decided, at) // decided exactly at since is fine
	if err != nil || c.StepUpUsedAt == nil || !c.StepUpUsedAt.Equal(at) || c.Version != 3 {
		t.Fatalf("ConsumeStepUp = %+v, %v", c, err)
	}
	_, err = st.ConsumeStepUp(ctx, "s1", "u1", since, at)
	wantErr(t, err, approval.ErrLost)
}

func testCreateEnrollmentStepUp(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustEnroll(t, st, newEnrollment("e1", "u1", t0))
	approvedLinkDevice(t, st, "s1", "u1", t0.Add(time.Minute), approval.MethodEmail)

	// A step-up that fails the conditions: nothing written.
	e2 := newEnrollment("e2", "u1", t0.Add(2*time.Minute))
	_, err := st.CreateEnrollment(ctx, e2, "s1", t0.Add(90*time.Second), audit("enrollment.created"))
	wantErr(t, err, approval.ErrLost)
	if _, err := st.GetEnrollment(ctx, "e2"); !errors.Is(err, approval.ErrNotFound) {
		t.Fatalf("refused enrollment was stored: %v", err)
	}
	if got, _ := st.GetEnrollment(ctx, "e1"); got.Status != approval.EnrollPending {
		t.Fatalf("refused enrollment ended e1: %+v", got)
	}
	if c, _ := st.GetChallenge(ctx, "s1"); c.StepUpUsedAt != nil {
		t.Fatalf("refused enrollment used the step-up")
	}

	ended, err := st.CreateEnrollment(ctx, e2, "s1", t0, audit("enrollment.created"))
	if err != nil || len(ended) != 1 || ended[0].ID != "e1" {
		t.Fatalf("CreateEnrollment = %v, %v", ended, err)
	}
	if e2.AuthorizedBy != "s1" || e2.StepUpMethod != approval.MethodEmail {
		t.Fatalf("enrollment = %+v", e2)
	}
	if c, _ := st.GetChallenge(ctx, "s1"); c.StepUpUsedAt == nil {
		t.Fatalf("step-up not used")
	}
	// The same approval cannot authorise a second enrollment.
	_, err = st.CreateEnrollment(ctx, newEnrollment("e3", "u1", t0.Add(3*time.Minute)), "s1", t0, audit("enrollment.created"))
	wantErr(t, err, approval.ErrLost)
}

func newDevice(id string) *approval.Device {
	return &approval.Device{ID: id, Name: "Pixel " + id, Platform: "android", PublicKey: `{"kty":"EC"}`,
		PushProvider: "fcm", PushToken: "push-" + id, LinkIP: "198.51.100.7"}
}

func link(st *store.Store, t *testing.T, enrollment string, d *approval.Device, at time.Time, maxDevices int) (*approval.LinkResult, error) {
	return st.LinkDevice(t.Context(), approval.Link{EnrollmentID: enrollment, Device: d, MaxDevices: maxDevices,
		At: at, Audit: audit("device.linked")})
}

func testLinkDevice(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustEnroll(t, st, newEnrollment("e1", "u1", t0))
	res, err := link(st, t, "e1", newDevice("d1"), t0.Add(time.Minute), 1)
	if err != nil {
		t.Fatal(err)
	}
	e := res.Enrollment
	if e.Status != approval.EnrollLinked || e.DeviceID != "d1" || e.DeviceName != "Pixel d1" || e.Version != 2 ||
		e.EndedAt == nil || !e.EndedAt.Equal(t0.Add(time.Minute)) || len(res.Retired) != 0 {
		t.Fatalf("LinkDevice = %+v", res)
	}
	d, err := st.GetDevice(ctx, "d1")
	if err != nil || d.UserID != "u1" || d.Status != approval.DeviceActive || d.EnrollmentID != "e1" ||
		!d.CreatedAt.Equal(t0.Add(time.Minute)) || d.PushToken != "push-d1" || d.LinkIP != "198.51.100.7" || d.PublicKey != `{"kty":"EC"}` {
		t.Fatalf("device = %+v, %v", d, err)
	}
	if ev := auditEvents(t, st, "e1"); len(ev) != 2 || ev[1] != "device.linked" {
		t.Fatalf("audit = %v", ev)
	}

	// Used twice.
	_, err = link(st, t, "e1", newDevice("d2"), t0.Add(2*time.Minute), 1)
	wantErr(t, err, approval.ErrLost)
	if _, err := st.GetDevice(ctx, "d2"); !errors.Is(err, approval.ErrNotFound) {
		t.Fatalf("lost link stored its device: %v", err)
	}
	_, err = link(st, t, "nope", newDevice("d2"), t0, 1)
	wantErr(t, err, approval.ErrNotFound)

	// Expired (expires_at is not after l.At).
	mustEnroll(t, st, newEnrollment("x1", "u2", t0))
	_, err = link(st, t, "x1", newDevice("dx"), t0.Add(10*time.Minute), 1)
	wantErr(t, err, approval.ErrLost)
	if _, err := st.GetDevice(ctx, "dx"); !errors.Is(err, approval.ErrNotFound) {
		t.Fatalf("expired link stored its device: %v", err)
	}

	// u1 has an active device; an enrollment without authorized_by is refused.
	mustEnroll(t, st, newEnrollment("e2", "u1", t0.Add(2*time.Minute)))
	_, err = link(st, t, "e2", newDevice("d2"), t0.Add(3*time.Minute), 1)
	wantErr(t, err, approval.ErrStepUpRequired)
	if got, _ := st.GetEnrollment(ctx, "e2"); got.Status != approval.EnrollPending || got.Version != 1 {
		t.Fatalf("step-up refusal changed the enrollment: %+v", got)
	}
	if _, err := st.GetDevice(ctx, "d2"); !errors.Is(err, approval.ErrNotFound) {
		t.Fatalf("step-up refusal stored the device: %v", err)
	}
	if ev := auditEvents(t, st, "e2"); len(ev) != 1 {
		t.Fatalf("step-up refusal wrote audit: %v", ev)
	}
	if active, _ := st.ActiveDevices(ctx, "u1"); len(active) != 1 || active[0].ID != "d1" {
		t.Fatalf("active = %+v", active)
	}
	// The sweeper's / re-check's end of it.
	got, err := st.EndEnrollment(ctx, "e2", t0.Add(3*time.Minute), audit("enrollment.ended"))
	if err != nil || got.Status != approval.EnrollExpired || got.Version != 2 {
		t.Fatalf("EndEnrollment = %+v, %v", got, err)
	}
	_, err = st.EndEnrollment(ctx, "e2", t0.Add(3*time.Minute), audit("enrollment.ended"))
	wantErr(t, err, approval.ErrLost)
	_, err = st.EndEnrollment(ctx, "nope", t0, audit("enrollment.ended"))
	wantErr(t, err, approval.ErrNotFound)
	if ev := auditEvents(t, st, "e2"); len(ev) != 2 || ev[1] != "enrollment.ended" {
		t.Fatalf("audit = %v", ev)
	}
}

func testLinkDeviceRetires(t *testing.T, st *store.Store) {
	ctx := t.Context()
	at := t0
	linkNext := func(n, max int) *approval.LinkResult {
		t.Helper()
		eid, did := fmt.Sprintf("e%d", n), fmt.Sprintf("d%d", n)
		e := newEnrollment(eid, "u1", at)
		if n > 1 {
			e.AuthorizedBy, e.StepUpMethod = "step-"+eid, approval.MethodPush
		}
		mustEnroll(t, st, e)
		at = at.Add(time.Minute)
		res, err := link(st, t, eid, newDevice(did), at, max)
		if err != nil {
			t.Fatalf("link %s: %v", did, err)
		}
		return res
	}
	linkNext(1, 2)
	if res := linkNext(2, 2); len(res.Retired) != 0 {
		t.Fatalf("retired %+v below the limit", res.Retired)
	}
	res := linkNext(3, 2)
	if len(res.Retired) != 1 || res.Retired[0].ID != "d1" || res.Retired[0].Status != approval.DeviceRetired ||
		res.Retired[0].RetiredBy != "d3" || res.Retired[0].EndedAt == nil || !res.Retired[0].EndedAt.Equal(at) {
		t.Fatalf("retired = %+v", res.Retired)
	}
	active, err := st.ActiveDevices(ctx, "u1")
	if err != nil || len(active) != 2 || active[0].ID != "d2" || active[1].ID != "d3" {
		t.Fatalf("active = %+v, %v", active, err)
	}
	// Limit 1 (the default): the new device replaces both.
	res = linkNext(4, 1)
	if len(res.Retired) != 2 || res.Retired[0].ID != "d2" || res.Retired[1].ID != "d3" {
		t.Fatalf("retired = %+v", res.Retired)
	}
	if active, _ := st.ActiveDevices(ctx, "u1"); len(active) != 1 || active[0].ID != "d4" {
		t.Fatalf("active = %+v", active)
	}
	if d, _ := st.GetDevice(ctx, "d1"); d.Status != approval.DeviceRetired || d.RetiredBy != "d3" {
		t.Fatalf("d1 = %+v", d)
	}
}

func testRemoveDevice(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustEnroll(t, st, newEnrollment("e1", "u1", t0))
	if _, err := link(st, t, "e1", newDevice("d1"), t0, 1); err != nil {
		t.Fatal(err)
	}
	at := t0.Add(5 * time.Minute)
	_, err := st.RemoveDevice(ctx, "u2", "d1", "", time.Time{}, at, audit("device.removed"))
	wantErr(t, err, approval.ErrNotFound)
	_, err = st.RemoveDevice(ctx, "u1", "d1", "nope", t0, at, audit("device.removed"))
	wantErr(t, err, approval.ErrLost)
	if d, _ := st.GetDevice(ctx, "d1"); d.Status != approval.DeviceActive {
		t.Fatalf("failed step-up removed the device: %+v", d)
	}
	approvedLinkDevice(t, st, "s1", "u1", t0.Add(time.Minute), approval.MethodPush)
	d, err := st.RemoveDevice(ctx, "u1", "d1", "s1", t0, at, audit("device.removed"))
	if err != nil || d.Status != approval.DeviceRemoved || d.EndedAt == nil || !d.EndedAt.Equal(at) {
		t.Fatalf("RemoveDevice = %+v, %v", d, err)
	}
	if c, _ := st.GetChallenge(ctx, "s1"); c.StepUpUsedAt == nil {
		t.Fatal("step-up not used")
	}
	_, err = st.RemoveDevice(ctx, "u1", "d1", "", time.Time{}, at, audit("device.removed"))
	wantErr(t, err, approval.ErrNotFound)
	if active, _ := st.ActiveDevices(ctx, "u1"); len(active) != 0 {
		t.Fatalf("active = %+v", active)
	}
	entries, err := st.AuditLog(ctx, "d1")
	if err != nil || len(entries) != 1 || entries[0].UserID != "u1" || entries[0].ObjectType != "device" || !entries[0].At.Equal(at) {
		t.Fatalf("audit = %+v, %v", entries, err)
	}
}

func testPushToken(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustEnroll(t, st, newEnrollment("e1", "u1", t0))
	if _, err := link(st, t, "e1", newDevice("d1"), t0, 1); err != nil {
		t.Fatal(err)
	}
	if err := st.SetPushToken(ctx, "d1", "apns", "tokA", audit("device.push_token")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, st.SetPushToken(ctx, "nope", "apns", "x", audit("device.push_token")), approval.ErrNotFound)
	// An old token's failure does not kill the current one.
	if err := st.InvalidatePushToken(ctx, "d1", "push-d1", audit("device.push_invalid")); err != nil {
		t.Fatal(err)
	}
	if d, _ := st.GetDevice(ctx, "d1"); d.PushProvider != "apns" || d.PushToken != "tokA" || d.PushTokenInvalid {
		t.Fatalf("device = %+v", d)
	}
	if err := st.InvalidatePushToken(ctx, "d1", "tokA", audit("device.push_invalid")); err != nil {
		t.Fatal(err)
	}
	if d, _ := st.GetDevice(ctx, "d1"); !d.PushTokenInvalid {
		t.Fatalf("token not invalid: %+v", d)
	}
	if err := st.InvalidatePushToken(ctx, "d1", "tokA", audit("device.push_invalid")); err != nil {
		t.Fatal(err)
	}
	if err := st.SetPushToken(ctx, "d1", "apns", "tokB", audit("device.push_token")); err != nil {
		t.Fatal(err)
	}
	if d, _ := st.GetDevice(ctx, "d1"); d.PushToken != "tokB" || d.PushTokenInvalid {
		t.Fatalf("device = %+v", d)
	}
	ev := auditEvents(t, st, "d1")
	if len(ev) != 3 || ev[0] != "device.push_token" || ev[1] != "device.push_invalid" || ev[2] != "device.push_token" {
		t.Fatalf("audit = %v", ev)
	}

	// TouchDevice never moves last_seen_at back.
	if err := st.TouchDevice(ctx, "d1", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := st.TouchDevice(ctx, "d1", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if d, _ := st.GetDevice(ctx, "d1"); d.LastSeenAt == nil || !d.LastSeenAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("last seen = %v", d.LastSeenAt)
	}
	if err := st.TouchDevice(ctx, "nope", t0); err != nil {
		t.Fatal(err)
	}
	_, err := st.GetDevice(ctx, "nope")
	wantErr(t, err, approval.ErrNotFound)
}

func testCreateChallengeCounts(t *testing.T, st *store.Store) {
	ctx := t.Context()
	c1 := newChallenge("c1", "u1", t0)
	got := mustCreate(t, st, c1)
	if got.Version != 1 || got.Status != approval.StatusPending || string(got.Context) != string(c1.Context) ||
		!got.CreatedAt.Equal(t0) || got.CreatedAt.Location() != time.UTC || got.DecidedAt != nil || got.APIKeyName != "shop" {
		t.Fatalf("created = %+v", got)
	}
	stored, err := st.GetChallenge(ctx, "c1")
	if err != nil || string(stored.Context) != `{"Property":"12 High St","Offer":"£350,000"}` {
		t.Fatalf("GetChallenge = %+v, %v", stored, err)
	}
	_, err = st.GetChallenge(ctx, "nope")
	wantErr(t, err, approval.ErrNotFound)

	c2 := newChallenge("c2", "u1", t0.Add(time.Second)) // same requester
	c2.Number = "17"
	mustCreate(t, st, c2)
	c3 := newChallenge("c3", "u1", t0.Add(2*time.Second)) // other IP
	c3.RequesterKey = "u1|198.51.100.1"
	mustCreate(t, st, c3)
	c4 := newChallenge("c4", "u1", t0.Add(3*time.Second)) // decided
	mustCreate(t, st, c4)
	mustDecide(t, st, "c4", approval.StatusDenied, t0.Add(4*time.Second))
	old := newChallenge("old", "u1", t0.Add(-2*time.Hour)) // before the window, pending past expiry
	old.Number = "42"
	mustCreate(t, st, old)
	mustCreate(t, st, newChallenge("other", "u2", t0))

	var counts approval.ChallengeCounts
	c5 := newChallenge("c5", "u1", t0.Add(10*time.Second))
	_, _, err = st.CreateChallenge(ctx, approval.NewChallenge{
		Challenge: c5, Since: t0.Add(-time.Hour), Audit: audit("challenge.created"),
		Check: func(c approval.ChallengeCounts) error {
			counts = c
			c5.Number = "05"
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := approval.ChallengeCounts{RequesterPending: 2, RequesterRecent: 3, UserPending: 3, UserRecent: 4,
		Numbers: map[string]bool{"17": true, "42": true}}
	if fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Fatalf("counts = %+v, want %+v", counts, want)
	}
	if got, _ := st.GetChallenge(ctx, "c5"); got.Number != "05" {
		t.Fatalf("number = %q", got.Number)
	}
	_, _, err = st.CreateChallenge(ctx, approval.NewChallenge{Challenge: newChallenge("c5", "u1", t0)})
	wantErr(t, err, approval.ErrConflict)
}

func testCreateChallengeRefused(t *testing.T, st *store.Store) {
	ctx := t.Context()
	refused := errors.New("rate limited")
	n := approval.NewChallenge{
		Challenge: newChallenge("c1", "u1", t0), Since: t0.Add(-time.Hour), Audit: audit("challenge.created"),
		IdemScope: "k1", IdemKey: "idem", IdemBodyHash: "b1", IdemExpiresAt: t0.Add(24 * time.Hour),
		Check: func(approval.ChallengeCounts) error { return refused },
	}
	_, _, err := st.CreateChallenge(ctx, n)
	wantErr(t, err, refused)
	_, err = st.GetChallenge(ctx, "c1")
	wantErr(t, err, approval.ErrNotFound)
	if ev := auditEvents(t, st, "c1"); len(ev) != 0 {
		t.Fatalf("refused create wrote audit %v", ev)
	}
	// The key was not claimed: the retry creates.
	n.Check = nil
	n.Challenge = newChallenge("c2", "u1", t0)
	c, replayed, err := st.CreateChallenge(ctx, n)
	if err != nil || replayed || c.ID != "c2" {
		t.Fatalf("CreateChallenge = %v, %v, %v", c, replayed, err)
	}
}

func testIdempotency(t *testing.T, st *store.Store) {
	ctx := t.Context()
	checks := 0
	mk := func(id, scope, body string, at time.Time) approval.NewChallenge {
		return approval.NewChallenge{
			Challenge: newChallenge(id, "u1", at), Since: at.Add(-time.Hour), Audit: audit("challenge.created"),
			IdemScope: scope, IdemKey: "key-1", IdemBodyHash: body, IdemExpiresAt: at.Add(24 * time.Hour),
			Check: func(approval.ChallengeCounts) error { checks++; return nil },
		}
	}
	first, replayed, err := st.CreateChallenge(ctx, mk("c1", "k1", "b1", t0))
	if err != nil || replayed || first.ID != "c1" {
		t.Fatalf("first = %v, %v, %v", first, replayed, err)
	}
	again, replayed, err := st.CreateChallenge(ctx, mk("c2", "k1", "b1", t0.Add(time.Minute)))
	if err != nil || !replayed || again.ID != "c1" || again.Version != first.Version {
		t.Fatalf("replay = %+v, %v, %v", again, replayed, err)
	}
	if checks != 1 {
		t.Fatalf("Check called %d times; a replay must not count", checks)
	}
	_, _, err = st.CreateChallenge(ctx, mk("c3", "k1", "other body", t0.Add(time.Minute)))
	wantErr(t, err, approval.ErrIdemMismatch)
	for _, id := range []string{"c2", "c3"} {
		if _, err := st.GetChallenge(ctx, id); !errors.Is(err, approval.ErrNotFound) {
			t.Fatalf("%s stored: %v", id, err)
		}
	}
	// Another API key's same key is another request.
	other, replayed, err := st.CreateChallenge(ctx, mk("c4", "k2", "b1", t0.Add(time.Minute)))
	if err != nil || replayed || other.ID != "c4" {
		t.Fatalf("other scope = %v, %v, %v", other, replayed, err)
	}
	// A replay of a decided challenge returns it as it is now.
	mustDecide(t, st, "c1", approval.StatusApproved, t0.Add(2*time.Minute))
	again, replayed, err = st.CreateChallenge(ctx, mk("c5", "k1", "b1", t0.Add(3*time.Minute)))
	if err != nil || !replayed || again.ID != "c1" || again.Status != approval.StatusApproved {
		t.Fatalf("replay after decision = %+v, %v, %v", again, replayed, err)
	}
	// Past its expiry the key is absent, even before Purge.
	late, replayed, err := st.CreateChallenge(ctx, mk("c6", "k1", "b2", t0.Add(24*time.Hour)))
	if err != nil || replayed || late.ID != "c6" {
		t.Fatalf("after expiry = %v, %v, %v", late, replayed, err)
	}
	again, replayed, err = st.CreateChallenge(ctx, mk("c7", "k1", "b2", t0.Add(25*time.Hour)))
	if err != nil || !replayed || again.ID != "c6" {
		t.Fatalf("replay of replacement = %v, %v, %v", again, replayed, err)
	}
}

func testIdempotencyConcurrent(t *testing.T, st *store.Store) {
	const n = 20
	type result struct {
		c        *approval.Challenge
		replayed bool
		err      error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, replayed, err := st.CreateChallenge(t.Context(), approval.NewChallenge{
				Challenge: newChallenge(fmt.Sprintf("c%d", i), "u1", t0), Since: t0.Add(-time.Hour),
				Audit:     audit("challenge.created"),
				IdemScope: "k1", IdemKey: "same", IdemBodyHash: "b", IdemExpiresAt: t0.Add(24 * time.Hour),
			})
			results[i] = result{c, replayed, err}
		})
	}
	wg.Wait()
	fresh := 0
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("caller %d: %v", i, r.err)
		}
		if r.c.ID != results[0].c.ID {
			t.Fatalf("caller %d got %s, caller 0 got %s", i, r.c.ID, results[0].c.ID)
		}
		if !r.replayed {
			fresh++
		}
	}
	if fresh != 1 {
		t.Fatalf("%d callers created; want 1", fresh)
	}
	pending, err := st.PendingChallenges(t.Context(), "u1", t0)
	if err != nil || len(pending) != 1 {
		t.Fatalf("pending = %d, %v; want 1", len(pending), err)
	}
}

func testNumbersConcurrent(t *testing.T, st *store.Store) {
	const n, values = 20, 10
	full := errors.New("no free number")
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c := newChallenge(fmt.Sprintf("c%d", i), "u1", t0)
			_, _, errs[i] = st.CreateChallenge(t.Context(), approval.NewChallenge{
				Challenge: c, Since: t0.Add(-time.Hour), Audit: audit("challenge.created"),
				Check: func(counts approval.ChallengeCounts) error {
					var free []string
					for v := range values {
						if s := fmt.Sprint(v); !counts.Numbers[s] {
							free = append(free, s)
						}
					}
					if len(free) == 0 {
						return full
					}
					c.Number = free[mrand.IntN(len(free))]
					return nil
				},
			})
		})
	}
	wg.Wait()
	created := 0
	for _, err := range errs {
		switch {
		case err == nil:
			created++
		case !errors.Is(err, full):
			t.Fatal(err)
		}
	}
	pending, err := st.PendingChallenges(t.Context(), "u1", t0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, c := range pending {
		if seen[c.Number] || c.Number == "" {
			t.Fatalf("number %q repeated or empty", c.Number)
		}
		seen[c.Number] = true
	}
	if created != values || len(pending) != values {
		t.Fatalf("created %d, pending %d; want %d", created, len(pending), values)
	}
}

// testLimitsConcurrent: the counts Check sees stay true until the insert
// commits, so a limit holds against concurrent creates.
func testLimitsConcurrent(t *testing.T, st *store.Store) {
	const n, limit = 30, 5
	limited := errors.New("limited")
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c := newChallenge(fmt.Sprintf("c%d", i), "u1", t0)
			if i%2 == 1 {
				c.RequesterKey = "u1|198.51.100.1"
			}
			_, _, errs[i] = st.CreateChallenge(t.Context(), approval.NewChallenge{
				Challenge: c, Since: t0.Add(-time.Hour), Audit: audit("challenge.created"),
				Check: func(counts approval.ChallengeCounts) error {
					if counts.UserPending >= limit || counts.UserRecent >= limit {
						return limited
					}
					return nil
				},
			})
		})
	}
	wg.Wait()
	created := 0
	for _, err := range errs {
		switch {
		case err == nil:
			created++
		case !errors.Is(err, limited):
			t.Fatal(err)
		}
	}
	pending, err := st.PendingChallenges(t.Context(), "u1", t0)
	if err != nil || created != limit || len(pending) != limit {
		t.Fatalf("created %d, pending %d (%v); want %d", created, len(pending), err, limit)
	}
}

// testNumberRetry: a Check that ignores Numbers hits the unique index; the
// store runs the transaction again and Check picks again.
func testNumberRetry(t *testing.T, st *store.Store) {
	ctx := t.Context()
	c1 := newChallenge("c1", "u1", t0)
	c1.Number = "7"
	mustCreate(t, st, c1)
	calls := 0
	c2 := newChallenge("c2", "u1", t0)
	got, _, err := st.CreateChallenge(ctx, approval.NewChallenge{
		Challenge: c2, Audit: audit("challenge.created"),
		Check: func(counts approval.ChallengeCounts) error {
			calls++
			c2.Number = "7"
			if calls > 1 && counts.Numbers["7"] {
				c2.Number = "8"
			}
			return nil
		},
	})
	if err != nil || got.Number != "8" || calls != 2 {
		t.Fatalf("CreateChallenge = %+v, %v after %d calls", got, err, calls)
	}
	if ev := auditEvents(t, st, "c2"); len(ev) != 1 {
		t.Fatalf("audit = %v", ev)
	}
	// A number is free again once its challenge is final; another user's
	// numbers never collide.
	mustDecide(t, st, "c1", approval.StatusDenied, t0.Add(time.Second))
	c3 := newChallenge("c3", "u1", t0)
	c3.Number = "7"
	mustCreate(t, st, c3)
	c4 := newChallenge("c4", "u2", t0)
	c4.Number = "8"
	mustCreate(t, st, c4)
	// A Check that never gives way: ErrConflict after a few attempts.
	c5 := newChallenge("c5", "u1", t0)
	_, _, err = st.CreateChallenge(ctx, approval.NewChallenge{
		Challenge: c5, Audit: audit("challenge.created"),
		Check: func(approval.ChallengeCounts) error { c5.Number = "7"; return nil },
	})
	wantErr(t, err, approval.ErrConflict)
	if _, err := st.GetChallenge(ctx, "c5"); !errors.Is(err, approval.ErrNotFound) {
		t.Fatalf("c5 stored: %v", err)
	}
}

func testDecideRace(t *testing.T, st *store.Store) {
	mustCreate(t, st, newChallenge("c1", "u1", t0))
	const n = 50
	statuses := []string{approval.StatusApproved, approval.StatusDenied, approval.StatusCancelled}
	results := make([]*approval.Challenge, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			status := statuses[i%3]
			method := approval.MethodPush
			if status == approval.StatusCancelled {
				method = ""
			}
			results[i], errs[i] = st.Decide(t.Context(), approval.Decision{
				ID: "c1", Status: status, Method: method, DeviceID: fmt.Sprintf("d%d", i),
				Fraud: status == approval.StatusDenied, ResultToken: fmt.Sprintf("result-%d", i),
				At: t0.Add(time.Duration(i) * time.Millisecond), Audit: audit("challenge." + status),
			})
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i := range n {
		switch {
		case errs[i] == nil:
			if winner >= 0 {
				t.Fatalf("callers %d and %d both won", winner, i)
			}
			winner = i
		case !errors.Is(errs[i], approval.ErrLost):
			t.Fatalf("caller %d: %v, want ErrLost", i, errs[i])
		}
	}
	if winner < 0 {
		t.Fatal("nobody won")
	}
	final, err := st.GetChallenge(t.Context(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	w := results[winner]
	if final.Status != statuses[winner%3] || final.ResultToken != fmt.Sprintf("result-%d", winner) ||
		final.DeviceID != fmt.Sprintf("d%d", winner) || final.FraudReported != (final.Status == approval.StatusDenied) ||
		final.Version != 2 || w.Version != 2 || w.ResultToken != final.ResultToken ||
		final.DecidedAt == nil || !final.DecidedAt.Equal(t0.Add(time.Duration(winner)*time.Millisecond)) {
		t.Fatalf("final = %+v, winner %d returned %+v", final, winner, w)
	}
	ev := auditEvents(t, st, "c1")
	if len(ev) != 2 || ev[1] != "challenge."+final.Status {
		t.Fatalf("audit = %v", ev)
	}
}

func testDecideConditions(t *testing.T, st *store.Store) {
	ctx := t.Context()
	c := mustCreate(t, st, newChallenge("c1", "u1", t0))
	for _, at := range []time.Time{c.ExpiresAt, c.ExpiresAt.Add(time.Second)} {
		_, err := st.Decide(ctx, approval.Decision{ID: "c1", Status: approval.StatusApproved, Method: approval.MethodPush, At: at})
		wantErr(t, err, approval.ErrLost)
	}
	_, err := st.Decide(ctx, approval.Decision{ID: "nope", Status: approval.StatusApproved, At: t0})
	wantErr(t, err, approval.ErrNotFound)
	if _, err := st.Decide(ctx, approval.Decision{ID: "c1", Status: approval.StatusExpired, At: t0}); err == nil {
		t.Fatal("Decide accepted status expired")
	}
	got := mustDecide(t, st, "c1", approval.StatusApproved, c.ExpiresAt.Add(-time.Millisecond))
	if got.Method != approval.MethodPush || got.DeviceID != "d1" || got.FraudReported {
		t.Fatalf("decided = %+v", got)
	}
	_, err = st.Decide(ctx, approval.Decision{ID: "c1", Status: approval.StatusDenied, At: t0})
	wantErr(t, err, approval.ErrLost)
}

func testExpire(t *testing.T, st *store.Store) {
	ctx := t.Context()
	c := mustCreate(t, st, newChallenge("c1", "u1", t0))
	_, err := st.Expire(ctx, "c1", "r", c.ExpiresAt.Add(-time.Millisecond), audit("challenge.expired"))
	wantErr(t, err, approval.ErrLost)
	got, err := st.Expire(ctx, "c1", "result", c.ExpiresAt, audit("challenge.expired"))
	if err != nil || got.Status != approval.StatusExpired || got.ResultToken != "result" || got.Version != 2 || got.DecidedAt != nil {
		t.Fatalf("Expire = %+v, %v", got, err)
	}
	_, err = st.Expire(ctx, "c1", "again", c.ExpiresAt.Add(time.Hour), audit("challenge.expired"))
	wantErr(t, err, approval.ErrLost)
	_, err = st.Expire(ctx, "nope", "r", t0, audit("challenge.expired"))
	wantErr(t, err, approval.ErrNotFound)
	if ev := auditEvents(t, st, "c1"); len(ev) != 2 || ev[1] != "challenge.expired" {
		t.Fatalf("audit = %v", ev)
	}
	// Decided: not expired by the sweeper.
	mustCreate(t, st, newChallenge("c2", "u1", t0))
	mustDecide(t, st, "c2", approval.StatusApproved, t0)
	_, err = st.Expire(ctx, "c2", "r", t0.Add(time.Hour), audit("challenge.expired"))
	wantErr(t, err, approval.ErrLost)
}

func testDue(t *testing.T, st *store.Store) {
	ctx := t.Context()
	for i, ttl := range []time.Duration{3 * time.Minute, time.Minute, 2 * time.Minute, 10 * time.Minute} {
		c := newChallenge(fmt.Sprintf("c%d", i), "u1", t0)
		c.ExpiresAt = t0.Add(ttl)
		mustCreate(t, st, c)
		e := newEnrollment(fmt.Sprintf("e%d", i), fmt.Sprintf("u%d", i), t0)
		e.ExpiresAt = t0.Add(ttl)
		mustEnroll(t, st, e)
	}
	mustDecide(t, st, "c2", approval.StatusApproved, t0)
	if _, err := st.EndEnrollment(ctx, "e2", t0, approval.AuditEntry{}); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(3 * time.Minute)
	cs, err := st.DueChallenges(ctx, now, 10)
	if err != nil || len(cs) != 2 || cs[0].ID != "c1" || cs[1].ID != "c0" {
		t.Fatalf("DueChallenges = %v, %v", cs, err)
	}
	if cs, _ := st.DueChallenges(ctx, now, 1); len(cs) != 1 || cs[0].ID != "c1" {
		t.Fatalf("DueChallenges limit 1 = %v", cs)
	}
	es, err := st.DueEnrollments(ctx, now, 10)
	if err != nil || len(es) != 2 || es[0].ID != "e1" || es[1].ID != "e0" {
		t.Fatalf("DueEnrollments = %v, %v", es, err)
	}
	if es, _ := st.DueEnrollments(ctx, t0, 10); len(es) != 0 {
		t.Fatalf("DueEnrollments before any expiry = %v", es)
	}
}

func testCountNumberMismatch(t *testing.T, st *store.Store) {
	ctx := t.Context()
	c := newChallenge("c1", "u1", t0)
	c.Number = "42"
	mustCreate(t, st, c)
	for want := 1; want <= 3; want++ {
		n, err := st.CountNumberMismatch(ctx, "c1", t0.Add(time.Second), audit("challenge.number_mismatch"))
		if err != nil || n != want {
			t.Fatalf("CountNumberMismatch = %d, %v; want %d", n, err, want)
		}
	}
	if got, _ := st.GetChallenge(ctx, "c1"); got.NumberAttempts != 3 || got.Version != 4 {
		t.Fatalf("challenge = %+v", got)
	}
	_, err := st.CountNumberMismatch(ctx, "c1", c.ExpiresAt, audit("challenge.number_mismatch"))
	wantErr(t, err, approval.ErrLost)
	mustDecide(t, st, "c1", approval.StatusDenied, t0.Add(2*time.Second))
	_, err = st.CountNumberMismatch(ctx, "c1", t0.Add(3*time.Second), audit("challenge.number_mismatch"))
	wantErr(t, err, approval.ErrLost)
	_, err = st.CountNumberMismatch(ctx, "nope", t0, audit("challenge.number_mismatch"))
	wantErr(t, err, approval.ErrNotFound)
	if ev := auditEvents(t, st, "c1"); len(ev) != 5 {
		t.Fatalf("audit = %v", ev)
	}
}

func testPendingChallenges(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustCreate(t, st, newChallenge("later", "u1", t0.Add(time.Minute)))
	mustCreate(t, st, newChallenge("first", "u1", t0))
	old := newChallenge("old", "u1", t0.Add(-time.Hour))
	mustCreate(t, st, old) // pending, but past expires_at
	mustCreate(t, st, newChallenge("done", "u1", t0))
	mustDecide(t, st, "done", approval.StatusApproved, t0)
	mustCreate(t, st, newChallenge("other", "u2", t0))
	got, err := st.PendingChallenges(ctx, "u1", t0.Add(2*time.Minute))
	if err != nil || len(got) != 2 || got[0].ID != "first" || got[1].ID != "later" {
		t.Fatalf("PendingChallenges = %v, %v", got, err)
	}
	if got, _ := st.PendingChallenges(ctx, "u3", t0); len(got) != 0 {
		t.Fatalf("PendingChallenges of nobody = %v", got)
	}
}

func testSetDelivery(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustCreate(t, st, newChallenge("c1", "u1", t0))
	got, err := st.SetDelivery(ctx, "c1", approval.DeliverySent, 2, "")
	if err != nil || got.DeliveryPush != approval.DeliverySent || got.PushDevices != 2 || got.DeliveryEmail != "" || got.Version != 2 {
		t.Fatalf("SetDelivery push = %+v, %v", got, err)
	}
	got, err = st.SetDelivery(ctx, "c1", "", 0, approval.DeliverySent)
	if err != nil || got.DeliveryPush != approval.DeliverySent || got.PushDevices != 2 || got.DeliveryEmail != approval.DeliverySent || got.Version != 3 {
		t.Fatalf("SetDelivery email = %+v, %v", got, err)
	}
	got, err = st.SetDelivery(ctx, "c1", "", 0, "")
	if err != nil || got.Version != 3 {
		t.Fatalf("SetDelivery nothing = %+v, %v", got, err)
	}
	_, err = st.SetDelivery(ctx, "nope", approval.DeliveryFailed, 0, "")
	wantErr(t, err, approval.ErrNotFound)
}

func testRememberJTI(t *testing.T, st *store.Store) {
	const n = 20
	var fresh atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			ok, err := st.RememberJTI(t.Context(), "d1", "jti-1", t0.Add(time.Minute))
			if err != nil {
				t.Error(err)
			}
			if ok {
				fresh.Add(1)
			}
		})
	}
	wg.Wait()
	if fresh.Load() != 1 {
		t.Fatalf("%d callers saw the jti first; want 1", fresh.Load())
	}
	if ok, err := st.RememberJTI(t.Context(), "d2", "jti-1", t0.Add(time.Minute)); err != nil || !ok {
		t.Fatalf("other issuer = %v, %v", ok, err)
	}
}

func testCodeFailures(t *testing.T, st *store.Store) {
	ctx := t.Context()
	record := func(ip string, at time.Time) {
		t.Helper()
		if err := st.RecordCodeFailure(ctx, ip, at); err != nil {
			t.Fatal(err)
		}
	}
	record("a", t0.Add(-11*time.Minute)) // outside the window
	for i := range 3 {
		record("a", t0.Add(time.Duration(i)*time.Second))
	}
	record("b", t0)
	record("b", t0.Add(-10*time.Minute)) // exactly at since: inside
	perIP, total, err := st.CodeFailures(ctx, "a", t0.Add(-10*time.Minute))
	if err != nil || perIP != 3 || total != 5 {
		t.Fatalf("CodeFailures(a) = %d, %d, %v; want 3, 5", perIP, total, err)
	}
	perIP, total, err = st.CodeFailures(ctx, "c", t0.Add(-10*time.Minute))
	if err != nil || perIP != 0 || total != 5 {
		t.Fatalf("CodeFailures(c) = %d, %d, %v; want 0, 5", perIP, total, err)
	}
}

func testHit(t *testing.T, st *store.Store) {
	ctx := t.Context()
	base := t0.Truncate(time.Minute)
	hit := func(key string, at time.Time, want int) {
		t.Helper()
		n, err := st.Hit(ctx, key, time.Minute, at)
		if err != nil || n != want {
			t.Fatalf("Hit(%s, %v) = %d, %v; want %d", key, at, n, err, want)
		}
	}
	hit("dev-1", base, 1)
	hit("dev-1", base.Add(30*time.Second), 2)
	hit("dev-2", base.Add(30*time.Second), 1)
	hit("dev-1", base.Add(59999*time.Millisecond), 3)
	hit("dev-1", base.Add(time.Minute), 1) // next window
	hit("dev-1", base.Add(70*time.Second), 2)
	hit("dev-1", base.Add(50*time.Second), 3) // a late clock counts in the current window
	if _, err := st.Hit(ctx, "dev-1", 0, base); err == nil {
		t.Fatal("Hit with a zero window succeeded")
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := st.Hit(ctx, "dev-3", time.Minute, base); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	hit("dev-3", base, 21)
}

func testAudit(t *testing.T, st *store.Store) {
	ctx := t.Context()
	mustCreate(t, st, newChallenge("c1", "u1", t0))
	detail := json.RawMessage(`{"z":1,"a":[true]}`)
	e := approval.AuditEntry{At: t0.Add(time.Second), ActorType: approval.ActorDevice, Actor: "d1", Event: "challenge.approved",
		IP: "198.51.100.7", Detail: detail}
	if _, err := st.Decide(ctx, approval.Decision{ID: "c1", Status: approval.StatusApproved, Method: approval.MethodPush,
		DeviceID: "d1", At: t0.Add(time.Second), Audit: e}); err != nil {
		t.Fatal(err)
	}
	// A change that failed writes no entry.
	if _, err := st.Decide(ctx, approval.Decision{ID: "c1", Status: approval.StatusDenied, At: t0.Add(2 * time.Second),
		Audit: audit("challenge.denied")}); !errors.Is(err, approval.ErrLost) {
		t.Fatal(err)
	}
	if _, err := st.Expire(ctx, "c1", "r", t0.Add(time.Hour), audit("challenge.expired")); !errors.Is(err, approval.ErrLost) {
		t.Fatal(err)
	}
	if err := st.Audit(ctx, approval.AuditEntry{At: t0.Add(3 * time.Second), ActorType: approval.ActorAPIKey, Actor: "shop",
		Event: "challenge.viewed", ObjectType: "challenge", ObjectID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if err := st.Audit(ctx, approval.AuditEntry{}); err == nil {
		t.Fatal("Audit without event succeeded")
	}
	entries, err := st.AuditLog(ctx, "c1")
	if err != nil || len(entries) != 3 {
		t.Fatalf("AuditLog = %+v, %v", entries, err)
	}
	got := entries[1]
	want := e
	want.ObjectType, want.ObjectID, want.UserID = "challenge", "c1", "u1"
	if got.Event != want.Event || got.ActorType != want.ActorType || got.Actor != want.Actor || got.IP != want.IP ||
		got.ObjectType != want.ObjectType || got.ObjectID != want.ObjectID || got.UserID != want.UserID ||
		!got.At.Equal(want.At) || string(got.Detail) != string(detail) {
		t.Fatalf("entry = %+v, want %+v", got, want)
	}
	if entries[0].Event != "challenge.created" || entries[2].Event != "challenge.viewed" || entries[2].UserID != "" {
		t.Fatalf("entries = %+v", entries)
	}
	// An entry without an event is not written with the change.
	mustCreate(t, st, newChallenge("c2", "u1", t0))
	if _, err := st.Decide(ctx, approval.Decision{ID: "c2", Status: approval.StatusCancelled, At: t0}); err != nil {
		t.Fatal(err)
	}
	if ev := auditEvents(t, st, "c2"); len(ev) != 1 {
		t.Fatalf("audit = %v", ev)
	}
}

func testPurge(t *testing.T, st *store.Store) {
	ctx := t.Context()
	now := t0.Add(time.Hour)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := st.RememberJTI(ctx, "d1", "old", now.Add(-time.Second))
	must(err)
	_, err = st.RememberJTI(ctx, "d1", "live", now.Add(time.Second))
	must(err)
	must(st.RecordCodeFailure(ctx, "a", now.Add(-store.CodeFailureRetention-time.Second)))
	must(st.RecordCodeFailure(ctx, "a", now.Add(-time.Minute)))
	_, err = st.Hit(ctx, "old", time.Minute, now.Add(-2*time.Minute))
	must(err)
	_, err = st.Hit(ctx, "live", time.Minute, now)
	must(err)
	for i, exp := range []time.Time{now.Add(-time.Second), now.Add(time.Hour)} {
		_, _, err := st.CreateChallenge(ctx, approval.NewChallenge{Challenge: newChallenge(fmt.Sprintf("c%d", i), "u1", t0),
			IdemScope: "k", IdemKey: fmt.Sprintf("key%d", i), IdemBodyHash: "b", IdemExpiresAt: exp})
		must(err)
	}

	must(st.Purge(ctx, now))

	count := func(table string) int {
		var n int
		must(st.DB().GetContext(ctx, &n, "SELECT COUNT(*) FROM "+table))
		return n
	}
	for table, want := range map[string]int{"jti_seen": 1, "code_failures": 1, "rate_counters": 1, "idempotency_keys": 1, "challenges": 2} {
		if n := count(table); n != want {
			t.Errorf("%s has %d rows after Purge; want %d", table, n, want)
		}
	}
	if ok, err := st.RememberJTI(ctx, "d1", "live", now.Add(time.Second)); err != nil || ok {
		t.Fatalf("live jti forgotten: %v, %v", ok, err)
	}
	if _, total, _ := st.CodeFailures(ctx, "a", time.Time{}); total != 1 {
		t.Fatalf("code failures = %d", total)
	}
}

// testConcurrentWriters: many goroutines writing at once all succeed
// (SQLite: they queue instead of failing with SQLITE_BUSY).
func testConcurrentWriters(t *testing.T, st *store.Store) {
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	for i := range n {
		wg.Go(func() {
			ctx := t.Context()
			user := fmt.Sprintf("u%d", i%10)
			c := newChallenge(fmt.Sprintf("c%d", i), user, t0)
			if _, _, err := st.CreateChallenge(ctx, approval.NewChallenge{Challenge: c, Audit: audit("challenge.created")}); err != nil {
				errs <- err
				return
			}
			if _, err := st.Decide(ctx, approval.Decision{ID: c.ID, Status: approval.StatusApproved, At: t0, Audit: audit("challenge.approved")}); err != nil {
				errs <- err
			}
			if err := st.RecordCodeFailure(ctx, user, t0); err != nil {
				errs <- err
			}
			if _, err := st.PendingChallenges(ctx, user, t0); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, total, err := st.CodeFailures(t.Context(), "", time.Time{}); err != nil || total != n {
		t.Fatalf("total failures = %d, %v", total, err)
	}
}

// TestSchemaParity: both dialects' migrations make the same tables and columns.
func TestSchemaParity(t *testing.T) {
	columns := map[string][]string{}
	for _, dialect := range storetest.Dialects() {
		st := storetest.Open(t, dialect)
		var cols []string
		query := `SELECT m.name || '.' || p.name FROM sqlite_master m, pragma_table_info(m.name) p
			WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY 1`
		if dialect == store.Postgres {
			query = `SELECT table_name || '.' || column_name FROM information_schema.columns
				WHERE table_schema = 'public' ORDER BY 1`
		}
		if err := st.DB().SelectContext(t.Context(), &cols, query); err != nil {
			t.Fatal(err)
		}
		columns[dialect] = cols
	}
	a, b := columns[store.SQLite], columns[store.Postgres]
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("columns differ:\nsqlite:   %v\npostgres: %v", a, b)
	}
	if len(a) < 50 {
		t.Fatalf("only %d columns: %v", len(a), a)
	}
}
