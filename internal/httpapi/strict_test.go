package httpapi

import (
	"reflect"
	"strings"
	"testing"

	"github.com/clicktopurchase/approvald/internal/approval"
)

func TestCheckMembers(t *testing.T) {
	link := reflect.TypeFor[approval.LinkDeviceRequest]()
	create := reflect.TypeFor[approval.CreateChallengeRequest]()
	cases := []struct {
		body string
		typ  reflect.Type
		bad  string // "" when accepted; else a part of the error
	}{
		{`{"user_id":"u","action":"login","context":{"A":"1","a":"2"}}`, create, ""},
		{`{"User_Id":"u","action":"login"}`, create, `unknown member "User_Id"`},
		{`{"user_id":"u","action":"login","ACTION":"x"}`, create, `unknown member "ACTION"`},
		{`{"user_id":"u","user_id":"v","action":"login"}`, create, `"user_id" appears twice`},
		{`{"user_id":"u","action":"login","methods":["push"]}`, create, ""},
		{`{"code":"x","push":{"provider":"fcm","Token":"t"}}`, link, `unknown member "push.Token"`},
		{`{"code":"x","public_key":{"kty":"EC","crv":"P-256","x":"a","y":"b","extra":1}}`, link, `unknown member "public_key.extra"`},
		{`{"code":"x","push":{"provider":"none"}}`, link, ""},
	}
	for _, c := range cases {
		err := checkMembers([]byte(c.body), c.typ)
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%s: refused: %v", c.body, err)
		case c.bad != "" && (err == nil || !strings.Contains(err.Error(), c.bad)):
			t.Errorf("%s: got %v, want an error with %s", c.body, err, c.bad)
		}
	}
}
