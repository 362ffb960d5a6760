package app_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
)

// BenchmarkCreateChallenge measures challenges created per second over
// real HTTP, from several concurrent RP connections.
//
//	go test -run '^$' -bench CreateChallenge -benchtime 3000x ./internal/app/
func BenchmarkCreateChallenge(b *testing.B) {
	for _, dialect := range storetest.Dialects() {
		b.Run(dialect, func(b *testing.B) {
			env := apptest.Start(b, dialect)
			var n atomic.Int64
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					r := env.RP("POST", "/v1/challenges", map[string]any{
						"user_id": fmt.Sprintf("bench-%d", i), "action": "submit_offer",
						"context": map[string]string{"Property": "12 High St, Leeds"}, "ip": "203.0.113.9"})
					if r.Status != http.StatusCreated {
						b.Errorf("create: %d %s", r.Status, r.Body)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "challenges/s")
		})
	}
}

// BenchmarkDecisionToBrowser measures the time from a device sending its
// decision to the waiting browser's socket receiving the final frame,
// while 1,000 other watch sockets are open.
//
//	go test -run '^$' -bench DecisionToBrowser -benchtime 1000x ./internal/app/
func BenchmarkDecisionToBrowser(b *testing.B) {
	for _, dialect := range storetest.Dialects() {
		b.Run(dialect, func(b *testing.B) {
			env := apptest.Start(b, dialect)
			// 1,000 idle sockets watching pending email-only challenges.
			for i := range 1000 {
				r := env.RP("POST", "/v1/challenges", map[string]any{"user_id": fmt.Sprintf("idle-%d", i/10), "action": "login",
					"methods": []string{"email"}, "ttl_seconds": 600, "ip": fmt.Sprintf("198.51.100.%d", i%10)})
				if r.Status != http.StatusCreated {
					b.Fatalf("idle challenge: %d %s", r.Status, r.Body)
				}
				c := env.MustWatch(r.Str("watch_token"))
				apptest.Frame(b, c, 5*time.Second)
			}
			const users = 100
			phones := make([]*deviceclient.Client, users)
			for i := range phones {
				phones[i] = env.LinkDevice(fmt.Sprintf("dec-%d", i))
			}
			lat := make([]time.Duration, 0, b.N)
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				u := i % users
				r := env.RP("POST", "/v1/challenges", map[string]any{"user_id": fmt.Sprintf("dec-%d", u), "action": "login",
					"ip": fmt.Sprintf("192.0.2.%d", (i/users)%250)})
				if r.Status != http.StatusCreated {
					b.Fatalf("challenge: %d %s", r.Status, r.Body)
				}
				sock := env.MustWatch(r.Str("watch_token"))
				apptest.Frame(b, sock, 5*time.Second)
				b.StartTimer()
				t0 := time.Now()
				go func() {
					if _, err := phones[u].Decide(ctx, r.Str("id"), deviceclient.Decision{Approve: true}); err != nil {
						b.Error(err)
					}
				}()
				f, _ := apptest.Frame(b, sock, 5*time.Second)
				lat = append(lat, time.Since(t0))
				if f["status"] != "approved" {
					b.Fatalf("frame %v", f)
				}
				sock.Close()
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(env.App.Hub.Sockets()), "open-sockets")
		})
	}
}
