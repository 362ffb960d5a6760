package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
)

// /metrics serves the Prometheus text format from approvald's own
// registry: challenges by action, status and method, decision latency,
// open sockets, and requests by route pattern (never a raw path with ids).
func TestMetrics(t *testing.T) {
	env := apptest.Start(t, "sqlite")
	phone := env.LinkDevice("u-metrics")
	ch := env.Challenge("u-metrics", "submit_offer", nil)
	sock := env.MustWatch(ch.Str("watch_token"))
	apptest.Frame(t, sock, 5*time.Second)
	if _, err := phone.Decide(context.Background(), ch.Str("id"), deviceclient.Decision{Approve: true}); err != nil {
		t.Fatal(err)
	}
	apptest.Frame(t, sock, 5*time.Second)
	r := env.Do("GET", "/metrics", nil, "")
	if r.Status != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("metrics: %d %s", r.Status, r.Header.Get("Content-Type"))
	}
	body := string(r.Body)
	for _, want := range []string{
		`approvald_challenges_created_total{action="submit_offer"} 1`,
		`approvald_challenges_final_total{action="submit_offer",method="push",status="approved"} 1`,
		`approvald_decision_seconds_count{method="push"} 1`,
		`approvald_http_requests_total{route="POST /v1/challenges",status="201"} 1`,
		`approvald_http_requests_total{route="POST /v1/device/challenges/{id}/decision",status="200"} 1`,
		"approvald_watch_sockets ",
		"go_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, ch.Str("id")) || strings.Contains(body, ch.Str("watch_token")) {
		t.Error("metrics carry an id or a token")
	}
}
