package push

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRedact(t *testing.T) {
	long := "dG9rZW4tZm9yLWEtcGhvbmUtdGhhdC1pcy1sb25nLWVub3VnaA"
	for _, tc := range []struct{ in, want string }{
		{"", "(empty)"},
		{"abc", "a…(3)"},
		{"abcdefghijk", "abcde…(11)"},
		{long, "dG9rZW…(" + strconv.Itoa(len(long)) + ")"},
	} {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if len(tc.in) > 1 && strings.Contains(Redact(tc.in), tc.in) {
			t.Errorf("Redact(%q) contains the whole token", tc.in)
		}
	}
}

func TestExpiryAndTTL(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	ch := Message{Kind: KindChallenge, ChallengeID: "c", Action: "login", ExpiresAt: now.Add(179*time.Second + 900*time.Millisecond)}
	if got := ch.TTL(now); got != 179*time.Second {
		t.Errorf("challenge TTL = %v, want 179s (rounded down)", got)
	}
	past := ch
	past.ExpiresAt = now.Add(-time.Minute)
	if got := past.TTL(now); got != 0 {
		t.Errorf("expired challenge TTL = %v, want 0", got)
	}
	res := Message{Kind: KindResolved, ChallengeID: "c"}
	if got := res.TTL(now); got != DefaultSilentTTL {
		t.Errorf("resolved TTL without ExpiresAt = %v, want %v", got, DefaultSilentTTL)
	}
	res.ExpiresAt = now.Add(-time.Second) // a challenge that just expired
	if got := res.Expiry(now); !got.Equal(now.Add(DefaultSilentTTL)) {
		t.Errorf("resolved Expiry with past ExpiresAt = %v", got)
	}
	res.ExpiresAt = now.Add(10 * time.Minute)
	if got := res.TTL(now); got != 10*time.Minute {
		t.Errorf("resolved TTL = %v, want 10m", got)
	}
}

func TestValidate(t *testing.T) {
	exp := time.Now().Add(time.Minute)
	for _, tc := range []struct {
		m  Message
		ok bool
	}{
		{Message{Kind: KindChallenge, ChallengeID: "c", Action: "login", ExpiresAt: exp}, true},
		{Message{Kind: KindChallenge, ChallengeID: "c", Action: "login"}, false},
		{Message{Kind: KindChallenge, Action: "login", ExpiresAt: exp}, false},
		{Message{Kind: KindResolved, ChallengeID: "c"}, true},
		{Message{Kind: KindResolved}, false},
		{Message{Kind: KindRetired}, true},
		{Message{Kind: "other"}, false},
	} {
		if err := tc.m.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.m, err, tc.ok)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"30", 30 * time.Second},
		{" 5 ", 5 * time.Second},
		{"-3", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(time.RFC1123), 90 * time.Second},
		{now.Add(-time.Hour).Format(time.RFC1123), 0},
	} {
		if got := ParseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestOutcomeAndTally(t *testing.T) {
	var zero Outcome
	if zero.String() != "unknown" {
		t.Errorf("zero Outcome = %q, want unknown", zero)
	}
	var tally Tally
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				tally.Add(Result{Outcome: Delivered})
				tally.Add(Result{Outcome: TokenInvalid, Reason: "UNREGISTERED"})
			}
		}()
	}
	wg.Wait()
	got := tally.Snapshot()
	if got["delivered"] != 800 || got["token_invalid/UNREGISTERED"] != 800 || len(got) != 2 {
		t.Errorf("Snapshot = %v", got)
	}
}
