package membercluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	a := &clustercache.InventoryResult{Version: "v1", Nodes: clustersv1.NodeSummary{Total: 1, Ready: 1}, Capacity: q("4")}
	same := &clustercache.InventoryResult{Version: "v1", Nodes: clustersv1.NodeSummary{Total: 1, Ready: 1}, Capacity: q("4000m")}
	g.Expect(inventoryChanged(nil, a)).To(BeTrue())
	g.Expect(inventoryChanged(a, same)).To(BeFalse(), "equal quantities in other formats")
	g.Expect(inventoryChanged(a, &clustercache.InventoryResult{Version: "v2", Nodes: a.Nodes, Capacity: q("4")})).To(BeTrue())
	g.Expect(inventoryChanged(a, &clustercache.InventoryResult{Version: "v1", Nodes: clustersv1.NodeSummary{Total: 2, Ready: 1}, Capacity: q("4")})).To(BeTrue())
	g.Expect(inventoryChanged(a, &clustercache.InventoryResult{Version: "v1", Nodes: a.Nodes, Capacity: q("8")})).To(BeTrue())
}

func TestLivenessChanged(t *testing.T) {
	g := NewWithT(t)
	ok := &clustercache.LivenessResult{ClusterID: "x"}
	g.Expect(livenessChanged(nil, ok)).To(BeTrue())
	g.Expect(livenessChanged(ok, &clustercache.LivenessResult{ClusterID: "x"})).To(BeFalse())
	g.Expect(livenessChanged(ok, &clustercache.LivenessResult{ClusterID: "y"})).To(BeTrue())
	failed := &clustercache.LivenessResult{Err: errors.New("x")}
	g.Expect(livenessChanged(ok, failed)).To(BeTrue())
	g.Expect(livenessChanged(failed, &clustercache.LivenessResult{Err: errors.New("y")})).To(BeFalse())
}

// A member whose probes fail takes slots from its own small pool, and a probe that has held a
// slot for slotHold gives it back, so hung members cannot keep healthy ones waiting.
func TestProbeSlotsKeepFailingMembersInTheirOwnPool(t *testing.T) {
	g := NewWithT(t)
	p := newProbeSlots(5)
	g.Expect(cap(p.failing)).To(Equal(1))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	rel, ok := p.acquire(ctx, true)
	g.Expect(ok).To(BeTrue())
	_, ok = p.acquire(ctx, true)
	g.Expect(ok).To(BeFalse(), "the failing pool is full")
	var healthy []func()
	for i := 0; i < 5; i++ {
		r, ok := p.acquire(context.Background(), false)
		g.Expect(ok).To(BeTrue(), "healthy members never wait behind failing ones")
		healthy = append(healthy, r)
	}
	rel()
	rel() // releasing twice gives back one slot
	g.Expect(len(p.failing)).To(Equal(0))
	for _, r := range healthy {
		r()
	}
	g.Expect(len(p.healthy)).To(Equal(0))
}

func TestSameHealthCheck(t *testing.T) {
	g := NewWithT(t)
	g.Expect(sameHealthCheck(clustersv1.HealthCheckSpec{}, clustersv1.HealthCheckSpec{Period: &metav1.Duration{Duration: 5 * time.Second}})).To(BeTrue(), "defaults")
	g.Expect(sameHealthCheck(clustersv1.HealthCheckSpec{}, clustersv1.HealthCheckSpec{Period: &metav1.Duration{Duration: time.Second}})).To(BeFalse())
	g.Expect(sameHealthCheck(clustersv1.HealthCheckSpec{}, clustersv1.HealthCheckSpec{InventoryInterval: &metav1.Duration{Duration: time.Hour}})).To(BeFalse())
}

func TestTruncateNote(t *testing.T) {
	g := NewWithT(t)
	g.Expect(truncateNote("short")).To(Equal("short"))
	long := strings.Repeat("é", 2000)
	out := truncateNote(long)
	g.Expect(len(out)).To(BeNumerically("<=", maxEventNote))
	g.Expect(utf8.ValidString(out)).To(BeTrue())
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
