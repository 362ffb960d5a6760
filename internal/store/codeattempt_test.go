package store_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/store/storetest"
)

// ClaimCodeAttempt checks and counts in one step: of many concurrent
// attempts from one IP key exactly the limit's number are claimed, the total
// limit holds across keys, and a released claim no longer counts.
func TestClaimCodeAttempt(t *testing.T) {
	for _, dialect := range storetest.Dialects() {
		t.Run(dialect, func(t *testing.T) {
			t.Parallel()
			st := storetest.Open(t, dialect)
			ctx := t.Context()
			since := t0.Add(-10 * time.Minute)
			if err := st.RecordCodeFailure(ctx, "a", t0.Add(-11*time.Minute)); err != nil { // outside the window
				t.Fatal(err)
			}

			var claimed atomic.Int64
			var wg sync.WaitGroup
			for range 30 {
				wg.Go(func() {
					_, ok, err := st.ClaimCodeAttempt(ctx, "a", t0, since, 20, 1000)
					if err != nil {
						t.Error(err)
					}
					if ok {
						claimed.Add(1)
					}
				})
			}
			wg.Wait()
			if n := claimed.Load(); n != 20 {
				t.Fatalf("30 concurrent claims with a limit of 20: %d claimed", n)
			}
			if perIP, total, err := st.CodeFailures(ctx, "a", since); err != nil || perIP != 20 || total != 20 {
				t.Fatalf("CodeFailures after the claims = %d, %d, %v; want 20, 20", perIP, total, err)
			}

			// Released claims stop counting; an unknown id is no error.
			id, ok, err := st.ClaimCodeAttempt(ctx, "b", t0, since, 20, 1000)
			if err != nil || !ok {
				t.Fatalf("claim for b: %v %v", ok, err)
			}
			if err := st.ReleaseCodeAttempt(ctx, id); err != nil {
				t.Fatal(err)
			}
			if err := st.ReleaseCodeAttempt(ctx, id); err != nil {
				t.Fatal(err)
			}
			if perIP, total, err := st.CodeFailures(ctx, "b", since); err != nil || perIP != 0 || total != 20 {
				t.Fatalf("CodeFailures(b) after release = %d, %d, %v; want 0, 20", perIP, total, err)
			}

			// The total: more than totalMax from everyone refuses every key.
			if _, ok, err := st.ClaimCodeAttempt(ctx, "c", t0, since, 20, 20); err != nil || !ok {
				t.Fatalf("claim with 20 failures and a total of 20: %v %v, want claimed", ok, err)
			}
			if _, ok, err := st.ClaimCodeAttempt(ctx, "d", t0, since, 20, 20); err != nil || ok {
				t.Fatalf("claim with 21 failures and a total of 20: %v %v, want refused", ok, err)
			}
			// Failures before since do not count.
			if _, ok, err := st.ClaimCodeAttempt(ctx, "a", t0.Add(11*time.Minute), t0.Add(time.Minute), 20, 1000); err != nil || !ok {
				t.Fatalf("claim after the window: %v %v", ok, err)
			}
		})
	}
}
