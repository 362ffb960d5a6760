// Command approvald is the push-approval service: serve (the default),
// migrate, and apikey create|list|revoke.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/clicktopurchase/approvald/internal/app"
	"github.com/clicktopurchase/approvald/internal/approval"
	"github.com/clicktopurchase/approvald/internal/auth"
	"github.com/clicktopurchase/approvald/internal/config"
	"github.com/clicktopurchase/approvald/internal/store"
)

const usage = `usage: approvald [command]

commands:
  serve [--demo]        run the service (the default); --demo also serves the demo
                        site, phone and mailbox at /demo/ (never in production)
  migrate               apply database migrations and exit
  healthcheck           exit 0 when the local instance is ready (for container health checks)
  apikey create NAME    make an API key; prints the key alone (shown once)
  apikey list           list API keys
  apikey revoke NAME    revoke an API key

Settings come from APPROVALD_* environment variables (see README.md).
`

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !isDemoFlag(args[0]) {
		cmd, args = args[0], args[1:]
	}
	if cmd == "-h" || cmd == "--help" || cmd == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	demo := false
	if cmd == "serve" {
		for _, a := range args {
			if !isDemoFlag(a) {
				fmt.Fprintf(stderr, "approvald: serve takes only --demo, got %q\n\n%s", a, usage)
				return 2
			}
			demo = true
		}
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "approvald: bad configuration:\n%v\n", err)
		return 2
	}
	cfg.Demo = cfg.Demo || demo
	log := newLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch cmd {
	case "serve":
		err = serve(ctx, cfg, log)
	case "migrate":
		err = withStore(ctx, cfg, func(st *store.Store) error { return nil })
		if err == nil {
			fmt.Fprintln(stderr, "approvald: migrations applied")
		}
	case "apikey":
		err = apikey(ctx, cfg, args, stdout)
	case "healthcheck":
		err = healthcheck(ctx, cfg)
	default:
		fmt.Fprintf(stderr, "approvald: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "approvald: %v\n", err)
		return 1
	}
	return 0
}

func isDemoFlag(a string) bool { return a == "--demo" || a == "-demo" }

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	a, err := app.Open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("APPROVALD_ADDR: %w", err)
	}
	// A second signal exits at once.
	go func() {
		<-ctx.Done()
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		<-again
		log.Warn("second signal: exiting now")
		os.Exit(1)
	}()
	return a.Serve(ctx, ln)
}

func withStore(ctx context.Context, cfg *config.Config, f func(*store.Store) error) error {
	st, err := store.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("APPROVALD_DATABASE_URL: %w", err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return f(st)
}

func apikey(ctx context.Context, cfg *config.Config, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("apikey needs create NAME, list or revoke NAME")
	}
	return withStore(ctx, cfg, func(st *store.Store) error {
		switch {
		case args[0] == "create" && len(args) == 2:
			name := args[1]
			if len(name) == 0 || len(name) > 64 {
				return errors.New("an API key name is 1 to 64 characters")
			}
			key := auth.NewSecret("apk_")
			err := st.CreateAPIKey(ctx, &approval.APIKey{ID: auth.NewID(), Name: name, Hash: auth.HashSecret(key), CreatedAt: time.Now().UTC()})
			if errors.Is(err, approval.ErrConflict) {
				return fmt.Errorf("an API key named %q exists already", name)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, key)
			return nil
		case args[0] == "list" && len(args) == 1:
			keys, err := st.ListAPIKeys(ctx)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCREATED\tREVOKED")
			for _, k := range keys {
				rev := "-"
				if k.RevokedAt != nil {
					rev = approval.RFC3339(*k.RevokedAt)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Name, approval.RFC3339(k.CreatedAt), rev)
			}
			return tw.Flush()
		case args[0] == "revoke" && len(args) == 2:
			err := st.RevokeAPIKey(ctx, args[1], time.Now().UTC())
			if errors.Is(err, approval.ErrNotFound) {
				return fmt.Errorf("no API key named %q", args[1])
			}
			return err
		}
		return errors.New("apikey needs create NAME, list or revoke NAME")
	})
}

// healthcheck asks the local instance's /readyz.
func healthcheck(ctx context.Context, cfg *config.Config) error {
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return fmt.Errorf("APPROVALD_ADDR: %w", err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("not ready: %s %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
