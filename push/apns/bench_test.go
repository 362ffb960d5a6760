package apns_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/clicktopurchase/approvald/push"
)

// BenchmarkAPNsSend measures challenge pushes per second through apns2 to the
// fake (HTTP/2 over TLS, token auth), many at once over one reused connection.
func BenchmarkAPNsSend(b *testing.B) {
	a := newFake(b)
	a.SetRecording(false)
	s := newTokenSender(b, a)
	m := challenge()
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
	b.ReportMetric(float64(a.Connections()), "conns")
}
