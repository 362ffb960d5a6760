package app_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/clicktopurchase/approvald/push/pushtest"
)

// TestMain points the process's TLS roots at the fake push providers'
// authority before anything reads them (Go reads SSL_CERT_FILE once).
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "approvald-ca")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	path, err := pushtest.WriteCA(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("SSL_CERT_FILE", path)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
