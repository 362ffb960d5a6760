package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"reflect"
	"strings"
	"testing"

	"github.com/clicktopurchase/approvald/internal/jws"
)

func TestSignerJWKSVerifies(t *testing.T) {
	pemKey, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner(pemKey)
	if err != nil {
		t.Fatal(err)
	}
	claims := ResultClaims{
		Iss: testAud, Sub: "u-42", Cid: "chal_1", Act: "submit_offer", St: "approved",
		Amr: []string{"push"}, Iat: testNow.Unix(), Exp: testNow.Unix() + 300,
	}
	tok, err := s.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}

	// Verify the way an RP would: from the JWKS JSON alone.
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(s.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("%d keys", len(set.Keys))
	}
	k := set.Keys[0]
	for name, want := range map[string]string{"kty": "EC", "crv": "P-256", "kid": s.Kid(), "alg": "ES256", "use": "sig"} {
		if k[name] != want {
			t.Errorf("jwks %s = %v, want %q", name, k[name], want)
		}
	}
	if len(k) != 7 {
		t.Errorf("jwks key has members %v", k)
	}
	var jwk jws.JWK
	raw, _ := json.Marshal(k)
	if err := json.Unmarshal(raw, &jwk); err != nil {
		t.Fatal(err)
	}
	pub, err := jws.PublicKeyFromJWK(jwk)
	if err != nil {
		t.Fatal(err)
	}

	p, err := jws.Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.Kid != s.Kid() || p.Alg != "ES256" || string(p.Header["typ"]) != `"JWT"` || len(p.Header) != 3 {
		t.Fatalf("header %v", p.Header)
	}
	if p.Kid != jwk.Kid {
		t.Fatal("token kid not in JWKS")
	}
	if err := p.VerifyES256(pub); err != nil {
		t.Fatalf("verify with JWKS key: %v", err)
	}
	var members map[string]any
	if err := json.Unmarshal(p.Payload, &members); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"iss": testAud, "sub": "u-42", "cid": "chal_1", "act": "submit_offer", "st": "approved",
		"amr": []any{"push"}, "iat": float64(testNow.Unix()), "exp": float64(testNow.Unix() + 300),
	}
	if !reflect.DeepEqual(members, want) {
		t.Fatalf("claims %v\nwant %v", members, want)
	}

	// A token from another server key does not verify with this JWKS.
	other, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	s2, err := NewSigner(other)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Kid() == s.Kid() {
		t.Fatal("two keys share a kid")
	}
	tok2, err := s2.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := jws.Parse(tok2)
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.VerifyES256(pub); err == nil {
		t.Fatal("other server key verified")
	}

	// Reloading the same PEM gives the same kid; JWKS returns a copy.
	s3, err := NewSigner(pemKey)
	if err != nil {
		t.Fatal(err)
	}
	if s3.Kid() != s.Kid() {
		t.Fatal("kid not stable")
	}
	b := s.JWKS()
	b[0] = 'X'
	if s.JWKS()[0] != '{' {
		t.Fatal("JWKS shares its buffer")
	}
}

// TestKidIsRFC7638Thumbprint recomputes the thumbprint independently.
func TestKidIsRFC7638Thumbprint(t *testing.T) {
	pemKey, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner(pemKey)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemKey)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := k.(*ecdsa.PrivateKey).PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	// encoding/json sorts map keys and adds no whitespace: the RFC 7638 form.
	canon, err := json.Marshal(map[string]string{
		"kty": "EC", "crv": "P-256", "x": b64(pb[1:33]), "y": b64(pb[33:]),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(canon), `{"crv":"P-256","kty":"EC","x":"`) {
		t.Fatalf("canonical form %s", canon)
	}
	sum := sha256.Sum256(canon)
	if want := b64(sum[:]); s.Kid() != want {
		t.Fatalf("kid %q, want %q", s.Kid(), want)
	}
}

func TestNewSignerRefuses(t *testing.T) {
	good, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(good)

	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edPriv)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384DER, err := x509.MarshalPKCS8PrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(genKey(t))
	if err != nil {
		t.Fatal(err)
	}
	enc := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }

	tests := map[string][]byte{
		"empty":              nil,
		"not PEM":            []byte("hello"),
		"wrong PEM type":     enc("EC PRIVATE KEY", block.Bytes),
		"SEC 1 key":          enc("EC PRIVATE KEY", sec1),
		"SEC 1 as PKCS8":     enc("PRIVATE KEY", sec1),
		"Ed25519":            enc("PRIVATE KEY", edDER),
		"P-384":              enc("PRIVATE KEY", p384DER),
		"corrupt DER":        enc("PRIVATE KEY", block.Bytes[:len(block.Bytes)-3]),
		"trailing PEM block": append(append([]byte(nil), good...), good...),
	}
	for name, in := range tests {
		if _, err := NewSigner(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewSigner(append(append([]byte(nil), good...), "\n\n"...)); err != nil {
		t.Errorf("trailing whitespace refused: %v", err)
	}
}
