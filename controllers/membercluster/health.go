package membercluster

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
)

// maxConsecutiveSuccesses caps the success counter so a healthy member's status stays still.
const maxConsecutiveSuccesses = 100

// health is the probe history of one member, kept in memory between reconciles (and seeded from
// status after a manager restart). It turns noisy probe results into a Ready verdict that does not
// flap: healthy → unhealthy only once no probe has succeeded for unhealthyAfter; unhealthy →
// healthy only after successThreshold consecutive successes.
type health struct {
	Healthy              bool
	LastProbe            time.Time
	LastSuccess          time.Time
	ConsecutiveFailures  int32
	ConsecutiveSuccesses int32
	// LastFailureReason is the reason of the most recent failed probe.
	LastFailureReason string
	LastFailureMsg    string
}

// observe folds one probe result into the history.
func (h health) observe(now time.Time, ok bool, reason, msg string, hc clustersv1.HealthCheckSpec) health {
	h.LastProbe = now
	if ok {
		h.LastSuccess = now
		h.ConsecutiveFailures = 0
		if h.ConsecutiveSuccesses < maxConsecutiveSuccesses {
			h.ConsecutiveSuccesses++
		}
		if !h.Healthy && h.ConsecutiveSuccesses >= hc.GetSuccessThreshold() {
			h.Healthy = true
		}
		return h
	}
	h.ConsecutiveSuccesses = 0
	h.ConsecutiveFailures++
	h.LastFailureReason, h.LastFailureMsg = reason, msg
	if h.Healthy && now.Sub(h.LastSuccess) >= hc.GetUnhealthyAfter() {
		h.Healthy = false
	}
	return h
}

// seedHealth rebuilds the history from status after a manager restart. A member that was healthy
// gets a full unhealthyAfter window from now, so a restart never flips Ready on its own.
func seedHealth(now time.Time, st *clustersv1.MemberClusterStatus) health {
	h := health{
		ConsecutiveFailures:  st.ConsecutiveFailures,
		ConsecutiveSuccesses: st.ConsecutiveSuccesses,
	}
	if st.LastProbeTime != nil {
		h.LastProbe = st.LastProbeTime.Time
	}
	if st.LastSuccessfulProbeTime != nil {
		h.LastSuccess = st.LastSuccessfulProbeTime.Time
	}
	for _, c := range st.Conditions {
		if c.Type == clustersv1.ReachableCondition && c.Status == "True" {
			h.Healthy = true
			h.LastSuccess = now
		}
		if c.Type == clustersv1.ReachableCondition && c.Status == "False" {
			h.LastFailureReason, h.LastFailureMsg = c.Reason, c.Message
		}
	}
	return h
}

// minRetryInterval and maxRetryInterval bound how fast a suspect member is re-probed.
const (
	minRetryInterval = 200 * time.Millisecond
	maxRetryInterval = 5 * time.Second
)

// retryInterval is the re-probe delay while a member is suspect (healthy with recent failures) or
// recovering (unhealthy with recent successes): period/5, at least 200ms. Re-probing a suspect
// member fast puts about 20 probes instead of 5 into the unhealthyAfter window, so random loss
// cannot fake an outage (20% loss: 0.2^20 instead of 0.2^5), and a real outage is confirmed sooner.
func retryInterval(hc clustersv1.HealthCheckSpec) time.Duration {
	return min(max(hc.GetPeriod()/5, minRetryInterval), maxRetryInterval)
}

// maxDownBackoff bounds how far the probes of a member that stays down are spread out.
const maxDownBackoff = 30 * time.Second

// nextProbeIn is the delay before the next probe, counted from the start of the last one. A member
// that stays down backs off: after 3 failures in a row the period doubles per further failure,
// up to 30 s (or the period, if longer), so a large outage costs few probes and slots while a
// member that comes back is still seen within 30 s.
func (h health) nextProbeIn(hc clustersv1.HealthCheckSpec) time.Duration {
	suspect := h.Healthy && h.ConsecutiveFailures > 0
	recovering := !h.Healthy && h.ConsecutiveSuccesses > 0
	if suspect || recovering {
		return retryInterval(hc)
	}
	period := hc.GetPeriod()
	if !h.Healthy && h.ConsecutiveFailures > 3 {
		limit := max(period, maxDownBackoff)
		d := period << min(h.ConsecutiveFailures-3, 6)
		return min(d, limit)
	}
	return period
}

// nextProbeAt is when the probe after one that started at lastStart is due: lastStart plus
// nextProbeIn, but for a suspect member no later than the end of its unhealthyAfter window, so
// that an outage is confirmed at the window's end and not up to a retry interval later.
func (h health) nextProbeAt(hc clustersv1.HealthCheckSpec, lastStart time.Time) time.Time {
	next := lastStart.Add(h.nextProbeIn(hc))
	if h.Healthy && h.ConsecutiveFailures > 0 && !h.LastSuccess.IsZero() {
		if end := h.LastSuccess.Add(hc.GetUnhealthyAfter()); end.After(lastStart) && end.Before(next) {
			next = end
		}
	}
	return next
}

func timePtr(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t)
	return &mt
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "the member was attached"
	}
	return t.UTC().Format(time.RFC3339)
}
