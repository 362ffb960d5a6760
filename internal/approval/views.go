package approval

import (
	"encoding/json"
	"time"
)

// Delivery is the delivery member of challenge representations.
type Delivery struct {
	Push    string `json:"push,omitempty"`
	Devices *int   `json:"devices,omitempty"`
	Email   string `json:"email,omitempty"`
}

// ChallengeView is a challenge as the RP sees it (GET /v1/challenges/{id},
// the create response, webhooks).
type ChallengeView struct {
	ID             string          `json:"id"`
	UserID         string          `json:"user_id"`
	Action         string          `json:"action"`
	Context        json.RawMessage `json:"context"`
	Methods        []string        `json:"methods"`
	NumberMatching bool            `json:"number_matching"`
	Status         string          `json:"status"`
	CreatedAt      string          `json:"created_at"`
	ExpiresAt      string          `json:"expires_at"`
	Number         string          `json:"number,omitempty"`
	Delivery       Delivery        `json:"delivery"`
	Method         string          `json:"method,omitempty"`
	DeviceID       string          `json:"device_id,omitempty"`
	DecidedAt      string          `json:"decided_at,omitempty"`
	FraudReported  bool            `json:"fraud_reported"`
	ResultToken    string          `json:"result_token,omitempty"`
	WatchToken     string          `json:"watch_token,omitempty"`
}

// RFC3339 formats t in UTC with millisecond precision at most.
func RFC3339(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.999Z07:00") }

func optTime(t *time.Time) string {
	if t == nil {
		return ""
	}
	return RFC3339(*t)
}

// View is the RP's representation of c.
func (c *Challenge) View() ChallengeView {
	n := c.PushDevices
	v := ChallengeView{
		ID: c.ID, UserID: c.UserID, Action: c.Action, Context: c.Context,
		Methods: splitMethods(c.Methods), NumberMatching: c.Number != "",
		Status: c.Status, CreatedAt: RFC3339(c.CreatedAt), ExpiresAt: RFC3339(c.ExpiresAt),
		Number:   c.Number,
		Delivery: Delivery{Push: c.DeliveryPush, Devices: &n, Email: c.DeliveryEmail},
		Method:   c.Method, DeviceID: c.DeviceID, DecidedAt: optTime(c.DecidedAt),
		FraudReported: c.FraudReported, ResultToken: c.ResultToken,
	}
	if len(v.Context) == 0 {
		v.Context = json.RawMessage("{}")
	}
	return v
}

// WatchFrame is the browser's view of a challenge: its public state.
type WatchFrame struct {
	Type        string    `json:"type"`
	ID          string    `json:"id"`
	Status      string    `json:"status"`
	ExpiresAt   string    `json:"expires_at"`
	Number      string    `json:"number,omitempty"`
	Delivery    *Delivery `json:"delivery,omitempty"`
	Method      string    `json:"method,omitempty"`
	DecidedAt   string    `json:"decided_at,omitempty"`
	ResultToken string    `json:"result_token,omitempty"`
}

// WatchJSON is the watch frame of c.
func (c *Challenge) WatchJSON() []byte {
	f := WatchFrame{Type: "challenge", ID: c.ID, Status: c.Status, ExpiresAt: RFC3339(c.ExpiresAt),
		Method: c.Method, DecidedAt: optTime(c.DecidedAt), ResultToken: c.ResultToken}
	if c.Status == StatusPending {
		f.Number = c.Number
		f.Delivery = &Delivery{Push: c.DeliveryPush, Email: c.DeliveryEmail}
	}
	b, _ := json.Marshal(f)
	return b
}

// DeviceRef names a device in enrollment representations.
type DeviceRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// EnrollmentView is an enrollment as the RP and the browser see it (never
// the code, the URI or the watch token).
type EnrollmentView struct {
	Type         string     `json:"type,omitempty"`
	ID           string     `json:"id"`
	UserID       string     `json:"user_id"`
	Status       string     `json:"status"`
	ExpiresAt    string     `json:"expires_at"`
	Device       *DeviceRef `json:"device,omitempty"`
	StepUpMethod string     `json:"step_up_method,omitempty"`
}

// View is the RP's representation of e.
func (e *Enrollment) View() EnrollmentView {
	v := EnrollmentView{ID: e.ID, UserID: e.UserID, Status: e.Status, ExpiresAt: RFC3339(e.ExpiresAt), StepUpMethod: e.StepUpMethod}
	if e.DeviceID != "" {
		v.Device = &DeviceRef{ID: e.DeviceID, Name: e.DeviceName}
	}
	return v
}

// WatchJSON is the watch frame of e.
func (e *Enrollment) WatchJSON() []byte {
	v := e.View()
	v.Type = "enrollment"
	b, _ := json.Marshal(v)
	return b
}

// DeviceView is a device in GET /v1/users/{user_id}/devices.
type DeviceView struct {
	ID           string  `json:"id"`
	Name         string  `json:"name"`
	Platform     string  `json:"platform"`
	PushProvider string  `json:"push_provider"`
	CreatedAt    string  `json:"created_at"`
	LastSeenAt   *string `json:"last_seen_at"` // null until the device first calls
}

func nullTime(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := RFC3339(*t)
	return &s
}

// View is the RP's representation of d.
func (d *Device) View() DeviceView {
	return DeviceView{ID: d.ID, Name: d.Name, Platform: d.Platform, PushProvider: d.PushProvider,
		CreatedAt: RFC3339(d.CreatedAt), LastSeenAt: nullTime(d.LastSeenAt)}
}

// Requester describes who asked, shown on the phone.
type Requester struct {
	IP        string `json:"ip"`         // "" when the RP gave none
	UserAgent string `json:"user_agent"` // "" when the RP gave none
}

// DeviceChallengeView is a pending challenge as the device sees it: never
// the number.
type DeviceChallengeView struct {
	ID             string          `json:"id"`
	Action         string          `json:"action"`
	Context        json.RawMessage `json:"context"`
	CreatedAt      string          `json:"created_at"`
	ExpiresAt      string          `json:"expires_at"`
	NumberMatching bool            `json:"number_matching"`
	Requester      Requester       `json:"requester"`
}

// DeviceView is the device's representation of c.
func (c *Challenge) DeviceView() DeviceChallengeView {
	ctx := c.Context
	if len(ctx) == 0 {
		ctx = json.RawMessage("{}")
	}
	return DeviceChallengeView{ID: c.ID, Action: c.Action, Context: ctx, CreatedAt: RFC3339(c.CreatedAt),
		ExpiresAt: RFC3339(c.ExpiresAt), NumberMatching: c.Number != "",
		Requester: Requester{IP: c.RequesterIP, UserAgent: c.RequesterUA}}
}
