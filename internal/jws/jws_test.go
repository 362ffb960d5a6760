package jws

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func enc(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// rawES256 signs header and payload (given as literal JSON) with key and
// returns a compact JWS with a correct R||S signature, whatever the header says.
func rawES256(t testing.TB, key *ecdsa.PrivateKey, header, payload string) string {
	t.Helper()
	input := enc(header) + "." + enc(payload)
	d := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func pubBytes(t testing.TB, pub *ecdsa.PublicKey) []byte {
	t.Helper()
	b, err := pub.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSignParseVerifyRoundTrip(t *testing.T) {
	key := newKey(t)
	claims := map[string]any{"iss": "dev1", "n": 7, "s": "héllo"}
	// "alg":"none" in hdr must be overridden.
	tok, err := Sign(key, map[string]any{"kid": "dev1", "typ": "JWT", "alg": "none"}, claims)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.Alg != "ES256" || p.Kid != "dev1" {
		t.Fatalf("alg=%q kid=%q", p.Alg, p.Kid)
	}
	if string(p.Header["typ"]) != `"JWT"` {
		t.Fatalf("typ = %s", p.Header["typ"])
	}
	var got map[string]any
	if err := json.Unmarshal(p.Payload, &got); err != nil {
		t.Fatal(err)
	}
	if got["iss"] != "dev1" || got["n"] != float64(7) || got["s"] != "héllo" {
		t.Fatalf("payload = %s", p.Payload)
	}
	if err := p.VerifyES256(&key.PublicKey); err != nil {
		t.Fatalf("verify: %v", err)
	}
	// A key parsed back from its JWK verifies too.
	pub, err := PublicKeyFromJWK(JWKFromPublicKey(&key.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.VerifyES256(pub); err != nil {
		t.Fatalf("verify with JWK key: %v", err)
	}
}

// TestSignPadsRS signs until both an R and an S shorter than 32 bytes have
// occurred, checking that every signature is 64 bytes and verifies (RFC 7518
// §3.4 left-padding).
func TestSignPadsRS(t *testing.T) {
	key := newKey(t)
	shortR, shortS := false, false
	for i := 0; i < 20000 && !(shortR && shortS); i++ {
		tok, err := Sign(key, nil, map[string]int{"i": i})
		if err != nil {
			t.Fatal(err)
		}
		p, err := Parse(tok)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.sig) != 64 {
			t.Fatalf("signature length %d", len(p.sig))
		}
		if err := p.VerifyES256(&key.PublicKey); err != nil {
			t.Fatalf("signature %x does not verify: %v", p.sig, err)
		}
		shortR = shortR || p.sig[0] == 0
		shortS = shortS || p.sig[32] == 0
	}
	if !shortR || !shortS {
		t.Fatal("no short R or S in 20000 signatures")
	}
}

func TestSignRefusesNonObjectClaimsAndWrongCurve(t *testing.T) {
	key := newKey(t)
	if _, err := Sign(key, nil, []int{1}); err == nil {
		t.Error("array claims accepted")
	}
	if _, err := Sign(key, nil, "x"); err == nil {
		t.Error("string claims accepted")
	}
	k384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Sign(k384, nil, map[string]int{}); err == nil {
		t.Error("P-384 key accepted")
	}
	if _, err := Sign(nil, nil, map[string]int{}); err == nil {
		t.Error("nil key accepted")
	}
}

func TestVerifyRefuses(t *testing.T) {
	key := newKey(t)
	other := newKey(t)
	pub := &key.PublicKey
	const payload = `{"iss":"dev1","aud":"https://a.example"}`

	good := rawES256(t, key, `{"alg":"ES256","kid":"dev1"}`, payload)
	parts := strings.Split(good, ".")
	rawSig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}

	// DER signature over the right input with the right key.
	d := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	der, err := ecdsa.SignASN1(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub, d[:], der) {
		t.Fatal("DER signature does not verify with the standard library")
	}
	derTok := parts[0] + "." + parts[1] + "." + enc(string(der))

	// HS256 with the public key bytes as the HMAC secret (algorithm confusion).
	hsInput := enc(`{"alg":"HS256","kid":"dev1"}`) + "." + parts[1]
	mac := hmac.New(sha256.New, pubBytes(t, pub))
	mac.Write([]byte(hsInput))
	hsTok := hsInput + "." + enc(string(mac.Sum(nil)))
	// Same MAC, but the header claims ES256.
	hsInput2 := parts[0] + "." + parts[1]
	mac2 := hmac.New(sha256.New, pubBytes(t, pub))
	mac2.Write([]byte(hsInput2))
	hsAsES := hsInput2 + "." + enc(string(mac2.Sum(nil)))

	// Tampered payload, original signature.
	tampered := parts[0] + "." + enc(`{"iss":"dev2","aud":"https://a.example"}`) + "." + parts[2]

	critTok, err := Sign(key, map[string]any{"kid": "dev1", "crit": []string{"exp"}, "exp": 1}, map[string]string{"iss": "dev1"})
	if err != nil {
		t.Fatal(err)
	}

	k384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		tok  string
		pub  *ecdsa.PublicKey
	}{
		{"DER signature", derTok, pub},
		{"alg none, empty signature", enc(`{"alg":"none"}`) + "." + parts[1] + ".", pub},
		{"alg none, valid ES256 signature", rawES256(t, key, `{"alg":"none"}`, payload), pub},
		{"HS256 keyed with public key", hsTok, pub},
		{"HMAC signature under ES256 header", hsAsES, pub},
		{"ES384 header, valid ES256 signature", rawES256(t, key, `{"alg":"ES384"}`, payload), pub},
		{"missing alg", rawES256(t, key, `{"kid":"dev1"}`, payload), pub},
		{"alg lowercase", rawES256(t, key, `{"alg":"es256"}`, payload), pub},
		{"alg not a string", rawES256(t, key, `{"alg":["ES256"]}`, payload), pub},
		{"crit present", critTok, pub},
		{"crit empty array", rawES256(t, key, `{"alg":"ES256","crit":[]}`, payload), pub},
		{"wrong key", good, &other.PublicKey},
		{"tampered payload", tampered, pub},
		{"nil key", good, nil},
		{"P-384 key", good, &k384.PublicKey},
		{"signature too short", parts[0] + "." + parts[1] + "." + enc(strings.Repeat("a", 63)), pub},
		{"signature too long", parts[0] + "." + parts[1] + "." + parts[2] + "AA", pub},
		{"S with a leading zero byte (65 bytes)", parts[0] + "." + parts[1] + "." + enc(string(rawSig[:32])+"\x00"+string(rawSig[32:])), pub},
		{"R and S as 33-byte integers (66 bytes)", parts[0] + "." + parts[1] + "." + enc("\x00"+string(rawSig[:32])+"\x00"+string(rawSig[32:])), pub},
		{"zero signature", parts[0] + "." + parts[1] + "." + enc(strings.Repeat("\x00", 64)), pub},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse(tc.tok)
			if err != nil {
				t.Fatalf("well-formed token refused by Parse (want VerifyES256 to refuse it): %v", err)
			}
			if err := p.VerifyES256(tc.pub); err == nil {
				t.Fatal("accepted")
			}
		})
	}

	// Control: the untampered token verifies, so the failures above are real.
	p, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.VerifyES256(pub); err != nil {
		t.Fatalf("control token refused: %v", err)
	}
}

func TestParseRefuses(t *testing.T) {
	key := newKey(t)
	good := rawES256(t, key, `{"alg":"ES256"}`, `{"a":1}`)
	parts := strings.Split(good, ".")
	sig := parts[2]
	join := func(h, p string) string { return h + "." + p + "." + sig }

	std := base64.StdEncoding.EncodeToString([]byte(`{"alg":"ES256","x":">>>???"}`)) // contains '+' or '/'
	if !strings.ContainsAny(std, "+/") {
		t.Fatal("test setup: std encoding has no +/")
	}
	padded := base64.URLEncoding.EncodeToString([]byte(`{"alg":"ES256"} `)) // 16 bytes -> padding
	if !strings.HasSuffix(padded, "=") {
		t.Fatal("test setup: no padding")
	}
	// Non-canonical trailing bits: `{}` is "e30"; "e31" decodes to the same
	// bytes under a lax decoder.
	if enc(`{}`) != "e30" {
		t.Fatal("test setup")
	}

	tests := []struct {
		name, tok string
	}{
		{"empty", ""},
		{"two parts", parts[0] + "." + parts[1]},
		{"four parts", good + ".x"},
		{"padded header", join(padded, parts[1])},
		{"padded signature", good + "=="},
		{"standard alphabet", join(strings.TrimRight(std, "="), parts[1])},
		{"newline in header", join(parts[0][:4]+"\n"+parts[0][4:], parts[1])},
		{"CR in payload", join(parts[0], parts[1][:2]+"\r"+parts[1][2:])},
		{"space in signature", parts[0] + "." + parts[1] + "." + sig[:5] + " " + sig[5:]},
		{"non-canonical trailing bits", join(parts[0], "e31")},
		{"header array", join(enc(`["alg","ES256"]`), parts[1])},
		{"header null", join(enc(`null`), parts[1])},
		{"header string", join(enc(`"ES256"`), parts[1])},
		{"header empty", join("", parts[1])},
		{"header invalid JSON", join(enc(`{"alg":"ES256"`), parts[1])},
		{"header trailing data", join(enc(`{"alg":"ES256"}{}`), parts[1])},
		{"header trailing garbage", join(enc(`{"alg":"ES256"} x`), parts[1])},
		{"duplicate alg", join(enc(`{"alg":"ES256","alg":"none"}`), parts[1])},
		{"payload array", join(parts[0], enc(`[1]`))},
		{"payload number", join(parts[0], enc(`1`))},
		{"payload empty", join(parts[0], "")},
		{"payload duplicate member", join(parts[0], enc(`{"iss":"a","iss":"b"}`))},
		{"too long", join(parts[0], enc(`{"x":"`+strings.Repeat("a", MaxTokenLen)+`"}`))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.tok); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := Parse(join(parts[0], "e30")); err != nil {
		t.Fatalf("canonical {} refused: %v", err)
	}
	if _, err := Parse(good); err != nil {
		t.Fatalf("control refused: %v", err)
	}
}

func TestParseSizeBoundary(t *testing.T) {
	key := newKey(t)
	hdr := `{"alg":"ES256"}`
	// Find a payload length that makes the token exactly MaxTokenLen bytes.
	base := len(rawES256(t, key, hdr, `{"x":""}`))
	n := MaxTokenLen - base
	for n > 0 {
		pl := `{"x":"` + strings.Repeat("a", n) + `"}`
		tok := rawES256(t, key, hdr, pl)
		if len(tok) <= MaxTokenLen {
			p, err := Parse(tok)
			if err != nil {
				t.Fatalf("token of %d bytes refused: %v", len(tok), err)
			}
			if err := p.VerifyES256(&key.PublicKey); err != nil {
				t.Fatal(err)
			}
			return
		}
		n--
	}
	t.Fatal("could not build a token near the limit")
}

func TestPublicKeyFromJWK(t *testing.T) {
	key := newKey(t)
	good := JWKFromPublicKey(&key.PublicKey)
	if good.Kty != "EC" || good.Crv != "P-256" || len(good.X) != 43 || len(good.Y) != 43 {
		t.Fatalf("JWKFromPublicKey = %+v", good)
	}
	pub, err := PublicKeyFromJWK(good)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(&key.PublicKey) {
		t.Fatal("round trip changed the key")
	}
	withMeta := good
	withMeta.Kid, withMeta.Alg, withMeta.Use = "k", "ES256", "sig"
	if _, err := PublicKeyFromJWK(withMeta); err != nil {
		t.Fatalf("kid/alg/use refused: %v", err)
	}

	xb, _ := base64.RawURLEncoding.DecodeString(good.X)
	yb, _ := base64.RawURLEncoding.DecodeString(good.Y)
	b := base64.RawURLEncoding.EncodeToString

	// Off-curve: same x, low bit of y flipped.
	yOff := append([]byte(nil), yb...)
	yOff[31] ^= 1

	mod := func(f func(j *JWK)) JWK { j := good; f(&j); return j }

	tests := []struct {
		name string
		j    JWK
		want string // substring of the error
	}{
		{"x 31 bytes", mod(func(j *JWK) { j.X = b(xb[1:]) }), "x must be exactly 32 bytes"},
		{"y 33 bytes", mod(func(j *JWK) { j.Y = b(append([]byte{0}, yb...)) }), "y must be exactly 32 bytes"},
		{"off curve", mod(func(j *JWK) { j.Y = b(yOff) }), "not a point on P-256"},
		{"point at infinity / zero", mod(func(j *JWK) { j.X = b(make([]byte, 32)); j.Y = b(make([]byte, 32)) }), "not a point"},
		{"padded x", mod(func(j *JWK) { j.X = base64.URLEncoding.EncodeToString(xb) }), "unpadded base64url"},
		{"std alphabet x", mod(func(j *JWK) { j.X = base64.RawStdEncoding.EncodeToString(xb) + "+" }), "base64url"},
		{"missing y", mod(func(j *JWK) { j.Y = "" }), "y is missing"},
		{"crv P-384", mod(func(j *JWK) { j.Crv = "P-384" }), "crv"},
		{"crv lowercase", mod(func(j *JWK) { j.Crv = "p-256" }), "crv"},
		{"kty RSA", mod(func(j *JWK) { j.Kty = "RSA" }), "kty"},
		{"kty missing", mod(func(j *JWK) { j.Kty = "" }), "kty"},
		{"alg RS256", mod(func(j *JWK) { j.Alg = "RS256" }), "alg"},
		{"use enc", mod(func(j *JWK) { j.Use = "enc" }), "use"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PublicKeyFromJWK(tc.j)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestJWKFromInvalidKey(t *testing.T) {
	if j := JWKFromPublicKey(nil); j.X != "" || j.Y != "" {
		t.Fatalf("nil key gave %+v", j)
	}
	k384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if j := JWKFromPublicKey(&k384.PublicKey); j.X != "" {
		t.Fatalf("P-384 key gave %+v", j)
	}
	// Unset coordinates must not panic.
	if j := JWKFromPublicKey(&ecdsa.PublicKey{Curve: elliptic.P256()}); j.X != "" {
		t.Fatalf("empty key gave %+v", j)
	}
	p, err := Parse(rawES256(t, newKey(t), `{"alg":"ES256"}`, `{}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.VerifyES256(&ecdsa.PublicKey{Curve: elliptic.P256()}); err == nil {
		t.Fatal("empty key accepted")
	}
}

func TestJWKJSONNames(t *testing.T) {
	b, err := json.Marshal(JWK{Kty: "EC", Crv: "P-256", X: "a", Y: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"kty":"EC","crv":"P-256","x":"a","y":"b"}` {
		t.Fatalf("got %s", b)
	}
}
