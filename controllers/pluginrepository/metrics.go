package pluginrepository

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	readyGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "paddock_pluginrepository_ready",
		Help: "1 when the PluginRepository is Ready, 0 otherwise.",
	}, []string{"repository"})
	fetchesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "paddock_pluginrepository_fetches_total",
		Help: "Index fetches (helm) and registry checks (oci) by result: unchanged, updated, or the failure reason.",
	}, []string{"repository", "result"})
	fetchDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "paddock_pluginrepository_fetch_duration_seconds",
		Help:    "Duration of index fetches and registry checks.",
		Buckets: []float64{0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60},
	}, []string{"repository"})
	indexBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "paddock_pluginrepository_index_bytes",
		Help: "Size of the repository's last good index.",
	}, []string{"repository"})
	indexParses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "paddock_pluginrepository_index_parses_total",
		Help: "Indexes parsed (a fetch of an unchanged index parses nothing).",
	}, []string{"repository"})
)

func init() {
	metrics.Registry.MustRegister(readyGauge, fetchesTotal, fetchDuration, indexBytes, indexParses)
}

func forgetMetrics(name string) {
	readyGauge.DeleteLabelValues(name)
	indexBytes.DeleteLabelValues(name)
	fetchDuration.DeleteLabelValues(name)
	fetchesTotal.DeletePartialMatch(prometheus.Labels{"repository": name})
	indexParses.DeleteLabelValues(name)
}
