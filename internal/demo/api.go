package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// apiClient calls approvald's public API as a relying party, with the
// demo's API key, like any RP backend would.
type apiClient struct {
	base, key string
	hc        *http.Client
}

// apiError is a non-2xx answer: the problem's code and detail.
type apiError struct {
	Status        int
	Code          string `json:"code"`
	Detail        string `json:"detail"`
	CurrentStatus string `json:"current_status"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("approvald answered %d %s: %s", e.Status, e.Code, e.Detail)
}

func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("calling approvald: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("reading approvald's answer: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &apiError{}
		_ = json.Unmarshal(data, e)
		e.Status = resp.StatusCode
		return e
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding approvald's answer: %w", err)
		}
	}
	return nil
}

type enrollmentReq struct {
	UserID       string `json:"user_id"`
	UserEmail    string `json:"user_email,omitempty"`
	AuthorizedBy string `json:"authorized_by,omitempty"`
}

type enrollment struct {
	ID           string `json:"id"`
	UserID       string `json:"user_id"`
	Status       string `json:"status"`
	Code         string `json:"code"`
	EnrollURI    string `json:"enroll_uri"`
	ExpiresAt    string `json:"expires_at"`
	WatchToken   string `json:"watch_token"`
	StepUpMethod string `json:"step_up_method"`
}

func (c *apiClient) createEnrollment(ctx context.Context, req enrollmentReq) (*enrollment, error) {
	var e enrollment
	return &e, c.do(ctx, http.MethodPost, "/v1/enrollments", req, &e)
}

type challengeReq struct {
	UserID         string          `json:"user_id"`
	Action         string          `json:"action"`
	Context        json.RawMessage `json:"context,omitempty"` // members in the order shown
	UserEmail      string          `json:"user_email,omitempty"`
	IP             string          `json:"ip,omitempty"`
	UserAgent      string          `json:"user_agent,omitempty"`
	Methods        []string        `json:"methods,omitempty"`
	NumberMatching bool            `json:"number_matching,omitempty"`
}

type challenge struct {
	ID         string   `json:"id"`
	UserID     string   `json:"user_id"`
	Action     string   `json:"action"`
	Methods    []string `json:"methods"`
	Status     string   `json:"status"`
	ExpiresAt  string   `json:"expires_at"`
	Number     string   `json:"number"`
	WatchToken string   `json:"watch_token"`
	Method     string   `json:"method"`
	Delivery   struct {
		Push  string `json:"push"`
		Email string `json:"email"`
	} `json:"delivery"`
}

func (c *apiClient) createChallenge(ctx context.Context, req challengeReq) (*challenge, error) {
	var ch challenge
	return &ch, c.do(ctx, http.MethodPost, "/v1/challenges", req, &ch)
}

func (c *apiClient) getChallenge(ctx context.Context, id string) (*challenge, error) {
	var ch challenge
	return &ch, c.do(ctx, http.MethodGet, "/v1/challenges/"+url.PathEscape(id), nil, &ch)
}

type device struct {
	ID           string  `json:"id"`
	Name         string  `json:"name"`
	Platform     string  `json:"platform"`
	PushProvider string  `json:"push_provider"`
	CreatedAt    string  `json:"created_at"`
	LastSeenAt   *string `json:"last_seen_at"`
}

func (c *apiClient) devices(ctx context.Context, userID string) ([]device, error) {
	var out struct {
		Devices []device `json:"devices"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/users/"+url.PathEscape(userID)+"/devices", nil, &out)
	return out.Devices, err
}

func (c *apiClient) removeDevice(ctx context.Context, userID, deviceID, authorizedBy string) error {
	return c.do(ctx, http.MethodDelete, "/v1/users/"+url.PathEscape(userID)+"/devices/"+url.PathEscape(deviceID)+
		"?authorized_by="+url.QueryEscape(authorizedBy), nil, nil)
}
