package redisbroker

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/realtime"
)

// BenchmarkRedisPublishToDeliver measures the time from Publish on broker A
// to deliver on broker B's Run (two instances on one Redis), one frame in
// flight at a time, with a frame of a typical size. It reports p50 and p99.
func BenchmarkRedisPublishToDeliver(b *testing.B) {
	url := testRedisURL(b)
	prefix := uniquePrefix()
	pub := newBroker(b, url, WithPrefix(prefix))
	sub := newBroker(b, url, WithPrefix(prefix))

	got := make(chan int64, 1)
	probe := newCollector()
	startRun(b, sub, func(f realtime.Frame) {
		if f.Object == "c:bench" {
			got <- f.Version
			return
		}
		probe.deliver(f)
	}, nil)
	waitProbe(b, pub, probe)

	data := []byte(`{"type":"challenge","id":"01J9Z3J8W6X0Q5M2R7T4Y1K8N3","status":"approved","method":"push","decided_at":"2025-01-01T00:00:00Z","result_token":"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1LTQyIn0.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"}`)
	lat := make([]time.Duration, 0, b.N)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		v := int64(i + 1)
		start := time.Now()
		if err := pub.Publish(ctx, realtime.Frame{Object: "c:bench", Version: v, Final: true, Data: data}); err != nil {
			b.Fatal(err)
		}
		for {
			select {
			case gv := <-got:
				if gv != v {
					continue
				}
			case <-time.After(5 * time.Second):
				b.Fatalf("frame %d not delivered", v)
			}
			break
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	us := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(us(0.50), "p50-µs")
	b.ReportMetric(us(0.99), "p99-µs")
}
