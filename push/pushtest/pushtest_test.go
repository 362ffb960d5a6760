package pushtest

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"
)

// es256 signs a provider token the way apns2 does.
func es256(t *testing.T, keyPath, kid, team string, iat time.Time) string {
	t.Helper()
	b, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": kid})
	c, _ := json.Marshal(map[string]any{"iss": team, "iat": iat.Unix()})
	in := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	sum := sha256.Sum256([]byte(in))
	r, s, err := ecdsa.Sign(rand.Reader, k.(*ecdsa.PrivateKey), sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return in + "." + enc.EncodeToString(sig)
}

func TestAPNsChecks(t *testing.T) {
	a, err := NewAPNs()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	path, kid, err := a.NewKey(t.TempDir(), "TEAM")
	if err != nil {
		t.Fatal(err)
	}
	var h2 http.Protocols
	h2.SetHTTP2(true)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: a.ClientTLSConfig(), Protocols: &h2}}
	post := func(bearer string, hdr map[string]string, body string) (int, string, string) {
		req, _ := http.NewRequest(http.MethodPost, a.URL()+"/3/device/abc", strings.NewReader(body))
		if bearer != "" {
			req.Header.Set("authorization", "bearer "+bearer)
		}
		req.Header.Set("apns-topic", "com.example.app")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r struct{ Reason string }
		_ = json.NewDecoder(resp.Body).Decode(&r)
		return resp.StatusCode, r.Reason, resp.Proto
	}
	fresh := es256(t, path, kid, "TEAM", time.Now())
	for _, tc := range []struct {
		name   string
		bearer string
		hdr    map[string]string
		body   string
		status int
		reason string
	}{
		{"ok", fresh, nil, `{"aps":{}}`, 200, ""},
		{"no token", "", nil, `{"aps":{}}`, 403, "MissingProviderToken"},
		{"old token", es256(t, path, kid, "TEAM", time.Now().Add(-2*time.Hour)), nil, `{"aps":{}}`, 403, "ExpiredProviderToken"},
		{"wrong team", es256(t, path, kid, "OTHER", time.Now()), nil, `{"aps":{}}`, 403, "InvalidProviderToken"},
		{"garbage token", "abc.def.ghi", nil, `{"aps":{}}`, 403, "InvalidProviderToken"},
		{"push type", fresh, map[string]string{"apns-push-type": "nonsense"}, `{"aps":{}}`, 400, "InvalidPushType"},
		{"priority", fresh, map[string]string{"apns-priority": "7"}, `{"aps":{}}`, 400, "BadPriority"},
		{"apns-id", fresh, map[string]string{"apns-id": "nope"}, `{"aps":{}}`, 400, "BadMessageId"},
		{"empty", fresh, nil, ``, 400, "PayloadEmpty"},
		{"too large", fresh, nil, `{"aps":{},"x":"` + strings.Repeat("x", 4100) + `"}`, 413, "PayloadTooLarge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, reason, proto := post(tc.bearer, tc.hdr, tc.body)
			if status != tc.status || reason != tc.reason {
				t.Errorf("got %d %q, want %d %q", status, reason, tc.status, tc.reason)
			}
			if proto != "HTTP/2.0" {
				t.Errorf("proto %s, want HTTP/2.0", proto)
			}
		})
	}

	a.Hang(time.Minute)
	go func() { // answered only when the fake closes
		req, _ := http.NewRequest(http.MethodPost, a.URL()+"/3/device/abc", strings.NewReader(`{}`))
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	if !a.WaitFor(a.Count()+1, 5*time.Second) {
		t.Error("WaitFor did not see the hanging request arrive")
	}
	if a.WaitFor(a.Count()+1, 50*time.Millisecond) {
		t.Error("WaitFor reported a request that never came")
	}
}

func TestFCMEndpoints(t *testing.T) {
	f := NewFCM()
	defer f.Close()
	resp, err := http.Get(f.Endpoint() + "/projects/p/messages:send")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", resp.StatusCode)
	}
	resp, err = http.Post(f.Endpoint()+"/projects/p/messages:send", "application/json", strings.NewReader(`{"message":{"data":{"n":1}}}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), `"errorCode":"INVALID_ARGUMENT"`) {
		t.Errorf("non-string data: %d %s", resp.StatusCode, b)
	}
	resp, err = http.PostForm(f.TokenURL(), url.Values{
		"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"}, "assertion": {"a.b.c"},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 || f.TokenRequests() != 0 {
		t.Errorf("bad assertion: %d, %d tokens issued", resp.StatusCode, f.TokenRequests())
	}
	if f.WaitFor(10, 50*time.Millisecond) {
		t.Error("WaitFor(10) after 1 request")
	}
	if got := f.Messages(); len(got) != 1 || got[0].Status != 400 || got[0].ErrorCode != FCMInvalidArgument {
		t.Errorf("recorded %+v", got)
	}
}
