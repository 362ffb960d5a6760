// Package metrics keeps approvald's Prometheus metrics in a registry of
// its own and serves them in the text format at /metrics.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics implements approval.Metrics and the HTTP observer.
type Metrics struct {
	reg        *prometheus.Registry
	created    *prometheus.CounterVec
	decided    *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	push       *prometheus.CounterVec
	email      *prometheus.CounterVec
	requests   *prometheus.CounterVec
	reqLatency *prometheus.HistogramVec
}

// New registers every metric. sockets and reconnects are read at scrape
// time (nil for none).
func New(sockets func() int, reconnects func() uint64) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.created = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "approvald_challenges_created_total",
		Help: "Challenges created, by action."}, []string{"action"})
	m.decided = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "approvald_challenges_final_total",
		Help: "Challenges that reached a final status, by action, status and method."}, []string{"action", "status", "method"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "approvald_decision_seconds",
		Help:    "Time from a challenge's creation to its decision, by method.",
		Buckets: []float64{1, 2, 3, 5, 8, 13, 21, 34, 55, 90, 180, 300, 600}}, []string{"method"})
	m.push = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "approvald_push_total",
		Help: "Push attempts, by provider, kind and outcome."}, []string{"provider", "kind", "outcome"})
	m.email = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "approvald_email_total",
		Help: "Mails, by kind and outcome."}, []string{"kind", "outcome"})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "approvald_http_requests_total",
		Help: "HTTP requests, by route and status."}, []string{"route", "status"})
	m.reqLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "approvald_http_request_seconds",
		Help: "HTTP request duration, by route.", Buckets: prometheus.DefBuckets}, []string{"route"})
	m.reg.MustRegister(m.created, m.decided, m.latency, m.push, m.email, m.requests, m.reqLatency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if sockets != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "approvald_watch_sockets",
			Help: "Open watch sockets."}, func() float64 { return float64(sockets()) }))
	}
	if reconnects != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "approvald_broker_reconnects_total",
			Help: "Times the broker reconnected after losing its connection."}, func() float64 { return float64(reconnects()) }))
	}
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// ChallengeCreated counts a new challenge.
func (m *Metrics) ChallengeCreated(action string) { m.created.WithLabelValues(action).Inc() }

// ChallengeFinal counts a final status and, for a decision, its latency.
func (m *Metrics) ChallengeFinal(action, status, method string, sinceCreated time.Duration) {
	if method == "" {
		method = "none"
	}
	m.decided.WithLabelValues(action, status, method).Inc()
	if status == "approved" || status == "denied" {
		m.latency.WithLabelValues(method).Observe(sinceCreated.Seconds())
	}
}

// Push counts one push attempt.
func (m *Metrics) Push(provider, kind, outcome string) {
	m.push.WithLabelValues(provider, kind, outcome).Inc()
}

// Email counts one mail's outcome.
func (m *Metrics) Email(kind, outcome string) { m.email.WithLabelValues(kind, outcome).Inc() }

// Request counts one HTTP request (route is the pattern, never the path).
func (m *Metrics) Request(route string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.reqLatency.WithLabelValues(route).Observe(d.Seconds())
}
