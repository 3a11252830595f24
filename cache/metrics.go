package cache

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the cache's own; the age of each copy is read when scraped.
type metrics struct {
	stale          *prometheus.CounterVec
	persistErrors  prometheus.Counter
	loadErrors     prometheus.Counter
	persistSeconds prometheus.Histogram
}

func newMetrics(c *Cache, reg prometheus.Registerer) *metrics {
	m := &metrics{
		stale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "endpointd_cache_stale_answers_total",
			Help: "Reads answered from a cached copy because the request asked for it (stale) or etcd could not answer (stale_if_error).",
		}, []string{"reason"}),
		persistErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "endpointd_cache_persist_errors_total",
			Help: "Failed writes of a cached copy to cache.dir; the previous copy on disk stays.",
		}),
		loadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "endpointd_cache_load_errors_total",
			Help: "Persisted copies discarded at start as unreadable, corrupt, or of another format version.",
		}),
		persistSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "endpointd_cache_persist_duration_seconds",
			Help:    "Time to write one cached copy to disk, fsyncs included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
	}
	for _, r := range []string{"stale", "stale_if_error"} {
		m.stale.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.stale, m.persistErrors, m.loadErrors, m.persistSeconds, ageCollector{c})
	}
	return m
}

var (
	ageDesc = prometheus.NewDesc("endpointd_cache_age_seconds",
		"Seconds since the prefix's copy was last confirmed current by its watch; absent while there is no copy.",
		[]string{"prefix"}, nil)
	confirmedDesc = prometheus.NewDesc("endpointd_cache_confirmed",
		"1 while the prefix's copy is confirmed (its watch has caught up with etcd), else 0.",
		[]string{"prefix"}, nil)
)

// ageCollector reports each copy's age and confirmation when scraped.
type ageCollector struct{ c *Cache }

func (a ageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- ageDesc; ch <- confirmedDesc }

func (a ageCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range a.c.Status() {
		confirmed := 0.0
		if s.Confirmed {
			confirmed = 1
		}
		ch <- prometheus.MustNewConstMetric(confirmedDesc, prometheus.GaugeValue, confirmed, s.Prefix)
		if s.Present {
			ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, s.Age.Seconds(), s.Prefix)
		}
	}
}
