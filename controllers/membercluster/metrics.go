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
		Help: "Liveness probes of all members by result (success, or the failure reason).",
	}, []string{"result"})
	inventoryTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "paddock_membercluster_inventory_reads_total",
		Help: "Inventory reads (version, nodes, capacity) of all members by result (success, or the failure reason).",
	}, []string{"result"})
	probesDiscarded = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "paddock_membercluster_probes_discarded_total",
		Help: "Probe results discarded because the member's connection was replaced while they ran.",
	})
	slotWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "paddock_membercluster_probe_slot_wait_seconds",
		Help:    "How long liveness probes waited for a probe slot (--max-concurrent-probes).",
		Buckets: []float64{0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10},
	})
	lastProbeGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "paddock_membercluster_last_probe_timestamp_seconds",
		Help: "Unix time of the member's last completed liveness probe (status.lastProbeTime is written only about every 10 minutes).",
	}, []string{"member"})
	conflictsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "paddock_membercluster_write_conflicts_total",
		Help: "Finalizer or status patches refused because the MemberCluster changed since it was read (retried shortly, not as errors).",
	})
	lastSuccessGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "paddock_membercluster_last_successful_probe_timestamp_seconds",
		Help: "Unix time of the member's last successful liveness probe.",
	}, []string{"member"})
)

func init() {
	metrics.Registry.MustRegister(readyGauge, probeLatency, nodesGauge, probesTotal, inventoryTotal, probesDiscarded, slotWait, lastProbeGauge, lastSuccessGauge, conflictsTotal)
}

func forgetMetrics(member string) {
	readyGauge.DeleteLabelValues(member)
	probeLatency.DeleteLabelValues(member)
	lastProbeGauge.DeleteLabelValues(member)
	lastSuccessGauge.DeleteLabelValues(member)
	nodesGauge.DeleteLabelValues(member, "total")
	nodesGauge.DeleteLabelValues(member, "ready")
}
