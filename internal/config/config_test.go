package config

import (
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr != ":8080" || c.PublicURL != "http://localhost:8080" || c.DatabaseURL != "sqlite:approvald.db" {
		t.Fatalf("defaults: %+v", c)
	}
	if len(c.AllowedOrigins) != 1 || c.AllowedOrigins[0] != "http://localhost:8080" {
		t.Fatalf("allowed origins default to the public URL's origin, got %v", c.AllowedOrigins)
	}
	if c.NumberMatchingAll || len(c.NumberMatching) != 0 || c.NumberMatchingDigits != 3 || c.MaxDevicesPerUser != 1 {
		t.Fatalf("number matching defaults: %+v", c)
	}
}

func TestValues(t *testing.T) {
	c, err := Load(env(map[string]string{
		"APPROVALD_PUBLIC_URL":             "https://approve.example.com/",
		"APPROVALD_ALLOWED_ORIGINS":        "https://www.example.com, http://localhost:3000",
		"APPROVALD_TRUSTED_PROXIES":        "10.0.0.0/8,192.0.2.1",
		"APPROVALD_NUMBER_MATCHING":        "login,submit_offer",
		"APPROVALD_NUMBER_MATCHING_DIGITS": "6",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.PublicURL != "https://approve.example.com" {
		t.Errorf("trailing slash kept: %q", c.PublicURL)
	}
	if strings.Join(c.AllowedOrigins, " ") != "https://www.example.com http://localhost:3000" {
		t.Errorf("origins %v", c.AllowedOrigins)
	}
	if len(c.TrustedProxies) != 2 || c.TrustedProxies[1].String() != "192.0.2.1/32" {
		t.Errorf("proxies %v", c.TrustedProxies)
	}
	if !c.NumberMatching["login"] || !c.NumberMatching["submit_offer"] || c.NumberMatching["verify_property"] || c.NumberMatchingDigits != 6 {
		t.Errorf("number matching %+v", c)
	}
}

func TestEveryBadValueIsNamed(t *testing.T) {
	bad := map[string]string{
		"APPROVALD_ADDR":                   "nonsense",
		"APPROVALD_PUBLIC_URL":             "ftp://x",
		"APPROVALD_DATABASE_URL":           "mysql://x",
		"APPROVALD_ALLOWED_ORIGINS":        "https://ok.example, not an origin",
		"APPROVALD_TRUSTED_PROXIES":        "10.0.0.0/33",
		"APPROVALD_NUMBER_MATCHING":        "Login!",
		"APPROVALD_NUMBER_MATCHING_DIGITS": "7",
		"APPROVALD_MAX_DEVICES_PER_USER":   "0",
		"APPROVALD_LOG_FORMAT":             "xml",
		"APPROVALD_LOG_LEVEL":              "loud",
		"APPROVALD_FCM_ENDPOINT":           "not a url",
		"APPROVALD_PUSH_CONTEXT":           "everything",
		"APPROVALD_PUSH_TITLES":            "login",
	}
	_, err := Load(env(bad))
	if err == nil {
		t.Fatal("bad configuration accepted")
	}
	for name := range bad {
		if !strings.Contains(err.Error(), name+":") {
			t.Errorf("error does not name %s:\n%v", name, err)
		}
	}
}

func TestPushSettings(t *testing.T) {
	c, err := Load(env(map[string]string{
		"APPROVALD_FCM_ENDPOINT":  "http://127.0.0.1:9099/v1",
		"APPROVALD_APNS_KEY_FILE": "/k.p8",
		"APPROVALD_PUSH_CONTEXT":  "full",
		"APPROVALD_PUSH_TITLES":   "login=Sign in?; submit_offer=Send your offer?",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !c.FCMEnabled() || !c.APNsEnabled() || !c.PushFullContext || c.APNsEndpoint != "production" {
		t.Fatalf("push settings: %+v", c)
	}
	if c.PushTitles["login"] != "Sign in?" || c.PushTitles["submit_offer"] != "Send your offer?" {
		t.Fatalf("titles: %v", c.PushTitles)
	}
	if _, err := Load(env(map[string]string{"APPROVALD_APNS_KEY_FILE": "/k.p8", "APPROVALD_APNS_CERT_FILE": "/c.pem"})); err == nil || !strings.Contains(err.Error(), "APPROVALD_APNS_CERT_FILE") {
		t.Fatalf("both APNs credentials accepted: %v", err)
	}
}
