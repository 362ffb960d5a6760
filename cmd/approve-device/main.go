// Command approve-device is the device simulator: a CLI that does exactly
// what the phone app does, for testing an integration without a phone and
// as the device of load tests. It keeps its P-256 key and enrollment in a
// state file (default approve-device.json in the working directory).
//
//	approve-device enroll --server URL --code CODE [--name N] [--key FILE] [--force]
//	approve-device list [--wait N] [--key FILE]
//	approve-device approve ID [--number N] [--key FILE]
//	approve-device deny ID [--fraud] [--key FILE]
//	approve-device unlink [--key FILE]
//	approve-device run --auto approve|deny [--key FILE]
//
// Exit status: 0 on success, 1 on an error (the server's problem code and
// detail are printed), 2 on a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/clicktopurchase/approvald/internal/deviceclient"
)

const (
	defaultKeyFile = "approve-device.json"
	defaultName    = "approve-device"
	// pollWait is the long-poll duration of `run`.
	pollWait = 25 * time.Second
	// idlePause is how long `run` waits before polling again when every
	// pending challenge has already been handled or skipped (the server
	// answers at once while any challenge is pending).
	idlePause = 2 * time.Second
)

const usage = `usage: approve-device <command> [flags]

Commands:
  enroll --server URL --code CODE [--name NAME] [--force]
                            make a P-256 key and link this device with an enrollment code
  list [--wait N]           show pending challenges (long-poll up to N seconds, at most 30)
  approve ID [--number N]   approve a challenge (N: the number shown in the browser)
  deny ID [--fraud]         deny a challenge (--fraud: "this wasn't me")
  unlink                    unlink this device and delete its state file
  run --auto approve|deny   decide every challenge as it arrives, until interrupted

Every command takes --key FILE, the device state file (default approve-device.json).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the CLI with args (without the program name) until it finishes
// or SIGINT/SIGTERM arrives, and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runCtx(ctx, args, stdout, stderr)
}

// errUsage marks a usage error (exit status 2); its message is printed
// before the usage.
type errUsage struct{ msg string }

func (e errUsage) Error() string { return e.msg }

func usageErr(format string, args ...any) error { return errUsage{fmt.Sprintf(format, args...)} }

// cli is one invocation.
type cli struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
}

func runCtx(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	c := &cli{ctx: ctx, stdout: stdout, stderr: stderr}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "enroll":
		err = c.enroll(rest)
	case "list":
		err = c.list(rest)
	case "approve":
		err = c.decide(rest, true)
	case "deny":
		err = c.decide(rest, false)
	case "unlink":
		err = c.unlink(rest)
	case "run":
		err = c.auto(rest)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "approve-device: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	var ue errUsage
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "approve-device %s: %s\n\n%s", cmd, ue.msg, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "approve-device %s: %s\n", cmd, describe(err))
		return 1
	}
}

// describe renders an error for a person: a problem as its code, detail
// and current status.
func describe(err error) string {
	var p *deviceclient.Problem
	if !errors.As(err, &p) {
		return clean(err.Error())
	}
	var b strings.Builder
	if p.Code != "" {
		b.WriteString(p.Code)
	} else {
		fmt.Fprintf(&b, "HTTP %d %s", p.Status, p.Title)
	}
	if p.Detail != "" {
		b.WriteString(": " + p.Detail)
	}
	if p.CurrentStatus != "" {
		b.WriteString(" (current status: " + p.CurrentStatus + ")")
	}
	if p.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", p.RetryAfter)
	}
	return clean(b.String())
}

// newFlags makes a subcommand's FlagSet; errors and -h go to stderr.
func (c *cli) newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("approve-device "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	return fs
}

// parse parses args with fs, accepting flags before and after positional
// arguments ("approve ID --number 42"); everything after "--" is
// positional. It returns the positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage{err.Error()}
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func keyFlag(fs *flag.FlagSet) *string {
	return fs.String("key", defaultKeyFile, "device state `file`")
}

// load reads the device state file.
func load(path string) (*deviceclient.Client, error) {
	d, err := deviceclient.Load(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no device state in %s: run `approve-device enroll` first (or pass --key FILE)", path)
	}
	if err != nil {
		return nil, err
	}
	if d.DeviceID == "" || d.Audience == "" {
		return nil, fmt.Errorf("%s holds no enrolled device", path)
	}
	return d, nil
}

func (c *cli) enroll(args []string) error {
	fs := c.newFlags("enroll")
	server := fs.String("server", "", "approvald base `URL`, e.g. https://approve.example.com (required)")
	code := fs.String("code", "", "the enrollment `code` shown in the browser, e.g. K7QD-9XMW (required)")
	name := fs.String("name", defaultName, "device `name` shown to the user")
	key := keyFlag(fs)
	force := fs.Bool("force", false, "overwrite an existing state file (its device stays linked on the server)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if *server == "" || *code == "" {
		return usageErr("--server and --code are required")
	}
	if u, err := url.Parse(*server); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageErr("--server must be an http or https URL, got %q", *server)
	}
	if !*force {
		if old, err := deviceclient.Load(*key); err == nil {
			return fmt.Errorf("%s already holds device %s (user %s); run `approve-device unlink` first, use another --key, or pass --force",
				*key, clean(old.DeviceID), clean(old.UserID))
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s exists and is not a device state file; remove it or use another --key", *key)
		}
	}
	// The code is single use: make sure the state can be saved before
	// spending it.
	if err := checkWritable(filepath.Dir(*key)); err != nil {
		return err
	}
	k, err := deviceclient.NewKey()
	if err != nil {
		return err
	}
	d := &deviceclient.Client{Server: strings.TrimRight(*server, "/"), Key: k}
	push := deviceclient.Push{Provider: deviceclient.ProviderNone}
	if err := d.Enroll(c.ctx, *code, *name, deviceclient.PlatformOther, push); err != nil {
		return err
	}
	if err := d.Save(*key); err != nil {
		return fmt.Errorf("linked device %s, but could not save its state (the device is unusable; remove it from the user): %w",
			clean(d.DeviceID), err)
	}
	fmt.Fprintf(c.stdout, "linked device %s to user %s at %s\nstate saved in %s\n",
		clean(d.DeviceID), clean(d.UserID), clean(d.Audience), *key)
	return nil
}

// checkWritable reports whether a file can be created in dir.
func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".approve-device-probe*")
	if err != nil {
		return fmt.Errorf("cannot write the state file: %w", err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func (c *cli) list(args []string) error {
	fs := c.newFlags("list")
	key := keyFlag(fs)
	wait := fs.Int("wait", 0, "long-poll: wait up to `N` seconds (at most 30) for a challenge")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if *wait < 0 || *wait > 30 {
		return usageErr("--wait must be from 0 to 30 seconds")
	}
	d, err := load(*key)
	if err != nil {
		return err
	}
	list, err := d.Pending(c.ctx, time.Duration(*wait)*time.Second)
	if err != nil {
		return err
	}
	if len(list) == 0 {
		fmt.Fprintln(c.stdout, "no pending challenges")
		return nil
	}
	now := time.Now()
	for i, ch := range list {
		if i > 0 {
			fmt.Fprintln(c.stdout)
		}
		printChallenge(c.stdout, ch, now)
	}
	return nil
}

// printChallenge shows one challenge as the phone would: id, action,
// context members in order, requester and expiry. Every string is shown
// as text with control characters escaped.
func printChallenge(w io.Writer, ch deviceclient.Challenge, now time.Time) {
	fmt.Fprintf(w, "%s  %s\n", clean(ch.ID), clean(ch.Action))
	members, err := ch.ContextMembers()
	if err != nil {
		fmt.Fprintf(w, "  (context unreadable: %s)\n", clean(err.Error()))
	}
	for _, m := range members {
		fmt.Fprintf(w, "  %s: %s\n", clean(m.Name), clean(m.Value))
	}
	var from []string
	for _, s := range []string{ch.Requester.IP, ch.Requester.UserAgent} {
		if s != "" {
			from = append(from, clean(s))
		}
	}
	if len(from) > 0 {
		fmt.Fprintf(w, "  requested from %s\n", strings.Join(from, ", "))
	}
	fmt.Fprintf(w, "  created %s, expires %s (in %s)\n", ch.CreatedAt.UTC().Format(time.RFC3339),
		ch.ExpiresAt.UTC().Format(time.RFC3339), max(ch.ExpiresAt.Sub(now), 0).Round(time.Second))
	if ch.NumberMatching {
		fmt.Fprintf(w, "  number matching: approve with --number N (the number shown in the browser)\n")
	}
}

func (c *cli) decide(args []string, approve bool) error {
	name := map[bool]string{true: "approve", false: "deny"}[approve]
	fs := c.newFlags(name)
	key := keyFlag(fs)
	var number *string
	var fraud *bool
	if approve {
		number = fs.String("number", "", "the `number` shown in the browser (number-matched challenges)")
	} else {
		fraud = fs.Bool("fraud", false, `report fraud ("this wasn't me"): cancels the user's other pending challenges`)
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		return usageErr("want exactly one challenge ID")
	}
	id := pos[0]
	d, err := load(*key)
	if err != nil {
		return err
	}
	dec := deviceclient.Decision{Approve: approve}
	if number != nil {
		dec.Number = strings.TrimSpace(*number)
	}
	if fraud != nil {
		dec.Fraud = *fraud
	}
	status, err := d.Decide(c.ctx, id, dec)
	if err != nil {
		var p *deviceclient.Problem
		if approve && dec.Number == "" && errors.As(err, &p) && p.Code == "invalid_request" {
			return fmt.Errorf("%s (if the browser shows a number, pass --number N)", describe(err))
		}
		return err
	}
	suffix := ""
	if dec.Fraud {
		suffix = " (reported as fraud)"
	}
	fmt.Fprintf(c.stdout, "%s %s%s\n", clean(status), clean(id), suffix)
	return nil
}

func (c *cli) unlink(args []string) error {
	fs := c.newFlags("unlink")
	key := keyFlag(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	d, err := load(*key)
	if err != nil {
		return err
	}
	if err := d.Unlink(c.ctx); err != nil {
		return err
	}
	if err := os.Remove(*key); err != nil {
		return fmt.Errorf("unlinked device %s, but could not remove %s: %w", clean(d.DeviceID), *key, err)
	}
	fmt.Fprintf(c.stdout, "unlinked device %s; removed %s\n", clean(d.DeviceID), *key)
	return nil
}

// auto long-polls the pending challenges and decides each one as it
// arrives, printing one line per decision, until ctx ends.
func (c *cli) auto(args []string) error {
	fs := c.newFlags("run")
	key := keyFlag(fs)
	mode := fs.String("auto", "", "decide every challenge: `approve` or deny")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("unexpected argument %q", pos[0])
	}
	if *mode != "approve" && *mode != "deny" {
		return usageErr("--auto must be approve or deny")
	}
	approve := *mode == "approve"
	d, err := load(*key)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stderr, "device %s: deciding challenges (%s) until interrupted\n", clean(d.DeviceID), *mode)

	// done holds the challenges already decided or skipped, until they expire.
	done := make(map[string]time.Time)
	backoff := time.Duration(0)
	for {
		if c.ctx.Err() != nil {
			return nil
		}
		list, err := d.Pending(c.ctx, pollWait)
		if err != nil {
			if c.ctx.Err() != nil {
				return nil
			}
			var p *deviceclient.Problem
			switch {
			case errors.As(err, &p) && (p.Status == 401 || p.Status == 403):
				return err // unlinked, retired or never valid: polling again will not help
			case errors.As(err, &p) && p.RetryAfter > 0:
				backoff = p.RetryAfter
			default:
				backoff = min(max(2*backoff, time.Second), 30*time.Second)
			}
			fmt.Fprintf(c.stderr, "list: %s (retrying in %s)\n", describe(err), backoff)
			if !sleep(c.ctx, backoff) {
				return nil
			}
			continue
		}
		backoff = 0
		now := time.Now()
		for id, exp := range done {
			if now.After(exp.Add(time.Minute)) {
				delete(done, id)
			}
		}
		fresh, transient := 0, false
		for _, ch := range list {
			if _, ok := done[ch.ID]; ok {
				continue
			}
			fresh++
			if approve && ch.NumberMatching {
				done[ch.ID] = ch.ExpiresAt
				fmt.Fprintf(c.stdout, "skipped %s %s: number matching; approve it with `approve-device approve %s --number N`\n",
					clean(ch.ID), clean(ch.Action), clean(ch.ID))
				continue
			}
			status, err := d.Decide(c.ctx, ch.ID, deviceclient.Decision{Approve: approve})
			if err != nil {
				if c.ctx.Err() != nil {
					return nil
				}
				var p *deviceclient.Problem
				if errors.As(err, &p) {
					done[ch.ID] = ch.ExpiresAt // the server has spoken; do not retry
				} else {
					transient = true // retried on the next poll
				}
				fmt.Fprintf(c.stdout, "failed %s %s: %s\n", clean(ch.ID), clean(ch.Action), describe(err))
				continue
			}
			done[ch.ID] = ch.ExpiresAt
			fmt.Fprintf(c.stdout, "%s %s %s\n", clean(status), clean(ch.ID), clean(ch.Action))
		}
		if transient || (fresh == 0 && len(list) > 0) {
			// Only challenges already handled are pending (the server
			// answers at once), or the network failed: pause, not spin.
			if !sleep(c.ctx, idlePause) {
				return nil
			}
		}
	}
}

// sleep waits for d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// clean makes a string from the server or the RP safe to print on a
// terminal: control and other non-printable characters (escape sequences,
// bidirectional overrides) are shown as \uXXXX escapes.
func clean(s string) string {
	ok := true
	for _, r := range s {
		if !unicode.IsPrint(r) {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsPrint(r) {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	return b.String()
}
