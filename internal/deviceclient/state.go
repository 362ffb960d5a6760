package deviceclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// state is the JSON of a state file.
type state struct {
	Server     string `json:"server"`
	DeviceID   string `json:"device_id"`
	Audience   string `json:"audience"`
	UserID     string `json:"user_id"`
	PrivateKey string `json:"private_key"` // PKCS#8 PEM
}

// Save writes the device's state (server, ids, audience and the private key
// as PKCS#8 PEM) to path, mode 0600, atomically: a temporary file in the
// same directory is written, synced and renamed over path.
func (c *Client) Save(path string) (err error) {
	if c.Key == nil {
		return errors.New("deviceclient: no device key to save")
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		return fmt.Errorf("deviceclient: encoding the key: %w", err)
	}
	data, err := json.MarshalIndent(state{
		Server: c.Server, DeviceID: c.DeviceID, Audience: c.Audience, UserID: c.UserID,
		PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
	}, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')

	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("deviceclient: saving state: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return fmt.Errorf("deviceclient: saving state: %w", err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("deviceclient: saving state: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("deviceclient: saving state: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("deviceclient: saving state: %w", err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("deviceclient: saving state: %w", err)
	}
	return nil
}

// Load reads a state file written by Save. The returned Client uses the
// default HTTP client.
func Load(path string) (*Client, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("deviceclient: %s: not a device state file: %w", path, err)
	}
	blk, _ := pem.Decode([]byte(s.PrivateKey))
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("deviceclient: %s: private_key is not a PKCS#8 PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("deviceclient: %s: private_key: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("deviceclient: %s: private_key is not a P-256 ECDSA key", path)
	}
	if s.Server == "" {
		return nil, fmt.Errorf("deviceclient: %s: server is missing", path)
	}
	return &Client{Server: s.Server, Key: ek, DeviceID: s.DeviceID, Audience: s.Audience, UserID: s.UserID}, nil
}
