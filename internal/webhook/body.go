package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/store"
)

// Event is the body of every webhook POST.
type Event struct {
	ID        string `json:"id"`         // the event id: the same on every attempt; receivers dedupe on it
	Type      string `json:"type"`       // challenge.approved, ..., fraud.reported, device.linked, device.removed
	CreatedAt string `json:"created_at"` // when the change happened (RFC 3339, UTC): orders events
	Data      any    `json:"data"`
}

// DeviceData is the data of device.* events, and of fraud.reported when the
// report is a "This wasn't me" on a new-device notice (the object reported
// is then a device, not a challenge).
type DeviceData struct {
	UserID string              `json:"user_id"`
	Device approval.DeviceView `json:"device"` // as in GET /v1/users/{user_id}/devices
	// By is who made the change: the API key's name when the RP did (for
	// device.linked, the key that created the enrollment whose code the
	// device used), "device" when the app unlinked itself, "link" when the
	// user clicked "This wasn't me" in the new-device email.
	By string `json:"by"`
	// StepUpMethod is the method (push or email) of the link_device
	// challenge that authorised the change: for device.linked the
	// enrollment's authorized_by, for device.removed the DELETE's
	// ?authorized_by. Absent without one (a first device, an unlink by
	// the app or the link).
	StepUpMethod string `json:"step_up_method,omitempty"`
}

// Bodies are built when each attempt is sent, from the current state: for a
// challenge that is its final state, which never changes.
func (d *Dispatcher) body(ctx context.Context, ev store.WebhookEvent) ([]byte, error) {
	data, err := d.data(ctx, ev)
	if err != nil {
		return nil, err
	}
	return json.Marshal(Event{ID: ev.ID, Type: ev.Type, CreatedAt: approval.RFC3339(ev.CreatedAt), Data: data})
}

func (d *Dispatcher) data(ctx context.Context, ev store.WebhookEvent) (any, error) {
	switch ev.Type {
	case "challenge.approved", "challenge.denied", "challenge.expired", "challenge.cancelled":
		c, err := d.store.GetChallenge(ctx, ev.ObjectID)
		if err != nil {
			return nil, err
		}
		return c.View(), nil
	case "fraud.reported":
		// A fraud report is about a challenge (a deny with fraud, or This
		// wasn't me on an email link) or about a device (This wasn't me
		// on a new-device notice). Ids are random: one lookup tells.
		c, err := d.store.GetChallenge(ctx, ev.ObjectID)
		if err == nil {
			return c.View(), nil
		}
		if !errors.Is(err, approval.ErrNotFound) {
			return nil, err
		}
		return d.deviceData(ctx, ev)
	case "device.linked", "device.removed":
		return d.deviceData(ctx, ev)
	}
	return nil, fmt.Errorf("webhook: unknown event type %q: %w", ev.Type, approval.ErrNotFound)
}

func (d *Dispatcher) deviceData(ctx context.Context, ev store.WebhookEvent) (*DeviceData, error) {
	dev, err := d.store.GetDevice(ctx, ev.ObjectID)
	if err != nil {
		return nil, err
	}
	out := &DeviceData{UserID: dev.UserID, Device: dev.View(), By: by(ev)}
	switch ev.Type {
	case "device.linked":
		// The device itself sent the code; the change was the RP's
		// enrollment.
		if dev.EnrollmentID != "" {
			e, err := d.store.GetEnrollment(ctx, dev.EnrollmentID)
			if err != nil && !errors.Is(err, approval.ErrNotFound) {
				return nil, err
			}
			if e != nil {
				if e.APIKeyName != "" {
					out.By = e.APIKeyName
				}
				out.StepUpMethod = e.StepUpMethod
			}
		}
	case "device.removed":
		var detail struct {
			AuthorizedBy string `json:"authorized_by"`
		}
		if len(ev.Detail) > 0 && json.Unmarshal(ev.Detail, &detail) == nil && detail.AuthorizedBy != "" {
			c, err := d.store.GetChallenge(ctx, detail.AuthorizedBy)
			if err != nil && !errors.Is(err, approval.ErrNotFound) {
				return nil, err
			}
			if c != nil {
				out.StepUpMethod = c.Method
			}
		}
	}
	return out, nil
}

// by names who made a change, from the audit actor.
func by(ev store.WebhookEvent) string {
	switch ev.ActorType {
	case approval.ActorAPIKey:
		return ev.Actor
	case approval.ActorDevice:
		return "device"
	case approval.ActorLink:
		return "link"
	}
	return ev.ActorType
}
