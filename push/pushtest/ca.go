// Package pushtest provides fake FCM and APNs servers that the real Firebase
// Admin SDK and apns2 client talk to. Tests, benchmarks and the demo use them
// to see pushes without Google's or Apple's servers.
//
// The TLS fakes share one certificate authority per process, created in
// memory on first use. Point the process's system roots at it before the first
// TLS connection, e.g. in TestMain:
//
//	path, err := pushtest.WriteCA(dir)
//	os.Setenv("SSL_CERT_FILE", path)
//
// (crypto/x509 reads SSL_CERT_FILE once per process.)
//
// This package does not depend on package testing.
package pushtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

type authority struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	pool    *x509.CertPool
}

var (
	caOnce sync.Once
	caVal  *authority
	caErr  error
)

func sharedCA() (*authority, error) {
	caOnce.Do(func() { caVal, caErr = newAuthority() })
	return caVal, caErr
}

func newAuthority() (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "approvald pushtest CA", Organization: []string{"approvald pushtest"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &authority{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pool:    pool,
	}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err)
	}
	return n
}

// issue signs a leaf certificate for key.
func (a *authority) issue(tmpl *x509.Certificate, pub any) ([]byte, error) {
	now := time.Now()
	tmpl.SerialNumber = randomSerial()
	tmpl.NotBefore = now.Add(-time.Hour)
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(30 * 24 * time.Hour)
	}
	if tmpl.NotAfter.Before(tmpl.NotBefore) {
		tmpl.NotBefore = tmpl.NotAfter.Add(-time.Hour)
	}
	tmpl.BasicConstraintsValid = true
	return x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
}

// serverCertificate is a TLS certificate for 127.0.0.1, ::1 and localhost.
func (a *authority) serverCertificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	der, err := a.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, &key.PublicKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der, a.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// CACertPEM returns the PEM of the certificate authority that signs the TLS
// fakes' server certificates and the client certificates of IssueClientCert.
func CACertPEM() ([]byte, error) {
	ca, err := sharedCA()
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), ca.certPEM...), nil
}

// CAPool returns a certificate pool holding only the fakes' authority, for a
// client that is configured explicitly rather than through the system roots.
func CAPool() (*x509.CertPool, error) {
	ca, err := sharedCA()
	if err != nil {
		return nil, err
	}
	return ca.pool.Clone(), nil
}

// WriteCA writes the fakes' CA certificate to dir/pushtest-ca.pem and returns
// the path, ready for SSL_CERT_FILE.
func WriteCA(dir string) (string, error) {
	pemBytes, err := CACertPEM()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "pushtest-ca.pem")
	if err := os.WriteFile(path, pemBytes, 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// APNsCertCommonName is the subject common name of the client certificates
// that IssueClientCert makes, as Apple names them: "Apple Push Services: "
// followed by the topic (bundle id).
const APNsCertCommonName = "Apple Push Services: "

// IssueClientCert writes an APNs-style client certificate for topic, signed by
// the fakes' authority, with its PKCS #8 private key, to one PEM file in dir
// (the form APPROVALD_APNS_CERT_FILE takes) and returns its path. validFor 0
// means 30 days; a negative validFor makes a certificate that has expired.
func IssueClientCert(dir, topic string, validFor time.Duration) (string, error) {
	ca, err := sharedCA()
	if err != nil {
		return "", err
	}
	if topic == "" {
		return "", errors.New("pushtest: IssueClientCert needs a topic")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: APNsCertCommonName + topic, OrganizationalUnit: []string{"pushtest"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if validFor != 0 {
		tmpl.NotAfter = time.Now().Add(validFor)
	}
	der, err := ca.issue(tmpl, &key.PublicKey)
	if err != nil {
		return "", err
	}
	pk8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8})...)
	path := filepath.Join(dir, fmt.Sprintf("apns-cert-%x.pem", randomSerial().Bytes()[:4]))
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return "", err
	}
	return path, nil
}
