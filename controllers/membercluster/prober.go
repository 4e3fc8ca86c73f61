package membercluster

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
)

// The prober probes each active member on its own schedule: a timer per member (no goroutine
// while it waits), one probe in flight per member, at most MaxConcurrentProbes in flight overall.
// A hung member holds only its own probe, never a reconcile worker. After each probe it folds the
// result into the member's health and requeues the MemberCluster only when something that status
// shows changed (or the status heartbeat is due), so a quiet fleet costs no reconciles.

// activate points the prober at the member's current accessor and settings and makes sure a
// probe is scheduled.
func (r *Reconciler) activate(name string, st *memberState, acc *clustercache.Accessor, hc clustersv1.HealthCheckSpec) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.acc, st.hc, st.active = acc, hc, true
	if st.inFlight || st.timer != nil {
		return
	}
	delay := st.health.nextProbeIn(hc) - r.Clock.Since(st.lastStart)
	st.timer = time.AfterFunc(max(delay, 0), func() { r.runProbe(name, st) })
}

// deactivate stops probing the member.
func deactivate(st *memberState) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.active = false
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
}

func (r *Reconciler) runProbe(name string, st *memberState) {
	st.mu.Lock()
	st.timer = nil
	if !st.active || st.inFlight || r.ctx.Err() != nil {
		st.mu.Unlock()
		return
	}
	acc, hc := st.acc, st.hc
	st.inFlight = true
	st.lastStart = r.Clock.Now()
	timeout := probeTimeout(st.health, hc, st.lastStart)
	st.mu.Unlock()

	select {
	case r.probeSlots <- struct{}{}:
	case <-r.ctx.Done():
		return
	}
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	res := acc.Probe(ctx)
	cancel()
	<-r.probeSlots

	msg := ""
	if res.Err != nil {
		msg = res.Err.Error()
		probesTotal.WithLabelValues(res.Reason).Inc()
	} else {
		probesTotal.WithLabelValues("success").Inc()
	}

	st.mu.Lock()
	prev, prevRes := st.health, st.latest
	st.health = st.health.observe(r.Clock.Now(), res.Err == nil, res.Reason, msg, hc)
	st.latest = &res
	st.inFlight = false
	h := st.health
	publish := visibleChange(prev, h) || resultChanged(prevRes, &res) || r.Clock.Since(st.lastPublished) >= r.StatusHeartbeat
	if st.active {
		delay := h.nextProbeIn(hc) - r.Clock.Since(st.lastStart)
		st.timer = time.AfterFunc(max(delay, 0), func() { r.runProbe(name, st) })
	}
	st.mu.Unlock()

	r.log.V(1).Info("Probed member", "member", name, "ok", res.Err == nil, "reason", res.Reason,
		"latency", res.Latency, "healthy", h.Healthy, "failures", h.ConsecutiveFailures, "publish", publish)
	if !publish {
		return
	}
	select {
	case r.probeDone <- event.GenericEvent{Object: &clustersv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: name}}}:
	case <-r.ctx.Done():
	}
}

// minProbeTimeout is the shortest deadline a probe gets.
const minProbeTimeout = 200 * time.Millisecond

// probeTimeout is the probe's timeout, cut short for a healthy member when its unhealthyAfter
// window ends sooner: a probe still running then has not succeeded, so waiting out a long timeout
// would only delay detecting a hung member (to unhealthyAfter + timeout).
func probeTimeout(h health, hc clustersv1.HealthCheckSpec, now time.Time) time.Duration {
	timeout := hc.GetTimeout()
	if !h.Healthy || h.LastSuccess.IsZero() {
		return timeout
	}
	if left := hc.GetUnhealthyAfter() - now.Sub(h.LastSuccess); left < timeout {
		timeout = max(left, minProbeTimeout)
	}
	return timeout
}

// visibleChange tells whether the health verdict changed in a way the conditions show.
func visibleChange(prev, cur health) bool {
	switch {
	case prev.Healthy != cur.Healthy,
		(prev.ConsecutiveFailures > 0) != (cur.ConsecutiveFailures > 0),
		prev.LastFailureReason != cur.LastFailureReason:
		return true
	case !cur.Healthy && (prev.ConsecutiveSuccesses != cur.ConsecutiveSuccesses || prev.LastFailureMsg != cur.LastFailureMsg):
		return true
	}
	return false
}

// resultChanged tells whether a probe found different data than the one before.
func resultChanged(prev, cur *clustercache.ProbeResult) bool {
	if prev == nil || (prev.Err == nil) != (cur.Err == nil) {
		return true
	}
	if cur.Err != nil {
		return false
	}
	return prev.Version != cur.Version || prev.Platform != cur.Platform || prev.ClusterID != cur.ClusterID ||
		prev.Nodes != cur.Nodes || !sameResources(prev.Capacity, cur.Capacity) || !sameResources(prev.Allocatable, cur.Allocatable)
}

func sameResources(a, b corev1.ResourceList) bool {
	if len(a) != len(b) {
		return false
	}
	for name, qa := range a {
		qb, ok := b[name]
		if !ok || qa.Cmp(qb) != 0 {
			return false
		}
	}
	return true
}
