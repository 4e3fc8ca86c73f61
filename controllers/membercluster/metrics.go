package membercluster

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	readyGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "paddock_membercluster_ready",
		Help: "1 when the MemberCluster is Ready, 0 otherwise.",
	}, []string{"member"})
	probeLatency = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "paddock_membercluster_probe_duration_seconds",
		Help: "Duration of the last health probe of the member.",
	}, []string{"member"})
	nodesGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "paddock_membercluster_nodes",
		Help: "Nodes of the member by state (total, ready).",
	}, []string{"member", "state"})
	probesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "paddock_membercluster_probes_total",
		Help: "Health probes of all members by result (success, or the failure reason).",
	}, []string{"result"})
)

func init() {
	metrics.Registry.MustRegister(readyGauge, probeLatency, nodesGauge, probesTotal)
}

func forgetMetrics(member string) {
	readyGauge.DeleteLabelValues(member)
	probeLatency.DeleteLabelValues(member)
	nodesGauge.DeleteLabelValues(member, "total")
	nodesGauge.DeleteLabelValues(member, "ready")
}
