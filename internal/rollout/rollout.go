// Package rollout is the wave engine shared by every Paddock kind that changes many clusters:
// PluginRelease rolls charts with it, ClusterUpgrade rolls Kubernetes versions. It is pure logic:
// callers freeze their targets into waves once per change (Plan), then on every reconcile report
// each cluster's state and act on what Decide returns. Nothing here talks to a cluster.
package rollout

import (
	"fmt"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// DefaultMaxConcurrency is the concurrency when none is set.
const DefaultMaxConcurrency = 10

// Target is a cluster that a change may apply to.
type Target struct {
	Name   string
	Labels map[string]string
}

// WaveSpec is one wave as the user wrote it.
type WaveSpec struct {
	Name     string
	Selector labels.Selector
	// MaxConcurrency overrides Spec.MaxConcurrency for this wave.
	MaxConcurrency *intstr.IntOrString
}

// Spec is a rollout as the user wrote it.
type Spec struct {
	// MaxConcurrency: clusters acted on at once per wave (a number or a percentage of the wave,
	// rounded up; default DefaultMaxConcurrency).
	MaxConcurrency *intstr.IntOrString
	Waves          []WaveSpec
	// MaxFailures: failures each wave may have (a number or a percentage, rounded down; default 0).
	MaxFailures *intstr.IntOrString
	// BakeTime: how long a completed wave must stay healthy before the next starts.
	BakeTime time.Duration
}

// RestWave names the wave of the targets no wave selects (all targets when there are no waves).
const RestWave = "rest"

// Wave is one wave with its targets frozen. CompletedAt is when every target of the wave last
// reached the desired state (nil while it has not, or since it stopped being so).
type Wave struct {
	Name        string
	Clusters    []string
	CompletedAt *time.Time
}

// Plan freezes targets into waves: each target goes to the first wave whose selector matches it;
// the rest form a last wave named RestWave. Waves with no target are kept (so that status shows
// them) and complete at once. Clusters are sorted by name within a wave, so the order is stable.
func Plan(spec Spec, targets []Target) []Wave {
	waves := make([]Wave, len(spec.Waves), len(spec.Waves)+1)
	var rest []string
	for i, w := range spec.Waves {
		waves[i].Name = w.Name
	}
	for _, t := range targets {
		placed := false
		for i, w := range spec.Waves {
			if w.Selector != nil && w.Selector.Matches(labels.Set(t.Labels)) {
				waves[i].Clusters = append(waves[i].Clusters, t.Name)
				placed = true
				break
			}
		}
		if !placed {
			rest = append(rest, t.Name)
		}
	}
	if len(rest) > 0 || len(waves) == 0 {
		waves = append(waves, Wave{Name: RestWave, Clusters: rest})
	}
	for i := range waves {
		sort.Strings(waves[i].Clusters)
	}
	return waves
}

// State is where one cluster stands in the change being rolled out.
type State int

const (
	// Pending: not started.
	Pending State = iota
	// Running: being acted on.
	Running
	// Succeeded: at the desired state and healthy.
	Succeeded
	// Failed: the action failed (and its remediation, if any).
	Failed
	// Gone: the cluster left the fleet (deleted) after the waves were frozen; it no longer
	// counts in its wave.
	Gone
	// Blocked: the cluster cannot be acted on now (its member is unreachable). It takes no start
	// slot and is no failure, but its wave is not complete while it is blocked: a canary that
	// cannot be reached never lets the next wave start.
	Blocked
	// Retrying: the action failed and is tried again after a delay (remediation retries, or a
	// member that was cut off and is back). It counts against the failure budget while it waits
	// (a failing canary holds the rest of its wave), takes no start slot, and keeps its wave
	// open: the next wave never starts before it has the change or has spent its retries.
	Retrying
	// RetryDue: a failed cluster whose retry is due. It counts against the failure budget like
	// Retrying, and it is started even while its wave is halted (within the wave's concurrency):
	// a halt it caused lifts only once it succeeds, and nothing else starts meanwhile.
	RetryDue
	// RetryRunning: a retry being acted on. It counts against the failure budget until it
	// succeeds, and it takes a concurrency slot.
	RetryRunning
	// Recheck: a failure that waits for someone (a conflict with another owner), due to be
	// looked at again. It is a failure of its wave, for the budget and for completion alike, and
	// it never reopens a wave: Decide lists it in Decision.Recheck, to be started in a free
	// concurrency slot, in the waves the rollout has reached.
	Recheck
	// RecheckRunning: a Recheck being looked at. A failure of its wave, like Recheck, that takes
	// a concurrency slot but keeps no wave open.
	RecheckRunning
)

// Decision is what the caller does now.
type Decision struct {
	// Wave is the index of the current wave (len(waves) when complete).
	Wave int
	// Start lists the clusters to start now, in order.
	Start []string
	// Recheck lists the Recheck clusters to look at again now, within their waves' free
	// concurrency.
	Recheck []string
	// Complete: every wave is done.
	Complete bool
	// Halted: a wave exceeded its failure budget; nothing more starts until that changes.
	Halted bool
	// Waiting says, for people, why nothing (more) starts: bake time, concurrency, a halt.
	Waiting string
	// RequeueAfter is when the decision may change by time alone (bake time ending).
	RequeueAfter time.Duration
	// CompletedAt is every wave's completion time as of now: store it in the waves.
	CompletedAt []*time.Time
}

// Decide looks at the frozen waves and each cluster's state and says what to start. A cluster
// missing from states is Pending. Only the current wave ever starts clusters: the first wave not
// complete, or the one after a completed wave whose bake time has passed.
func Decide(spec Spec, waves []Wave, states map[string]State, now time.Time) Decision {
	d := Decision{CompletedAt: make([]*time.Time, len(waves))}
	for i := range waves {
		d.CompletedAt[i] = waves[i].CompletedAt
	}
	for i, w := range waves {
		// due: retries to start, ahead of the clusters not started yet.
		var pending, due, recheck []string
		// checking: rechecks running, which take slots but keep no wave open.
		running, checking, failed, blocked, waiting, retrying, size := 0, 0, 0, 0, 0, 0, 0
		for _, c := range w.Clusters {
			switch states[c] {
			case Gone:
				continue
			case Recheck:
				failed++
				recheck = append(recheck, c)
			case RecheckRunning:
				failed++
				checking++
			case Blocked:
				blocked++
			case Retrying:
				retrying++
				waiting++
			case RetryDue:
				retrying++
				due = append(due, c)
			case RetryRunning:
				retrying++
				running++
			case Running:
				running++
			case Succeeded:
			case Failed:
				failed++
			default:
				pending = append(pending, c)
			}
			size++
		}
		mc := spec.MaxConcurrency
		if i < len(spec.Waves) && spec.Waves[i].Name == w.Name && spec.Waves[i].MaxConcurrency != nil {
			mc = spec.Waves[i].MaxConcurrency
		}
		limit := max(resolve(mc, size, true, DefaultMaxConcurrency), 1)
		budget := resolve(spec.MaxFailures, size, false, 0)
		// Rechecks take the slots this wave has left once its starts are counted.
		addRechecks := func() {
			if free := min(limit-running-checking-len(d.Start), len(recheck)); free > 0 {
				d.Recheck = append(d.Recheck, recheck[:free]...)
			}
		}
		if failed+retrying > budget {
			d.Wave, d.Halted = i, true
			d.CompletedAt[i] = nil
			d.Waiting = fmt.Sprintf("halted: %d of %d clusters of wave %s failed, more than maxFailures (%d); later waves are not started",
				failed+retrying, size, w.Name, budget)
			switch {
			case retrying > 0 && failed <= budget:
				d.Waiting += fmt.Sprintf(" (%d of them are retried: the halt lifts if they succeed)", retrying)
			case retrying > 0:
				d.Waiting += fmt.Sprintf(" (%d of them are retried)", retrying)
			}
			// Only retries start while halted, within the wave's concurrency.
			if free := min(limit-running-checking, len(due)); free > 0 {
				d.Start = due[:free]
			}
			addRechecks()
			return d
		}
		pending = append(due, pending...)
		if len(pending) > 0 || running > 0 || blocked > 0 || waiting > 0 {
			d.Wave = i
			d.CompletedAt[i] = nil
			if free := min(limit-running-checking, len(pending)); free > 0 {
				d.Start = pending[:free]
			}
			addRechecks()
			if len(pending) > len(d.Start) {
				d.Waiting = fmt.Sprintf("wave %s: %d running (maxConcurrency %d), %d waiting", w.Name, running+checking+len(d.Start), limit, len(pending)-len(d.Start))
			}
			if blocked > 0 {
				if d.Waiting != "" {
					d.Waiting += "; "
				}
				d.Waiting += fmt.Sprintf("wave %s: %d clusters unreachable (the wave completes when they are back)", w.Name, blocked)
			}
			if waiting > 0 {
				if d.Waiting != "" {
					d.Waiting += "; "
				}
				d.Waiting += fmt.Sprintf("wave %s: %d failed clusters wait to be retried", w.Name, waiting)
			}
			return d
		}
		// Complete (every cluster succeeded, or failed within the budget); its rechecks go on.
		addRechecks()
		if d.CompletedAt[i] == nil {
			t := now
			d.CompletedAt[i] = &t
		}
		if i == len(waves)-1 {
			d.Wave, d.Complete = len(waves), true
			return d
		}
		if until := d.CompletedAt[i].Add(spec.BakeTime); now.Before(until) {
			d.Wave = i
			d.RequeueAfter = until.Sub(now)
			d.Waiting = fmt.Sprintf("bake time: wave %s completed at %s; wave %s starts at %s if it stays healthy",
				w.Name, d.CompletedAt[i].UTC().Format(time.RFC3339), waves[i+1].Name, until.UTC().Format(time.RFC3339))
			return d
		}
	}
	d.Wave, d.Complete = len(waves), true
	return d
}

// resolve turns a number-or-percentage into a count of size; percentages round up or down.
func resolve(v *intstr.IntOrString, size int, roundUp bool, def int) int {
	if v == nil {
		return def
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(v, size, roundUp)
	if err != nil {
		return def
	}
	return n
}
