package config

import (
	"strings"
	"testing"
)

func TestWebhookSettings(t *testing.T) {
	const secret = "0123456789abcdef-secret"
	for _, u := range []string{"https://rp.example.com/hooks/approvald", "http://localhost:9000/h", "http://127.0.0.1:8081/", "http://[::1]:8081/h"} {
		c, err := Load(env(map[string]string{"APPROVALD_WEBHOOK_URL": u, "APPROVALD_WEBHOOK_SECRET": secret}))
		if err != nil {
			t.Fatalf("%s refused: %v", u, err)
		}
		if c.WebhookURL != u || c.WebhookSecret != secret {
			t.Fatalf("%s: got %q %q", u, c.WebhookURL, c.WebhookSecret)
		}
	}
	c, err := Load(env(nil))
	if err != nil || c.WebhookURL != "" || c.WebhookSecret != "" {
		t.Fatalf("webhooks are off by default: %+v %v", c, err)
	}

	for _, tc := range []struct {
		vars map[string]string
		name string // the setting the error must name
	}{
		{map[string]string{"APPROVALD_WEBHOOK_URL": "http://rp.example.com/h", "APPROVALD_WEBHOOK_SECRET": secret}, "APPROVALD_WEBHOOK_URL"},
		{map[string]string{"APPROVALD_WEBHOOK_URL": "http://10.0.0.1/h", "APPROVALD_WEBHOOK_SECRET": secret}, "APPROVALD_WEBHOOK_URL"},
		{map[string]string{"APPROVALD_WEBHOOK_URL": "http://localhost.evil.example/h", "APPROVALD_WEBHOOK_SECRET": secret}, "APPROVALD_WEBHOOK_URL"},
		{map[string]string{"APPROVALD_WEBHOOK_URL": "ftp://rp.example.com/h", "APPROVALD_WEBHOOK_SECRET": secret}, "APPROVALD_WEBHOOK_URL"},
		{map[string]string{"APPROVALD_WEBHOOK_URL": "rp.example.com/h", "APPROVALD_WEBHOOK_SECRET": secret}, "APPROVALD_WEBHOOK_URL"},
		{map[string]string{"APPROVALD_WEBHOOK_URL": "https://rp.example.com/h"}, "APPROVALD_WEBHOOK_SECRET"},
		{map[string]string{"APPROVALD_WEBHOOK_URL": "https://rp.example.com/h", "APPROVALD_WEBHOOK_SECRET": "short-secret"}, "APPROVALD_WEBHOOK_SECRET"},
	} {
		_, err := Load(env(tc.vars))
		if err == nil || !strings.Contains(err.Error(), tc.name+":") {
			t.Errorf("%v: want an error naming %s, got %v", tc.vars, tc.name, err)
			continue
		}
		if s := tc.vars["APPROVALD_WEBHOOK_SECRET"]; s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
}
