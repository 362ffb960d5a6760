package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/jws"
)

const (
	testAud = "https://approve.example.com"
	devID   = "dev_0123456789abcdefghij"
)

var (
	testNow    = time.Unix(1_700_000_000, 0)
	errUnknown = errors.New("no such device")
)

func genKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// signRaw signs literal header and payload JSON with a correct ES256 R||S
// signature, whatever the header says.
func signRaw(t testing.TB, key *ecdsa.PrivateKey, header, payload string) string {
	t.Helper()
	in := b64([]byte(header)) + "." + b64([]byte(payload))
	d := sha256.Sum256([]byte(in))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return in + "." + b64(sig)
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type fixture struct {
	key, other *ecdsa.PrivateKey
	calls      atomic.Int32
}

func newFixture(t *testing.T) *fixture {
	return &fixture{key: genKey(t), other: genKey(t)}
}

func (f *fixture) lookup(_ context.Context, id string) (*ecdsa.PublicKey, error) {
	f.calls.Add(1)
	if id == devID {
		return &f.key.PublicKey, nil
	}
	return nil, errUnknown
}

// assertionClaims returns valid assertion claims at testNow.
func assertionClaims() map[string]any {
	return map[string]any{
		"iss": devID,
		"aud": testAud,
		"iat": testNow.Unix() - 10,
		"exp": testNow.Unix() + 110,
		"jti": "jti-1",
	}
}

func validDecision() map[string]any {
	c := assertionClaims()
	c["cid"] = "chal_1"
	c["dec"] = "approve"
	return c
}

func with(c map[string]any, kv ...any) map[string]any {
	c = maps.Clone(c)
	for i := 0; i < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == nil {
			delete(c, k)
		} else {
			c[k] = kv[i+1]
		}
	}
	return c
}

var devHeader = `{"alg":"ES256","kid":"` + devID + `","typ":"JWT"}`

type deviceCase struct {
	name   string
	header string         // default devHeader
	claims map[string]any // signed with key (or other)
	token  string         // if set, used as is
	other  bool           // sign with the wrong key
	ok     bool
}

func (f *fixture) token(t *testing.T, tc deviceCase) string {
	if tc.token != "" {
		return tc.token
	}
	h := tc.header
	if h == "" {
		h = devHeader
	}
	k := f.key
	if tc.other {
		k = f.other
	}
	return signRaw(t, k, h, mustJSON(t, tc.claims))
}

func TestVerifyAssertion(t *testing.T) {
	f := newFixture(t)
	now := testNow.Unix()
	a := assertionClaims()
	good := signRaw(t, f.key, devHeader, mustJSON(t, a))
	gp := strings.Split(good, ".")

	// DER signature over the right input.
	d := sha256.Sum256([]byte(gp[0] + "." + gp[1]))
	der, err := ecdsa.SignASN1(rand.Reader, f.key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	// HS256 with the device's public key bytes as the secret.
	pb, err := f.key.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	hsIn := b64([]byte(`{"alg":"HS256","kid":"`+devID+`"}`)) + "." + gp[1]
	mac := hmac.New(sha256.New, pb)
	mac.Write([]byte(hsIn))

	tests := []deviceCase{
		{name: "valid", claims: a, ok: true},
		{name: "valid, header without typ", header: `{"alg":"ES256","kid":"` + devID + `"}`, claims: a, ok: true},
		{name: "valid, extra claims and header members ignored", header: `{"alg":"ES256","kid":"` + devID + `","x5u":"https://evil"}`, claims: with(a, "foo", "bar", "num", "1"), ok: true},
		{name: "aud array containing audience", claims: with(a, "aud", []string{"other", testAud}), ok: true},
		{name: "aud array without audience", claims: with(a, "aud", []string{"other"})},
		{name: "aud array with non-string", claims: with(a, "aud", []any{testAud, 1})},
		{name: "wrong audience", claims: with(a, "aud", "https://evil.example.com")},
		{name: "audience with trailing slash", claims: with(a, "aud", testAud+"/")},
		{name: "aud missing", claims: with(a, "aud", nil)},
		{name: "aud number", claims: with(a, "aud", 1)},
		{name: "expired beyond skew", claims: with(a, "iat", now-181, "exp", now-61)},
		{name: "expired within skew", claims: with(a, "iat", now-180, "exp", now-60), ok: true},
		{name: "not yet valid beyond skew", claims: with(a, "iat", now+61, "exp", now+120)},
		{name: "not yet valid within skew", claims: with(a, "iat", now+60, "exp", now+120), ok: true},
		{name: "lifetime 301", claims: with(a, "iat", now-1, "exp", now+300)},
		{name: "lifetime 300", claims: with(a, "iat", now, "exp", now+300), ok: true},
		{name: "lifetime 0 (exp - iat is at most 300: zero is allowed)", claims: with(a, "iat", now, "exp", now), ok: true},
		{name: "lifetime negative", claims: with(a, "iat", now+10, "exp", now)},
		{name: "float iat", claims: with(a, "iat", json.Number("1699999990.0"))},
		{name: "exponent iat", claims: with(a, "iat", json.Number("1.69999999e9"))},
		{name: "float exp", claims: with(a, "exp", float64(now)+110.5)},
		{name: "string iat", claims: with(a, "iat", "1699999990")},
		{name: "negative iat", claims: with(a, "iat", -1)},
		{name: "huge exp", claims: with(a, "exp", json.Number("99999999999999999999"))},
		{name: "missing iat", claims: with(a, "iat", nil)},
		{name: "missing exp", claims: with(a, "exp", nil)},
		{name: "missing jti", claims: with(a, "jti", nil)},
		{name: "empty jti", claims: with(a, "jti", "")},
		{name: "jti number", claims: with(a, "jti", 5)},
		{name: "jti 128 chars", claims: with(a, "jti", strings.Repeat("é", 128)), ok: true},
		{name: "jti 129 chars", claims: with(a, "jti", strings.Repeat("j", 129))},
		{name: "iss differs from kid", claims: with(a, "iss", "dev_other")},
		{name: "iss missing", claims: with(a, "iss", nil)},
		{name: "claim names are case-sensitive", claims: with(a, "iss", nil, "ISS", devID)},
		{name: "kid missing", header: `{"alg":"ES256"}`, claims: a},
		{name: "kid not a string", header: `{"alg":"ES256","kid":["` + devID + `"]}`, claims: a},
		{name: "unknown kid", header: `{"alg":"ES256","kid":"dev_nope"}`, claims: with(a, "iss", "dev_nope")},
		{name: "assertion carrying cid", claims: with(a, "cid", "chal_1")},
		{name: "assertion carrying dec", claims: with(a, "dec", "approve")},
		{name: "assertion carrying null cid", claims: with(a, "cid", json.RawMessage("null"))},
		{name: "full decision as assertion", claims: validDecision()},
		{name: "wrong key", claims: a, other: true},
		{name: "tampered payload", token: gp[0] + "." + b64([]byte(mustJSON(t, with(a, "jti", "jti-2")))) + "." + gp[2]},
		{name: "DER signature", token: gp[0] + "." + gp[1] + "." + b64(der)},
		{name: "alg none", token: b64([]byte(`{"alg":"none","kid":"`+devID+`"}`)) + "." + gp[1] + "."},
		{name: "HS256 keyed with public key", token: hsIn + "." + b64(mac.Sum(nil))},
		{name: "ES384 header", header: `{"alg":"ES384","kid":"` + devID + `"}`, claims: a},
		{name: "missing alg", header: `{"kid":"` + devID + `"}`, claims: a},
		{name: "crit", header: `{"alg":"ES256","kid":"` + devID + `","crit":["exp"],"exp":1}`, claims: a},
		{name: "duplicate iss", token: signRaw(t, f.key, devHeader, `{"iss":"x","iss":"`+devID+`","aud":"`+testAud+`","iat":1699999990,"exp":1700000110,"jti":"j"}`)},
		{name: "not a JWS", token: "garbage"},
		{name: "empty", token: "."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := VerifyAssertion(context.Background(), f.token(t, tc), f.lookup, testAud, testNow)
			if !tc.ok {
				if err == nil {
					t.Fatalf("accepted: %+v", c)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if c.Iss != devID || c.Aud != testAud || c.Jti != tc.claims["jti"] || c.HasCid || c.HasDec {
				t.Fatalf("claims %+v", c)
			}
			if c.Iat != toInt(tc.claims["iat"]) || c.Exp != toInt(tc.claims["exp"]) {
				t.Fatalf("times %d %d", c.Iat, c.Exp)
			}
		})
	}
}

func toInt(v any) int64 {
	switch n := v.(type) {
	case int64:
		return n
	case int:
		return int64(n)
	}
	panic("not an int")
}

func TestVerifyAssertionLookup(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()

	// Unknown device: both ErrInvalid and the lookup's error are visible.
	tok := signRaw(t, f.key, `{"alg":"ES256","kid":"dev_nope"}`, mustJSON(t, with(assertionClaims(), "iss", "dev_nope")))
	_, err := VerifyAssertion(ctx, tok, f.lookup, testAud, testNow)
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, errUnknown) {
		t.Fatalf("err = %v", err)
	}

	// Tokens failing cheap checks never reach the key store.
	f.calls.Store(0)
	bad := []string{
		"garbage",
		signRaw(t, f.key, `{"alg":"none","kid":"`+devID+`"}`, mustJSON(t, assertionClaims())),
		signRaw(t, f.key, devHeader, mustJSON(t, with(assertionClaims(), "aud", "x"))),
		signRaw(t, f.key, devHeader, mustJSON(t, with(assertionClaims(), "exp", testNow.Unix()-1000, "iat", testNow.Unix()-1100))),
		signRaw(t, f.key, `{"alg":"ES256","kid":"`+strings.Repeat("k", 129)+`"}`, mustJSON(t, with(assertionClaims(), "iss", strings.Repeat("k", 129)))),
		signRaw(t, f.key, devHeader, mustJSON(t, with(assertionClaims(), "cid", "c"))),
	}
	for _, b := range bad {
		if _, err := VerifyAssertion(ctx, b, f.lookup, testAud, testNow); err == nil {
			t.Fatal("accepted")
		}
	}
	if n := f.calls.Load(); n != 0 {
		t.Fatalf("lookup called %d times", n)
	}

	// The lookup gets the context and the kid.
	type ctxKey struct{}
	ctx = context.WithValue(ctx, ctxKey{}, "v")
	var gotID string
	lk := func(c context.Context, id string) (*ecdsa.PublicKey, error) {
		if c.Value(ctxKey{}) != "v" {
			t.Error("context not passed")
		}
		gotID = id
		return &f.key.PublicKey, nil
	}
	good := signRaw(t, f.key, devHeader, mustJSON(t, assertionClaims()))
	if _, err := VerifyAssertion(ctx, good, lk, testAud, testNow); err != nil || gotID != devID {
		t.Fatalf("err %v, id %q", err, gotID)
	}
	// A nil key from lookup is refused, not a panic.
	nilKey := func(context.Context, string) (*ecdsa.PublicKey, error) { return nil, nil }
	if _, err := VerifyAssertion(ctx, good, nilKey, testAud, testNow); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nil key: %v", err)
	}
	// An empty configured audience matches nothing.
	if _, err := VerifyAssertion(ctx, signRaw(t, f.key, devHeader, mustJSON(t, with(assertionClaims(), "aud", ""))), f.lookup, "", testNow); err == nil {
		t.Fatal("empty audience accepted")
	}
}

func TestVerifyDecision(t *testing.T) {
	f := newFixture(t)
	now := testNow.Unix()
	d := validDecision()
	tests := []struct {
		deviceCase
		want DeviceClaims
	}{
		{deviceCase: deviceCase{name: "approve", claims: d, ok: true},
			want: DeviceClaims{Cid: "chal_1", Dec: "approve", HasCid: true, HasDec: true}},
		{deviceCase: deviceCase{name: "deny with fraud", claims: with(d, "dec", "deny", "fraud", true), ok: true},
			want: DeviceClaims{Cid: "chal_1", Dec: "deny", Fraud: true, HasCid: true, HasDec: true}},
		{deviceCase: deviceCase{name: "approve with num", claims: with(d, "num", "042"), ok: true},
			want: DeviceClaims{Cid: "chal_1", Dec: "approve", Num: "042", HasCid: true, HasDec: true}},
		{deviceCase: deviceCase{name: "null num and fraud false", claims: with(d, "num", json.RawMessage("null"), "fraud", false), ok: true},
			want: DeviceClaims{Cid: "chal_1", Dec: "approve", HasCid: true, HasDec: true}},
		{deviceCase: deviceCase{name: "aud array", claims: with(d, "aud", []string{testAud}), ok: true},
			want: DeviceClaims{Cid: "chal_1", Dec: "approve", HasCid: true, HasDec: true}},
		{deviceCase: deviceCase{name: "without cid", claims: with(d, "cid", nil)}},
		{deviceCase: deviceCase{name: "cid null", claims: with(d, "cid", json.RawMessage("null"))}},
		{deviceCase: deviceCase{name: "cid number", claims: with(d, "cid", 7)}},
		{deviceCase: deviceCase{name: "cid empty", claims: with(d, "cid", "")}},
		{deviceCase: deviceCase{name: "without dec", claims: with(d, "dec", nil)}},
		{deviceCase: deviceCase{name: "dec upper case", claims: with(d, "dec", "APPROVE")}},
		{deviceCase: deviceCase{name: "dec approved", claims: with(d, "dec", "approved")}},
		{deviceCase: deviceCase{name: "dec bool", claims: with(d, "dec", true)}},
		{deviceCase: deviceCase{name: "num number", claims: with(d, "num", 42)}},
		{deviceCase: deviceCase{name: "fraud string", claims: with(d, "dec", "deny", "fraud", "true")}},
		{deviceCase: deviceCase{name: "fraud with approve", claims: with(d, "fraud", true)}},
		{deviceCase: deviceCase{name: "plain assertion as decision", claims: assertionClaims()}},
		{deviceCase: deviceCase{name: "expired decision", claims: with(d, "iat", now-400, "exp", now-100)}},
		{deviceCase: deviceCase{name: "decision lifetime 301", claims: with(d, "iat", now-1, "exp", now+300)}},
		{deviceCase: deviceCase{name: "decision wrong audience", claims: with(d, "aud", "https://evil")}},
		{deviceCase: deviceCase{name: "decision float exp", claims: with(d, "exp", json.Number("1700000100.5"))}},
		{deviceCase: deviceCase{name: "decision missing jti", claims: with(d, "jti", nil)}},
		{deviceCase: deviceCase{name: "decision wrong key", claims: d, other: true}},
		{deviceCase: deviceCase{name: "decision iss mismatch", claims: with(d, "iss", "dev_x")}},
		{deviceCase: deviceCase{name: "decision alg ES384", header: `{"alg":"ES384","kid":"` + devID + `"}`, claims: d}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := VerifyDecision(context.Background(), f.token(t, tc.deviceCase), f.lookup, testAud, testNow)
			if !tc.ok {
				if err == nil {
					t.Fatalf("accepted: %+v", c)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			w := tc.want
			w.Iss, w.Aud, w.Jti = devID, testAud, "jti-1"
			w.Iat, w.Exp = now-10, now+110
			if *c != w {
				t.Fatalf("got %+v\nwant %+v", *c, w)
			}
		})
	}
}

func TestVerifyEnrollmentProof(t *testing.T) {
	key, other := genKey(t), genKey(t)
	now := testNow.Unix()
	pc := map[string]any{"code": "K7QD9XMW", "iat": now - 30}
	good := signRaw(t, key, `{"alg":"ES256"}`, mustJSON(t, pc))
	gp := strings.Split(good, ".")

	tests := []struct {
		name, header string
		claims       map[string]any
		token        string
		signer       *ecdsa.PrivateKey
		ok           bool
	}{
		{name: "valid", claims: pc, ok: true},
		{name: "typ allowed", header: `{"alg":"ES256","typ":"JWT"}`, claims: pc, ok: true},
		{name: "iat 300s ago", claims: with(pc, "iat", now-300), ok: true},
		{name: "iat 300s ahead", claims: with(pc, "iat", now+300), ok: true},
		{name: "stale iat", claims: with(pc, "iat", now-301)},
		{name: "future iat", claims: with(pc, "iat", now+301)},
		{name: "kid present", header: `{"alg":"ES256","kid":"dev"}`, claims: pc},
		{name: "kid null", header: `{"alg":"ES256","kid":null}`, claims: pc},
		{name: "crit", header: `{"alg":"ES256","crit":["b64"],"b64":false}`, claims: pc},
		{name: "alg ES384", header: `{"alg":"ES384"}`, claims: pc},
		{name: "alg none", token: b64([]byte(`{"alg":"none"}`)) + "." + gp[1] + "."},
		{name: "wrong key", claims: pc, signer: other},
		{name: "tampered code", token: gp[0] + "." + b64([]byte(mustJSON(t, with(pc, "code", "AAAAAAAA")))) + "." + gp[2]},
		{name: "code missing", claims: with(pc, "code", nil)},
		{name: "code number", claims: with(pc, "code", 12345678)},
		{name: "code empty", claims: with(pc, "code", "")},
		{name: "iat missing", claims: with(pc, "iat", nil)},
		{name: "iat float", claims: with(pc, "iat", json.Number("1699999970.0"))},
		{name: "iat string", claims: with(pc, "iat", "1699999970")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.token
			if tok == "" {
				h := tc.header
				if h == "" {
					h = `{"alg":"ES256"}`
				}
				s := tc.signer
				if s == nil {
					s = key
				}
				tok = signRaw(t, s, h, mustJSON(t, tc.claims))
			}
			code, err := VerifyEnrollmentProof(tok, &key.PublicKey, testNow)
			if !tc.ok {
				if err == nil {
					t.Fatalf("accepted, code %q", code)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if code != tc.claims["code"] {
				t.Fatalf("code %q", code)
			}
		})
	}

	// The code comes back exactly as signed, not normalised.
	tok, err := jws.Sign(key, map[string]any{"typ": "JWT"}, map[string]any{"code": "k7qd-9xmw", "iat": now})
	if err != nil {
		t.Fatal(err)
	}
	if code, err := VerifyEnrollmentProof(tok, &key.PublicKey, testNow); err != nil || code != "k7qd-9xmw" {
		t.Fatalf("code %q, err %v", code, err)
	}
	if _, err := VerifyEnrollmentProof(tok, nil, testNow); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nil key: %v", err)
	}
}

// TestDeviceRoundTripWithJWK runs the enrollment path end to end: the key is
// sent as a JWK, parsed back, and used to verify the proof and an assertion.
func TestDeviceRoundTripWithJWK(t *testing.T) {
	key := genKey(t)
	j := jws.JWKFromPublicKey(&key.PublicKey)
	raw := mustJSON(t, j)
	var back jws.JWK
	if err := json.Unmarshal([]byte(raw), &back); err != nil {
		t.Fatal(err)
	}
	pub, err := jws.PublicKeyFromJWK(back)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := jws.Sign(key, nil, map[string]any{"code": "K7QD9XMW", "iat": testNow.Unix()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyEnrollmentProof(proof, pub, testNow); err != nil {
		t.Fatal(err)
	}
	as, err := jws.Sign(key, map[string]any{"kid": devID, "typ": "JWT"}, assertionClaims())
	if err != nil {
		t.Fatal(err)
	}
	lk := func(context.Context, string) (*ecdsa.PublicKey, error) { return pub, nil }
	if _, err := VerifyAssertion(context.Background(), as, lk, testAud, testNow); err != nil {
		t.Fatal(err)
	}
}
