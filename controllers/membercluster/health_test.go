package membercluster

import (
	"math/rand"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
)

var hc = clustersv1.HealthCheckSpec{
	Period:           &metav1.Duration{Duration: 5 * time.Second},
	Timeout:          &metav1.Duration{Duration: 5 * time.Second},
	UnhealthyAfter:   &metav1.Duration{Duration: 25 * time.Second},
	SuccessThreshold: 2,
}

func TestHealthNeedsThresholdSuccessesToBecomeHealthy(t *testing.T) {
	g := NewWithT(t)
	t0 := time.Unix(1000, 0)
	h := health{}
	h = h.observe(t0, true, "", "", hc)
	g.Expect(h.Healthy).To(BeFalse(), "one success is below the threshold of 2")
	h = h.observe(t0.Add(5*time.Second), false, "ClusterNotReachable", "x", hc)
	h = h.observe(t0.Add(10*time.Second), true, "", "", hc)
	g.Expect(h.Healthy).To(BeFalse(), "a failure resets the success count")
	h = h.observe(t0.Add(15*time.Second), true, "", "", hc)
	g.Expect(h.Healthy).To(BeTrue())
}

func TestHealthTurnsUnhealthyOnlyAfterUnhealthyAfter(t *testing.T) {
	g := NewWithT(t)
	t0 := time.Unix(1000, 0)
	h := health{Healthy: true, LastSuccess: t0}
	for s := 5; s < 25; s += 5 {
		h = h.observe(t0.Add(time.Duration(s)*time.Second), false, "ClusterNotReachable", "refused", hc)
		g.Expect(h.Healthy).To(BeTrue(), "at %ds", s)
	}
	g.Expect(h.ConsecutiveFailures).To(Equal(int32(4)))
	h = h.observe(t0.Add(25*time.Second), false, "ClusterNotReachable", "refused", hc)
	g.Expect(h.Healthy).To(BeFalse())
	g.Expect(h.LastFailureReason).To(Equal("ClusterNotReachable"))
}

// With 20% of probes failing at random and probes scheduled by nextProbeIn, a healthy member never
// turns unhealthy over a long run (about 58 days of 5 s probes).
func TestHealthDoesNotFlapUnderRandomLoss(t *testing.T) {
	g := NewWithT(t)
	rng := rand.New(rand.NewSource(42))
	now := time.Unix(1000, 0)
	h := health{Healthy: true, LastSuccess: now}
	transitions := 0
	for i := 0; i < 1_000_000; i++ {
		now = now.Add(h.nextProbeIn(hc))
		prev := h.Healthy
		h = h.observe(now, rng.Float64() >= 0.2, "ProbeFailed", "", hc)
		if h.Healthy != prev {
			transitions++
		}
	}
	g.Expect(transitions).To(Equal(0))
}

// Without fast re-probing the same loss does flap: proves the test above can fail.
func TestHealthWouldFlapAtAFixedPeriod(t *testing.T) {
	g := NewWithT(t)
	rng := rand.New(rand.NewSource(42))
	now := time.Unix(1000, 0)
	h := health{Healthy: true, LastSuccess: now}
	transitions := 0
	for i := 0; i < 1_000_000; i++ {
		now = now.Add(hc.GetPeriod())
		prev := h.Healthy
		h = h.observe(now, rng.Float64() >= 0.2, "ProbeFailed", "", hc)
		if h.Healthy != prev {
			transitions++
		}
	}
	g.Expect(transitions).To(BeNumerically(">", 0))
}

// A dead member is detected at the end of its unhealthyAfter window: the last retry is scheduled
// at the window's end, not up to a retry interval after it. Also with windows that are not a
// multiple of the retry interval.
func TestHealthDetectsADeadMemberPromptly(t *testing.T) {
	for _, window := range []time.Duration{hc.GetUnhealthyAfter(), 15 * time.Second, 15*time.Second + 300*time.Millisecond, 7 * time.Second} {
		g := NewWithT(t)
		spec := hc
		spec.UnhealthyAfter = &metav1.Duration{Duration: window}
		now := time.Unix(1000, 0)
		h := health{Healthy: true, LastSuccess: now}
		dead := now
		for h.Healthy {
			now = h.nextProbeAt(spec, now)
			h = h.observe(now, false, "ClusterNotReachable", "", spec)
		}
		g.Expect(now.Sub(dead)).To(Equal(window))
	}
}

func TestSeedHealthGivesAHealthyMemberAFullWindow(t *testing.T) {
	g := NewWithT(t)
	now := time.Unix(5000, 0)
	old := metav1.NewTime(now.Add(-time.Hour))
	st := &clustersv1.MemberClusterStatus{
		LastSuccessfulProbeTime: &old,
		Conditions:              []metav1.Condition{{Type: clustersv1.ReachableCondition, Status: metav1.ConditionTrue}},
	}
	h := seedHealth(now, st)
	g.Expect(h.Healthy).To(BeTrue())
	h = h.observe(now.Add(5*time.Second), false, "ClusterNotReachable", "", hc)
	g.Expect(h.Healthy).To(BeTrue(), "a restart must not flip Ready from a stale lastSuccessfulProbeTime")
}

func TestMembersThatStayDownBackOff(t *testing.T) {
	g := NewWithT(t)
	hc := clustersv1.HealthCheckSpec{Period: &metav1.Duration{Duration: time.Second}}
	h := health{}
	var delays []time.Duration
	for i := 0; i < 12; i++ {
		h = h.observe(time.Now(), false, "ClusterNotReachable", "down", hc)
		delays = append(delays, h.nextProbeIn(hc))
	}
	g.Expect(delays[:3]).To(HaveEach(time.Second))
	g.Expect(delays[3]).To(Equal(2 * time.Second))
	g.Expect(delays[4]).To(Equal(4 * time.Second))
	g.Expect(delays[11]).To(Equal(maxDownBackoff))
	// One success (recovering) is re-probed quickly again.
	h = h.observe(time.Now(), true, "", "", hc)
	g.Expect(h.nextProbeIn(hc)).To(Equal(retryInterval(hc)))
}
