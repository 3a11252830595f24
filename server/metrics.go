package server

import (
	"log"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's share of API.md's metrics; the agent registers
// the config and etcd ones on the same registry.
type metrics struct {
	requests *prometheus.CounterVec
	duration prometheus.Histogram

	// counters holds requests' children by method and status code, looked
	// up once: WithLabelValues hashes its labels and takes a lock on every
	// call, and formatting the code allocates — per request, for a counter
	// that is nearly always one of a handful.
	counters [len(methodLabels)][600]atomic.Pointer[prometheus.Counter]
}

// methodLabels are the method label's values; anything else is "other", so
// that the label's cardinality stays bounded.
var methodLabels = [...]string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodHead, http.MethodPost, "other"}

func newMetrics(reg prometheus.Registerer, watchers *atomic.Int64) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "endpointd_http_requests_total",
			Help: "HTTP requests served on the socket, by method and status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "endpointd_http_request_duration_seconds",
			Help:    "Time to serve an HTTP request (a watch: its whole life).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	reg.MustRegister(m.requests, m.duration, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "endpointd_watchers",
		Help: "Watch streams open on the socket.",
	}, func() float64 { return float64(watchers.Load()) }))
	return m
}

func (m *metrics) observe(method string, code int, d time.Duration) {
	mi := len(methodLabels) - 1
	for i, l := range methodLabels[:mi] {
		if l == method {
			mi = i
			break
		}
	}
	m.duration.Observe(d.Seconds())
	if code < 0 || code >= len(m.counters[mi]) {
		m.requests.WithLabelValues(methodLabels[mi], strconv.Itoa(code)).Inc()
		return
	}
	slot := &m.counters[mi][code]
	c := slot.Load()
	if c == nil {
		counter := m.requests.WithLabelValues(methodLabels[mi], strconv.Itoa(code))
		slot.CompareAndSwap(nil, &counter)
		c = slot.Load()
	}
	(*c).Inc()
}

// slogLogger adapts the agent's logger for net/http's error log.
func slogLogger(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelWarn)
}

// slogPrinter adapts the agent's logger for promhttp's error log.
type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.l.Error("metrics", "error", v) }
