package pluginrelease

import (
	"slices"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// A PluginRelease with thousands of targets must still fit in one object (etcd takes about
// 1.5 MiB, spec included). What grows without bound is the text per target: its message and its
// drift report. Beyond fitFreeClusters targets those share a fixed budget, so that 2,000 targets
// that all fail with long messages and drift in ten objects still fit.
//
// The budget depends only on the number of targets, never on the texts' measured size: the same
// report trims the same way on every pass, so a trimmed drift report compares equal to itself
// and raises no new DriftDetected event.
const (
	fitFreeClusters = 200
	// fitTotalText is the budget of all targets' texts together.
	fitTotalText = 160 << 10
	// fitMinText is the least text a target keeps however many there are.
	fitMinText = 64
)

// fitStep: the number of targets is rounded up to a multiple of it, so that the budget changes
// only in steps (a cluster joining or leaving mostly changes nothing).
const fitStep = 100

// textBudget is the text one target may hold in status among n (0: no limit).
func textBudget(n int) int {
	if n <= fitFreeClusters {
		return 0
	}
	n = (n + fitStep - 1) / fitStep * fitStep
	return max(fitMinText, fitTotalText/n)
}

// sameDriftObjects reports whether stored, a drift report as status holds it, is report trimmed
// at some budget: at this pass's or at the one of an earlier pass with another number of targets.
// Compared so, a report is not new just because the number of targets changed.
func sameDriftObjects(stored, report []string) bool {
	equal := func(a, b []string) bool { return slices.Equal(a, b) }
	if equal(stored, report) {
		return true
	}
	for n := fitFreeClusters + 1; n <= 2*pluginsv1.MaxTargetClusters; n += fitStep {
		if equal(stored, fitDriftObjects(report, textBudget(n)/4)) {
			return true
		}
	}
	return false
}

// fitCluster trims c's texts to budget: half for the message, half for the drift report.
func fitCluster(c *pluginsv1.ClusterReleaseStatus, budget int) {
	if budget == 0 {
		return
	}
	c.Message = truncate(c.Message, budget/2)
	if c.Drift != nil {
		c.Drift.Message = truncate(c.Drift.Message, budget/4)
		c.Drift.Objects = fitDriftObjects(c.Drift.Objects, budget/4)
	}
}

// fitDriftObjects keeps the drifted objects that fit in budget characters (at least the first,
// truncated). It is idempotent: fitting a fitted list changes nothing.
func fitDriftObjects(objs []string, budget int) []string {
	if budget == 0 || len(objs) == 0 {
		return objs
	}
	out, used := []string{}, 0
	for i, o := range objs {
		if i == 0 {
			o = truncate(o, budget)
		} else if used+len(o) > budget {
			break
		}
		out = append(out, o)
		used += len(o)
	}
	return out
}
