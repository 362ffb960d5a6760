package main

import (
	"bytes"
	"context"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clicktopurchase/approvald/internal/app/apptest"
	"github.com/clicktopurchase/approvald/internal/store"
)

// cli runs the command with the given settings and returns its exit code
// and output.
func cli(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, func(k string) string { return env[k] }, &out, &errOut)
	return code, out.String(), errOut.String()
}

func dbEnv(t *testing.T) map[string]string {
	return map[string]string{"APPROVALD_DATABASE_URL": "sqlite:" + filepath.Join(t.TempDir(), "a.db")}
}

// serveOn runs an instance on the database file the command uses.
func serveOn(t *testing.T, env map[string]string) *apptest.Env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, env["APPROVALD_DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return apptest.StartOn(t, st)
}

func TestAPIKeyLifecycle(t *testing.T) {
	env := dbEnv(t)
	if code, _, stderr := cli(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: exit %d: %s", code, stderr)
	}
	if code, _, stderr := cli(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate again: exit %d: %s", code, stderr)
	}

	code, stdout, stderr := cli(t, env, "apikey", "create", "web")
	if code != 0 {
		t.Fatalf("apikey create: exit %d: %s", code, stderr)
	}
	lines := strings.Split(stdout, "\n")
	if len(lines) != 2 || lines[1] != "" || !regexp.MustCompile(`^\S{20,}$`).MatchString(lines[0]) {
		t.Fatalf("apikey create must print the key alone on one line, got %q", stdout)
	}
	key := lines[0]
	if strings.Contains(stderr, key) {
		t.Errorf("the key also went to stderr (logs)")
	}

	srv := serveOn(t, env)
	r := srv.Do("POST", "/v1/enrollments", map[string]any{"user_id": "u-cli"}, key)
	if r.Status != http.StatusCreated {
		t.Fatalf("the new key does not authenticate: %d %s", r.Status, r.Body)
	}

	if code, stdout, _ := cli(t, env, "apikey", "create", "web"); code == 0 || strings.TrimSpace(stdout) != "" {
		t.Fatalf("a second key named web: exit %d, stdout %q", code, stdout)
	}
	code, stdout, stderr = cli(t, env, "apikey", "list")
	if code != 0 {
		t.Fatalf("apikey list: exit %d: %s", code, stderr)
	}
	if !regexp.MustCompile(`(?m)^web\s`).MatchString(stdout) {
		t.Fatalf("apikey list does not show web:\n%s", stdout)
	}
	if strings.Contains(stdout, key) {
		t.Fatalf("apikey list shows the key")
	}

	if code, _, stderr := cli(t, env, "apikey", "revoke", "web"); code != 0 {
		t.Fatalf("apikey revoke: exit %d: %s", code, stderr)
	}
	r = srv.Do("GET", "/v1/users/u-cli/devices", nil, key)
	if r.Status != http.StatusUnauthorized || r.JSON()["code"] != "unauthorized" {
		t.Fatalf("a revoked key: %d %s", r.Status, r.Body)
	}
	if r := srv.RP("GET", "/v1/users/u-cli/devices", nil); r.Status != http.StatusOK {
		t.Fatalf("another key after revoking web: %d %s", r.Status, r.Body)
	}
	if code, _, _ := cli(t, env, "apikey", "revoke", "nosuch"); code == 0 {
		t.Fatalf("revoking an unknown key succeeded")
	}
}

func TestBadInvocations(t *testing.T) {
	env := dbEnv(t)
	bad := map[string]string{"APPROVALD_NUMBER_MATCHING_DIGITS": "9"}
	for k, v := range env {
		bad[k] = v
	}
	for _, args := range [][]string{{"migrate"}, {"apikey", "list"}, {"serve"}} {
		code, _, stderr := cli(t, bad, args...)
		if code != 2 || !strings.Contains(stderr, "APPROVALD_NUMBER_MATCHING_DIGITS") {
			t.Errorf("%v with a bad setting: exit %d, stderr %q", args, code, stderr)
		}
	}
	if code, _, stderr := cli(t, env, "frobnicate"); code != 2 {
		t.Errorf("unknown command: exit %d, %s", code, stderr)
	}
	if code, _, _ := cli(t, env, "apikey"); code == 0 {
		t.Errorf("apikey without a subcommand succeeded")
	}
	if code, _, _ := cli(t, env, "apikey", "create"); code == 0 {
		t.Errorf("apikey create without a name succeeded")
	}
	if code, stdout, _ := cli(t, env, "help"); code != 0 || !strings.Contains(stdout, "apikey create NAME") {
		t.Errorf("help: exit %d %q", code, stdout)
	}
}

// healthcheck exits 0 against a ready instance and 1 when nothing listens.
func TestHealthcheck(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"APPROVALD_DATABASE_URL": "sqlite:" + dir + "/h.db", "APPROVALD_ADDR": "127.0.0.1:1"}
	getenv := func(k string) string { return env[k] }
	var out, errb strings.Builder
	if code := run([]string{"healthcheck"}, getenv, &out, &errb); code != 1 {
		t.Fatalf("healthcheck with nothing listening: exit %d (%s)", code, errb.String())
	}
	srv := apptest.Start(t, "sqlite")
	env["APPROVALD_ADDR"] = strings.TrimPrefix(srv.URL, "http://")
	errb.Reset()
	if code := run([]string{"healthcheck"}, getenv, &out, &errb); code != 0 {
		t.Fatalf("healthcheck against a ready instance: exit %d (%s)", code, errb.String())
	}
}
