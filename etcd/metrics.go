package etcd

import "github.com/prometheus/client_golang/prometheus"

// Collector exports the client's state to Prometheus: the applied
// endpoints, whether etcd answers, reconnections, and how reads and puts
// were batched. It reads the client when scraped and holds nothing of its
// own.
func (c *EtcdClient) Collector() prometheus.Collector { return clientCollector{c} }

type clientCollector struct{ c *EtcdClient }

var (
	descEndpoints = prometheus.NewDesc("endpointd_endpoints",
		"Endpoints in the applied set.", nil, nil)
	descUp = prometheus.NewDesc("endpointd_etcd_up",
		"1 if at least one etcd member answered the latest health probe.", nil, nil)
	descReconnects = prometheus.NewDesc("endpointd_etcd_reconnects_total",
		"Times the connection to etcd was re-established after every member was unreachable.", nil, nil)
	descReadBatches = prometheus.NewDesc("endpointd_etcd_read_batches_total",
		"Read-only transactions that carried two or more concurrent linearizable reads.", nil, nil)
	descBatchedReads = prometheus.NewDesc("endpointd_etcd_batched_reads_total",
		"Linearizable reads sent to etcd inside a batch rather than alone.", nil, nil)
	descWriteBatches = prometheus.NewDesc("endpointd_etcd_write_batches_total",
		"Transactions that carried two or more concurrent plain puts.", nil, nil)
	descBatchedWrites = prometheus.NewDesc("endpointd_etcd_batched_writes_total",
		"Plain puts sent to etcd inside a batch rather than alone.", nil, nil)
)

func (clientCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEndpoints, descUp, descReconnects, descReadBatches, descBatchedReads,
		descWriteBatches, descBatchedWrites} {
		ch <- d
	}
}

func (cc clientCollector) Collect(ch chan<- prometheus.Metric) {
	h := cc.c.Health()
	up := 0.0
	if h.Connected {
		up = 1
	}
	reads, writes := cc.c.ReadStats(), cc.c.WriteStats()
	for _, m := range []struct {
		d *prometheus.Desc
		t prometheus.ValueType
		v float64
	}{
		{descEndpoints, prometheus.GaugeValue, float64(len(cc.c.Endpoints()))},
		{descUp, prometheus.GaugeValue, up},
		{descReconnects, prometheus.CounterValue, float64(h.Reconnects)},
		{descReadBatches, prometheus.CounterValue, float64(reads.Batches)},
		{descBatchedReads, prometheus.CounterValue, float64(reads.Reads)},
		{descWriteBatches, prometheus.CounterValue, float64(writes.Batches)},
		{descBatchedWrites, prometheus.CounterValue, float64(writes.Puts)},
	} {
		ch <- prometheus.MustNewConstMetric(m.d, m.t, m.v)
	}
}
