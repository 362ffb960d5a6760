package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/deviceclient"
	"github.com/clicktopurchase/approvald/internal/store/storetest"
	"github.com/gorilla/websocket"
)

func forEachDialect(t *testing.T, f func(t *testing.T, dialect string)) {
	for _, d := range storetest.Dialects() {
		t.Run(d, func(t *testing.T) { f(t, d) })
	}
}

// The whole loop, as the three clients see it: the RP links a device, the
// browser sees "linked", the RP creates a challenge, the browser watches,
// the phone approves, the browser's frame carries approved and a result
// token that verifies against the JWKS.
func TestLinkChallengeWatchApprove(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		ctx := context.Background()

		en := env.Enroll("u-42", nil)
		if en.Str("status") != "pending" || len(en.Str("code")) != 9 || en.Str("code")[4] != '-' {
			t.Fatalf("enrollment: %s", en.Body)
		}
		enSock := env.MustWatch(en.Str("watch_token"))
		if f, _ := apptest.Frame(t, enSock, 5*time.Second); f["type"] != "enrollment" || f["status"] != "pending" {
			t.Fatalf("first enrollment frame: %v", f)
		}
		phone := env.NewDevice()
		if err := phone.Enroll(ctx, en.Str("code"), "Pixel 8", "android", deviceclient.Push{Provider: "none"}); err != nil {
			t.Fatal(err)
		}
		if phone.UserID != "u-42" || phone.Audience != env.URL {
			t.Fatalf("enroll answer: user %q audience %q", phone.UserID, phone.Audience)
		}
		f, _ := apptest.Frame(t, enSock, 5*time.Second)
		dev, _ := f["device"].(map[string]any)
		if f["status"] != "linked" || dev["name"] != "Pixel 8" || dev["id"] != phone.DeviceID {
			t.Fatalf("linked frame: %v", f)
		}
		if _, code := apptest.Frame(t, enSock, 5*time.Second); code != websocket.CloseNormalClosure {
			t.Fatalf("after the final enrollment frame: close %d, want 1000", code)
		}

		ch := env.Challenge("u-42", "submit_offer", map[string]any{
			"context": json.RawMessage(`{"Property": "12 High St, Leeds", "Offer": "£350,000"}`), "ip": "203.0.113.9"})
		id := ch.Str("id")
		if d, _ := ch.JSON()["delivery"].(map[string]any); d["push"] != "sent" {
			t.Fatalf("delivery: %s", ch.Body)
		}
		sock := env.MustWatch(ch.Str("watch_token"))
		if f, _ := apptest.Frame(t, sock, 5*time.Second); f["status"] != "pending" || f["id"] != id {
			t.Fatalf("first frame: %v", f)
		}
		pending, err := phone.Pending(ctx, 0)
		if err != nil || len(pending) != 1 || pending[0].ID != id || pending[0].Requester.IP != "203.0.113.9" {
			t.Fatalf("phone's list: %+v %v", pending, err)
		}
		if string(pending[0].Context) != `{"Property":"12 High St, Leeds","Offer":"£350,000"}` {
			t.Fatalf("context order or content changed: %s", pending[0].Context)
		}
		st, err := phone.Decide(ctx, id, deviceclient.Decision{Approve: true})
		if err != nil || st != "approved" {
			t.Fatalf("decide: %q %v", st, err)
		}
		f, _ = apptest.Frame(t, sock, 5*time.Second)
		if f["status"] != "approved" || f["method"] != "push" || f["result_token"] == nil {
			t.Fatalf("final frame: %v", f)
		}
		claims := env.VerifyResultToken(f["result_token"].(string))
		if claims["cid"] != id || claims["sub"] != "u-42" || claims["st"] != "approved" || claims["act"] != "submit_offer" || claims["iss"] != env.URL {
			t.Fatalf("result claims: %v", claims)
		}
		if _, code := apptest.Frame(t, sock, 5*time.Second); code != websocket.CloseNormalClosure {
			t.Fatalf("close %d, want 1000", code)
		}
		got := env.RP("GET", "/v1/challenges/"+id, nil).JSON()
		if got["status"] != "approved" || got["method"] != "push" || got["device_id"] != phone.DeviceID || got["result_token"] != f["result_token"] {
			t.Fatalf("GET after decision: %v", got)
		}
	})
}

// A browser connecting after the decision gets the final state at once;
// one connected just before it gets it live.
func TestWatchersBeforeAndAfterDecision(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		phone := env.LinkDevice("u-1")
		ch := env.Challenge("u-1", "login", nil)
		early := env.MustWatch(ch.Str("watch_token"))
		if _, err := phone.Decide(context.Background(), ch.Str("id"), deviceclient.Decision{Approve: false}); err != nil {
			t.Fatal(err)
		}
		// The early watcher may see pending first, then denied.
		var last map[string]any
		for {
			f, code := apptest.Frame(t, early, 5*time.Second)
			if code != 0 {
				if code != websocket.CloseNormalClosure || last["status"] != "denied" {
					t.Fatalf("early watcher: close %d after %v", code, last)
				}
				break
			}
			last = f
		}
		late := env.MustWatch(ch.Str("watch_token"))
		f, _ := apptest.Frame(t, late, 5*time.Second)
		if f["status"] != "denied" {
			t.Fatalf("late watcher: %v", f)
		}
		if _, code := apptest.Frame(t, late, 5*time.Second); code != websocket.CloseNormalClosure {
			t.Fatalf("late watcher close %d", code)
		}
	})
}

// Many goroutines approve, deny and cancel one challenge at once: exactly
// one wins, the others get 409 with the winner's status, and the browser
// sees exactly one final frame.
func TestDecisionRace(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dialect string) {
		env := apptest.Start(t, dialect)
		phone := env.LinkDevice("u-race")
		for round := range 3 {
			ch := env.Challenge("u-race", "submit_offer", nil)
			id := ch.Str("id")
			sock := env.MustWatch(ch.Str("watch_token"))
			apptest.Frame(t, sock, 5*time.Second) // pending

			const n = 30
			type outcome struct {
				status   string // winner's status, or "" on a loss
				conflict string // current_status on a 409
			}
			results := make([]outcome, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					switch i % 3 {
					case 0, 1:
						st, err := phone.Decide(context.Background(), id, deviceclient.Decision{Approve: i%3 == 0})
						var p *deviceclient.Problem
						switch {
						case err == nil:
							results[i] = outcome{status: st}
						case errors.As(err, &p) && p.Status == http.StatusConflict && p.Code == "not_pending":
							results[i] = outcome{conflict: p.CurrentStatus}
						default:
							results[i] = outcome{conflict: "error: " + err.Error()}
						}
					case 2:
						r := env.RP("POST", "/v1/challenges/"+id+"/cancel", nil)
						switch r.Status {
						case http.StatusOK:
							results[i] = outcome{status: r.Str("status")}
						case http.StatusConflict:
							results[i] = outcome{conflict: r.Str("current_status")}
						default:
							results[i] = outcome{conflict: fmt.Sprintf("status %d %s", r.Status, r.Body)}
						}
					}
				}()
			}
			close(start)
			wg.Wait()
			winner := ""
			for _, o := range results {
				if o.status != "" {
					if winner != "" {
						t.Fatalf("round %d: two winners: %v", round, results)
					}
					winner = o.status
				}
			}
			if winner == "" {
				t.Fatalf("round %d: nobody won: %v", round, results)
			}
			for _, o := range results {
				if o.status == "" && o.conflict != winner {
					t.Fatalf("round %d: a loser saw %q, the winner was %q", round, o.conflict, winner)
				}
			}
			f, _ := apptest.Frame(t, sock, 5*time.Second)
			if f["status"] != winner {
				t.Fatalf("round %d: browser saw %v, winner %q", round, f, winner)
			}
			if _, code := apptest.Frame(t, sock, 5*time.Second); code != websocket.CloseNormalClosure {
				t.Fatalf("round %d: a second frame or close %d after the final frame", round, code)
			}
			if got := env.RP("GET", "/v1/challenges/"+id, nil).Str("status"); got != winner {
				t.Fatalf("round %d: stored %q, winner %q", round, got, winner)
			}
		}
	})
}
