package fcm_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/push"
	"github.com/clicktopurchase/approvald/push/fcm"
	"github.com/clicktopurchase/approvald/push/pushtest"
)

// BenchmarkFCMSend measures challenge pushes per second through the Firebase
// Admin SDK to the fake, many at once over reused connections: plain HTTP
// (HTTP/1.1 keep-alive, what an http:// APPROVALD_FCM_ENDPOINT gives) and
// HTTPS (HTTP/2, as to Google).
func BenchmarkFCMSend(b *testing.B) {
	b.Run("http1", func(b *testing.B) { benchFCM(b, pushtest.NewFCM()) })
	b.Run("https-h2", func(b *testing.B) {
		f, err := pushtest.NewFCMTLS()
		if err != nil {
			b.Fatal(err)
		}
		benchFCM(b, f)
	})
}

func benchFCM(b *testing.B, f *pushtest.FCM) {
	defer f.Close()
	f.SetRecording(false)
	s, err := fcm.New(context.Background(), fcm.Config{ProjectID: project, Endpoint: f.Endpoint()})
	if err != nil {
		b.Fatal(err)
	}
	m := push.Message{
		Kind: push.KindChallenge, ChallengeID: "ch_bench", Action: "login",
		Title: "Approve sign-in?", Body: "Someone is signing in.", ExpiresAt: time.Now().Add(time.Hour),
	}
	// One send first, so the connection exists before the burst.
	if r := s.Send(context.Background(), "warm-up", m); r.Outcome != push.Delivered {
		b.Fatalf("warm-up: %+v", r)
	}
	var failed atomic.Int64
	var seq atomic.Int64
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		tok := "bench-token-" + strconv.FormatInt(seq.Add(1), 10)
		for pb.Next() {
			if r := s.Send(context.Background(), tok, m); r.Outcome != push.Delivered {
				failed.Add(1)
			}
		}
	})
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d sends failed: %v", n, s.Counts())
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pushes/s")
	b.ReportMetric(float64(f.Connections()), "conns")
}
