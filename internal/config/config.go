// Package config reads approvald's configuration from the environment into
// one struct and validates it, naming the setting in every error.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Config is every setting of approvald.
type Config struct {
	Addr                 string
	PublicURL            string
	DatabaseURL          string
	AllowedOrigins       []string
	TrustedProxies       []netip.Prefix
	NumberMatchingAll    bool
	NumberMatching       map[string]bool
	NumberMatchingDigits int
	MaxDevicesPerUser    int
	CodeFailuresTotal    int
	DeviceRequestsPerMin int
	LogFormat            string
	LogLevel             string

	FCMCredentialsFile string
	FCMProjectID       string
	FCMEndpoint        string
	APNsKeyFile        string
	APNsKeyID          string
	APNsTeamID         string
	APNsTopic          string
	APNsCertFile       string
	APNsEndpoint       string
	PushFullContext    bool
	PushTitles         map[string]string
	RedisURL           string
	SMTPURL            string
	MailFrom           string
	Brand              string

	// WebhookURL receives the events (see the protocol's Webhooks);
	// webhooks are off when it is empty. WebhookSecret signs them: never
	// log it (nor a Config as a whole).
	WebhookURL    string
	WebhookSecret string

	// Demo serves the demo site, phone and mailbox under /demo/ (the
	// --demo flag of serve, or APPROVALD_DEMO=1). Never in production.
	Demo bool
}

// FCMEnabled reports whether FCM is configured (credentials or a fake's endpoint).
func (c *Config) FCMEnabled() bool { return c.FCMCredentialsFile != "" || c.FCMEndpoint != "" }

// APNsEnabled reports whether APNs is configured (a .p8 key or a certificate).
func (c *Config) APNsEnabled() bool { return c.APNsKeyFile != "" || c.APNsCertFile != "" }

// Setting documents one environment variable; the README's table is
// written from Settings.
type Setting struct {
	Name, Default, Doc string
}

// Settings lists every environment variable approvald reads.
var Settings = []Setting{
	{"APPROVALD_ADDR", ":8080", "Address the HTTP server listens on."},
	{"APPROVALD_PUBLIC_URL", "http://localhost:8080", "The URL clients reach the service at: the device audience, the result-token issuer, the base of email links."},
	{"APPROVALD_DATABASE_URL", "sqlite:approvald.db", "`sqlite:PATH` (embedded, the default) or `postgres://...`."},
	{"APPROVALD_ALLOWED_ORIGINS", "the public URL's origin", "Comma-separated origins allowed to open the watch socket and to call the browser routes (CORS)."},
	{"APPROVALD_TRUSTED_PROXIES", "(none)", "Comma-separated addresses or CIDR prefixes of reverse proxies whose `X-Forwarded-For` is believed."},
	{"APPROVALD_NUMBER_MATCHING", "none", "`none`, `all`, or a comma-separated list of actions that always use number matching (`link_device` always does)."},
	{"APPROVALD_NUMBER_MATCHING_DIGITS", "3", "Digits of the matching number, 3 to 6."},
	{"APPROVALD_MAX_DEVICES_PER_USER", "1", "Active devices a user may hold; linking one more retires the oldest."},
	{"APPROVALD_CODE_FAILURES_TOTAL", "1000", "Wrong enrollment codes from all clients in 10 minutes after which every device link is refused until the count falls."},
	{"APPROVALD_DEVICE_REQUESTS_PER_MINUTE", "120", "Requests a device may make to its challenge list per minute."},
	{"APPROVALD_FCM_CREDENTIALS_FILE", "(none)", "Firebase service-account JSON; FCM is off without it (unless `APPROVALD_FCM_ENDPOINT` is set)."},
	{"APPROVALD_FCM_PROJECT_ID", "from the credentials file", "Firebase project id."},
	{"APPROVALD_FCM_ENDPOINT", "Google's servers", "Override of the FCM base URL, e.g. `http://127.0.0.1:9099/v1` for a fake; without a credentials file it then sends unauthenticated."},
	{"APPROVALD_APNS_KEY_FILE", "(none)", "APNs token-auth key (.p8); APNs is off without it or a certificate."},
	{"APPROVALD_APNS_KEY_ID", "(none)", "Key id of the .p8 key."},
	{"APPROVALD_APNS_TEAM_ID", "(none)", "Apple developer team id."},
	{"APPROVALD_APNS_TOPIC", "(none)", "The app's bundle id."},
	{"APPROVALD_APNS_CERT_FILE", "(none)", "PEM certificate and key, the alternative to a .p8 key."},
	{"APPROVALD_APNS_ENDPOINT", "production", "`production`, `development`, or a URL (a fake)."},
	{"APPROVALD_PUSH_CONTEXT", "action", "`action`: pushes name the action only; `full`: they also carry the context values (which then pass through Google's and Apple's servers)."},
	{"APPROVALD_PUSH_TITLES", "(built in)", "Per-action push titles, `action=Title` pairs separated by `;`, e.g. `login=Sign in to clicktopurchase?`."},
	{"APPROVALD_REDIS_URL", "(none)", "`redis://[:password@]host:port/db` (or `rediss://`): the broker that carries decisions between instances. Without it a single instance uses an in-process broker."},
	{"APPROVALD_SMTP_URL", "(none)", "`smtp://user:pass@host:port` (STARTTLS when offered) or `smtps://...` (TLS from the start). Without it mails go to the log and the development mailbox."},
	{"APPROVALD_MAIL_FROM", "approvald <no-reply@localhost>", "The From address of mails."},
	{"APPROVALD_BRAND", "clicktopurchase", "The name in mail subjects and pages."},
	{"APPROVALD_WEBHOOK_URL", "(none)", "Where events (`challenge.approved`, `device.linked`, ...) are POSTed, signed, retried for 24 hours. `https://` (plain `http://` only for `localhost`, `127.0.0.1` or `[::1]`); webhooks are off without it."},
	{"APPROVALD_WEBHOOK_SECRET", "(none)", "The HMAC-SHA256 key of the `Approvald-Signature` header, at least 16 bytes (use 32 random ones); required with `APPROVALD_WEBHOOK_URL`. Never logged."},
	{"APPROVALD_DEMO", "(off)", "`1` (or `approvald serve --demo`) also serves the demo site, the in-browser phone and the development mailbox under `/demo/`, with an API key made at start. Never in production: `/demo/mail` shows live email links."},
	{"APPROVALD_LOG_FORMAT", "text", "`text` or `json`."},
	{"APPROVALD_LOG_LEVEL", "info", "`debug`, `info`, `warn` or `error`."},
}

var actionRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)

// Load reads the configuration through getenv (os.Getenv in production)
// and validates it. The error lists every bad setting.
func Load(getenv func(string) string) (*Config, error) {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}
	get := func(name, def string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		return def
	}
	intIn := func(name string, def, lo, hi int) int {
		s := get(name, strconv.Itoa(def))
		n, err := strconv.Atoi(s)
		if err != nil || n < lo || n > hi {
			bad(name, "must be a whole number from %d to %d, got %q", lo, hi, s)
			return def
		}
		return n
	}
	c := &Config{
		Addr:                 get("APPROVALD_ADDR", ":8080"),
		PublicURL:            strings.TrimRight(get("APPROVALD_PUBLIC_URL", "http://localhost:8080"), "/"),
		DatabaseURL:          get("APPROVALD_DATABASE_URL", "sqlite:approvald.db"),
		NumberMatchingDigits: intIn("APPROVALD_NUMBER_MATCHING_DIGITS", 3, 3, 6),
		MaxDevicesPerUser:    intIn("APPROVALD_MAX_DEVICES_PER_USER", 1, 1, 100),
		CodeFailuresTotal:    intIn("APPROVALD_CODE_FAILURES_TOTAL", 1000, 1, 1<<30),
		DeviceRequestsPerMin: intIn("APPROVALD_DEVICE_REQUESTS_PER_MINUTE", 120, 1, 1<<20),
		LogFormat:            get("APPROVALD_LOG_FORMAT", "text"),
		LogLevel:             get("APPROVALD_LOG_LEVEL", "info"),
	}
	c.FCMCredentialsFile = get("APPROVALD_FCM_CREDENTIALS_FILE", "")
	c.FCMProjectID = get("APPROVALD_FCM_PROJECT_ID", "")
	c.FCMEndpoint = get("APPROVALD_FCM_ENDPOINT", "")
	if c.FCMEndpoint != "" {
		if u, err := url.Parse(c.FCMEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("APPROVALD_FCM_ENDPOINT", "must be an http(s) URL, got %q", c.FCMEndpoint)
		}
	}
	c.APNsKeyFile = get("APPROVALD_APNS_KEY_FILE", "")
	c.APNsKeyID = get("APPROVALD_APNS_KEY_ID", "")
	c.APNsTeamID = get("APPROVALD_APNS_TEAM_ID", "")
	c.APNsTopic = get("APPROVALD_APNS_TOPIC", "")
	c.APNsCertFile = get("APPROVALD_APNS_CERT_FILE", "")
	c.APNsEndpoint = get("APPROVALD_APNS_ENDPOINT", "production")
	if c.APNsKeyFile != "" && c.APNsCertFile != "" {
		bad("APPROVALD_APNS_CERT_FILE", "set either APPROVALD_APNS_KEY_FILE or APPROVALD_APNS_CERT_FILE, not both")
	}
	switch pc := get("APPROVALD_PUSH_CONTEXT", "action"); pc {
	case "action":
	case "full":
		c.PushFullContext = true
	default:
		bad("APPROVALD_PUSH_CONTEXT", "must be action or full, got %q", pc)
	}
	c.PushTitles = map[string]string{}
	for _, pair := range strings.Split(get("APPROVALD_PUSH_TITLES", ""), ";") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		a, title, ok := strings.Cut(pair, "=")
		a, title = strings.TrimSpace(a), strings.TrimSpace(title)
		if !ok || !actionRE.MatchString(a) || title == "" || len(title) > 100 {
			bad("APPROVALD_PUSH_TITLES", "%q is not action=Title (a title of 1 to 100 characters)", pair)
			continue
		}
		c.PushTitles[a] = title
	}
	c.RedisURL = get("APPROVALD_REDIS_URL", "")
	c.SMTPURL = get("APPROVALD_SMTP_URL", "")
	c.MailFrom = get("APPROVALD_MAIL_FROM", "approvald <no-reply@localhost>")
	c.Brand = get("APPROVALD_BRAND", "clicktopurchase")
	c.WebhookURL = get("APPROVALD_WEBHOOK_URL", "")
	c.WebhookSecret = get("APPROVALD_WEBHOOK_SECRET", "")
	if c.WebhookURL != "" {
		if err := checkWebhookURL(c.WebhookURL); err != nil {
			bad("APPROVALD_WEBHOOK_URL", "%v", err)
		}
		switch {
		case c.WebhookSecret == "":
			bad("APPROVALD_WEBHOOK_SECRET", "is required with APPROVALD_WEBHOOK_URL")
		case len(c.WebhookSecret) < 16:
			// Never the value itself in an error.
			bad("APPROVALD_WEBHOOK_SECRET", "must be at least 16 bytes long, got %d", len(c.WebhookSecret))
		}
	}
	switch d := strings.ToLower(get("APPROVALD_DEMO", "0")); d {
	case "1", "true", "yes", "on":
		c.Demo = true
	case "0", "false", "no", "off":
	default:
		bad("APPROVALD_DEMO", "must be 1 or 0, got %q", d)
	}
	if !printableLine(c.Brand) || len(c.Brand) > 64 {
		bad("APPROVALD_BRAND", "must be 1 to 64 printable characters")
	}
	if _, _, err := splitHostPort(c.Addr); err != nil {
		bad("APPROVALD_ADDR", "must be host:port or :port, got %q", c.Addr)
	}
	pub, err := url.Parse(c.PublicURL)
	if err != nil || (pub.Scheme != "http" && pub.Scheme != "https") || pub.Host == "" || pub.RawQuery != "" || pub.Fragment != "" {
		bad("APPROVALD_PUBLIC_URL", "must be an absolute http(s) URL without query, got %q", c.PublicURL)
	}
	d := c.DatabaseURL
	if !strings.HasPrefix(d, "sqlite:") && !strings.HasPrefix(d, "postgres://") && !strings.HasPrefix(d, "postgresql://") {
		bad("APPROVALD_DATABASE_URL", "must be sqlite:PATH or postgres://..., got a value of another scheme")
	} else if d == "sqlite:" {
		bad("APPROVALD_DATABASE_URL", "sqlite: needs a file path")
	}
	origins := get("APPROVALD_ALLOWED_ORIGINS", "")
	if origins == "" && pub != nil {
		origins = pub.Scheme + "://" + pub.Host
	}
	for _, o := range strings.Split(origins, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			bad("APPROVALD_ALLOWED_ORIGINS", "%q is not an origin (scheme://host[:port])", o)
			continue
		}
		c.AllowedOrigins = append(c.AllowedOrigins, strings.ToLower(u.Scheme+"://"+u.Host))
	}
	for _, p := range strings.Split(get("APPROVALD_TRUSTED_PROXIES", ""), ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if pref, err := netip.ParsePrefix(p); err == nil {
			c.TrustedProxies = append(c.TrustedProxies, pref.Masked())
		} else if a, err := netip.ParseAddr(p); err == nil {
			c.TrustedProxies = append(c.TrustedProxies, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
		} else {
			bad("APPROVALD_TRUSTED_PROXIES", "%q is neither an address nor a CIDR prefix", p)
		}
	}
	switch nm := get("APPROVALD_NUMBER_MATCHING", "none"); nm {
	case "none":
	case "all":
		c.NumberMatchingAll = true
	default:
		c.NumberMatching = map[string]bool{}
		for _, a := range strings.Split(nm, ",") {
			a = strings.TrimSpace(a)
			if !actionRE.MatchString(a) {
				bad("APPROVALD_NUMBER_MATCHING", "%q is not an action name (want none, all, or actions like login,submit_offer)", a)
				continue
			}
			c.NumberMatching[a] = true
		}
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("APPROVALD_LOG_FORMAT", "must be text or json, got %q", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("APPROVALD_LOG_LEVEL", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// checkWebhookURL accepts an absolute https URL, or http for a loopback
// host (localhost, 127.0.0.1, ::1). Its error never repeats the URL, which
// may carry credentials.
func checkWebhookURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Hostname() == "" || u.Opaque != "" {
		return errors.New("must be an absolute https URL")
	}
	if u.Fragment != "" {
		return errors.New("must not have a fragment")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		switch strings.ToLower(u.Hostname()) {
		case "localhost", "127.0.0.1", "::1":
			return nil
		}
		return fmt.Errorf("must be https (plain http only for localhost, 127.0.0.1 or [::1]), got http for host %q", u.Hostname())
	}
	return fmt.Errorf("must be an https URL, got scheme %q", u.Scheme)
}

func splitHostPort(addr string) (string, int, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", 0, errors.New("no port")
	}
	p, err := strconv.Atoi(addr[i+1:])
	if err != nil || p < 0 || p > 65535 {
		return "", 0, errors.New("bad port")
	}
	return addr[:i], p, nil
}

func printableLine(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
