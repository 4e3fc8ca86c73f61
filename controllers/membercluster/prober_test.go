package membercluster

import (
	"errors"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
)

func TestVisibleChange(t *testing.T) {
	g := NewWithT(t)
	healthy := health{Healthy: true, ConsecutiveSuccesses: 2}
	g.Expect(visibleChange(healthy, health{Healthy: true, ConsecutiveSuccesses: 3})).To(BeFalse(), "another success on a healthy member")
	g.Expect(visibleChange(healthy, health{Healthy: true, ConsecutiveFailures: 1, LastFailureReason: "ClusterNotReachable"})).To(BeTrue(), "turned suspect")
	suspect := health{Healthy: true, ConsecutiveFailures: 1, LastFailureReason: "ClusterNotReachable"}
	g.Expect(visibleChange(suspect, health{Healthy: true, ConsecutiveFailures: 2, LastFailureReason: "ClusterNotReachable"})).To(BeFalse(), "still suspect, same reason")
	g.Expect(visibleChange(suspect, health{Healthy: false, ConsecutiveFailures: 3, LastFailureReason: "ClusterNotReachable"})).To(BeTrue(), "verdict flipped")
	g.Expect(visibleChange(health{}, health{ConsecutiveSuccesses: 1})).To(BeTrue(), "attaching progress is shown")
}

func TestResultChanged(t *testing.T) {
	g := NewWithT(t)
	q := func(s string) corev1.ResourceList {
		return corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(s)}
	}
	a := &clustercache.ProbeResult{Version: "v1", ClusterID: "x", Nodes: clustersv1.NodeSummary{Total: 1, Ready: 1}, Capacity: q("4")}
	same := &clustercache.ProbeResult{Version: "v1", ClusterID: "x", Nodes: clustersv1.NodeSummary{Total: 1, Ready: 1}, Capacity: q("4000m")}
	g.Expect(resultChanged(nil, a)).To(BeTrue())
	g.Expect(resultChanged(a, same)).To(BeFalse(), "equal quantities in other formats")
	g.Expect(resultChanged(a, &clustercache.ProbeResult{Version: "v2", ClusterID: "x", Nodes: a.Nodes, Capacity: q("4")})).To(BeTrue())
	g.Expect(resultChanged(a, &clustercache.ProbeResult{Version: "v1", ClusterID: "y", Nodes: a.Nodes, Capacity: q("4")})).To(BeTrue())
	g.Expect(resultChanged(a, &clustercache.ProbeResult{Version: "v1", ClusterID: "x", Nodes: clustersv1.NodeSummary{Total: 2, Ready: 1}, Capacity: q("4")})).To(BeTrue())
	g.Expect(resultChanged(a, &clustercache.ProbeResult{Version: "v1", ClusterID: "x", Nodes: a.Nodes, Capacity: q("8")})).To(BeTrue())
	failed := &clustercache.ProbeResult{Err: errors.New("x")}
	g.Expect(resultChanged(a, failed)).To(BeTrue())
	g.Expect(resultChanged(failed, &clustercache.ProbeResult{Err: errors.New("y")})).To(BeFalse())
}

func TestProbeTimeoutEndsWithTheUnhealthyWindow(t *testing.T) {
	g := NewWithT(t)
	t0 := time.Unix(1000, 0)
	h := health{Healthy: true, LastSuccess: t0}
	g.Expect(probeTimeout(h, hc, t0.Add(5*time.Second))).To(Equal(5*time.Second), "plenty of window left")
	g.Expect(probeTimeout(h, hc, t0.Add(22*time.Second))).To(Equal(3 * time.Second))
	g.Expect(probeTimeout(h, hc, t0.Add(26*time.Second))).To(Equal(minProbeTimeout))
	g.Expect(probeTimeout(health{}, hc, t0.Add(time.Hour))).To(Equal(5*time.Second), "an unhealthy member gets the full timeout")
}
