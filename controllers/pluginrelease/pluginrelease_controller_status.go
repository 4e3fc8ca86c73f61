package pluginrelease

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// patchStatus computes the status of this pass and writes it; every condition is set here.
func (r *Reconciler) patchStatus(ctx context.Context, s *scope) error {
	if s.deleted {
		r.emit(s)
		return nil
	}
	prel := s.prel
	st := &prel.Status
	gen := prel.Generation
	r.mu.Lock()
	secrets := r.secrets[prel.UID]
	r.mu.Unlock()
	set := func(t string, status metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: status, Reason: reason,
			Message: truncate(redact(msg, secrets), 1024), ObservedGeneration: gen})
	}

	st.Clusters = st.Clusters[:0]
	names := make([]string, 0, len(s.clusters))
	for n := range s.clusters {
		names = append(names, n)
	}
	sort.Strings(names)
	budget := textBudget(len(names))
	for _, n := range names {
		fitCluster(s.clusters[n], budget)
		st.Clusters = append(st.Clusters, *s.clusters[n])
	}
	if len(st.Clusters) == 0 {
		st.Clusters = nil
	}
	for i := len(s.history) - 1; i >= 0; i-- {
		st.History = append([]pluginsv1.HistoryEntry{s.history[i]}, st.History...)
	}
	sort.SliceStable(st.History, func(i, j int) bool { return st.History[i].Time.After(st.History[j].Time.Time) })
	if len(st.History) > pluginsv1.MaxHistoryEntries {
		st.History = st.History[:pluginsv1.MaxHistoryEntries]
	}
	if s.resolved != nil {
		st.ChartVersion = s.resolved.Version
	}

	var ready, failed []string
	var removing int
	if s.targets != nil {
		for name := range s.targets {
			c, ok := s.clusters[name]
			switch {
			case !ok:
			case c.Phase == pluginsv1.PhaseDeployed && c.ConfigDigest == s.desired[name]:
				ready = append(ready, name)
			case c.Phase == pluginsv1.PhaseFailed || c.Phase == pluginsv1.PhaseConflict:
				failed = append(failed, name)
				if c.Reason == pluginsv1.ClusterReasonMemberUnreachable {
					// Retried when the member is back.
					s.retrying = true
				}
			}
		}
		for name := range s.clusters {
			if _, ok := s.targets[name]; !ok {
				removing++
			}
		}
		st.Desired, st.ReadyCount, st.Failed = int32(len(s.targets)), int32(len(ready)), int32(len(failed))
		st.ClusterSummary = fmt.Sprintf("%d/%d", len(ready), len(s.targets))
	}
	sort.Strings(failed)

	switch {
	case s.passErr != nil && prel.DeletionTimestamp.IsZero():
		// A pass cut short by an error (a read that failed) knows too little to judge: a
		// healthy release is not made unready, nor a failing one Ready with "0 clusters".
		// But a verdict about an older generation is not kept for this one: status says this
		// generation is observed, so a kept Ready=True would let kubectl wait and kstatus take
		// a spec no pass has acted on for done.
		if c := meta.FindStatusCondition(st.Conditions, pluginsv1.ReadyCondition); c == nil || c.ObservedGeneration != gen {
			msg := "retrying after an error: " + s.passErr.Error()
			set(pluginsv1.ReadyCondition, metav1.ConditionFalse, ReasonProgressing, msg)
			set(pluginsv1.ReconcilingCondition, metav1.ConditionTrue, ReasonProgressing, msg)
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
		}
	case s.suspended:
		// Suspended: Ready keeps its last verdict; kstatus stays Current.
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.ReconcilingCondition)
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
		if c := meta.FindStatusCondition(st.Conditions, pluginsv1.ReadyCondition); c != nil {
			c.ObservedGeneration = gen
		} else {
			set(pluginsv1.ReadyCondition, metav1.ConditionFalse, ReasonSuspended, "suspended before anything was installed")
		}
	case !prel.DeletionTimestamp.IsZero():
		set(pluginsv1.ReadyCondition, metav1.ConditionFalse, ReasonUninstalling,
			fmt.Sprintf("uninstalling from %d clusters", len(s.clusters)))
		set(pluginsv1.ReconcilingCondition, metav1.ConditionTrue, ReasonUninstalling, "uninstalling")
	case s.failure != nil:
		set(pluginsv1.ReadyCondition, metav1.ConditionFalse, s.failure.reason, s.failure.msg)
		if s.failure.stalled {
			// Bad input: nothing changes until the spec (or what it names) does.
			set(pluginsv1.StalledCondition, metav1.ConditionTrue, s.failure.reason, s.failure.msg)
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.ReconcilingCondition)
		} else {
			// Retried (a repository not ready yet, a download that failed): in progress.
			set(pluginsv1.ReconcilingCondition, metav1.ConditionTrue, s.failure.reason, "retrying: "+s.failure.msg)
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
		}
	case s.decision != nil && s.decision.Halted && s.heldBack > 0:
		// A halt that holds targets back; one with nothing left to start is plain failures.
		set(pluginsv1.ReadyCondition, metav1.ConditionFalse, ReasonRolloutHalted, s.decision.Waiting+failedList(s, failed))
		if s.retrying {
			// Remediation retries are pending: the halt may lift by itself.
			set(pluginsv1.ReconcilingCondition, metav1.ConditionTrue, ReasonRolloutHalted, s.decision.Waiting+"; failed clusters are retried")
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
		} else {
			set(pluginsv1.StalledCondition, metav1.ConditionTrue, ReasonRolloutHalted, s.decision.Waiting)
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.ReconcilingCondition)
		}
	case len(failed) > 0:
		// Never hidden behind progress: a failed target makes Ready False with its error.
		set(pluginsv1.ReadyCondition, metav1.ConditionFalse, ReasonClustersFailed,
			fmt.Sprintf("%d of %d clusters failed%s", len(failed), len(s.targets), failedList(s, failed)))
		switch {
		case r.anyProgressing(prel.UID) || (s.decision != nil && len(s.decision.Start) > 0):
			set(pluginsv1.ReconcilingCondition, metav1.ConditionTrue, ReasonProgressing, "other clusters are progressing")
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
		case s.retrying:
			set(pluginsv1.ReconcilingCondition, metav1.ConditionTrue, ReasonClustersFailed, "failed clusters are retried (remediation retries, or a member that was unreachable)")
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
		case s.decision != nil && !s.decision.Complete && !s.decision.Halted:
			// Failures within the budget, and the rollout goes on (bake time, a member to come
			// back): in progress, not kstatus Failed.
			set(pluginsv1.ReconcilingCondition, metav1.ConditionTrue, ReasonProgressing, "the rollout goes on: "+s.decision.Waiting)
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
		default:
			// Nothing more will happen until the spec, the chart or the fleet changes: kstatus Failed.
			set(pluginsv1.StalledCondition, metav1.ConditionTrue, ReasonClustersFailed,
				fmt.Sprintf("%d clusters failed and are not retried (no remediation retries left)", len(failed)))
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.ReconcilingCondition)
		}
	case len(ready) == len(s.targets) && removing == 0:
		msg := fmt.Sprintf("%s %s deployed to %d clusters", prel.Spec.Chart.Name, st.ChartVersion, len(ready))
		set(pluginsv1.ReadyCondition, metav1.ConditionTrue, ReasonSucceeded, msg)
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.ReconcilingCondition)
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
	default:
		msg := fmt.Sprintf("%d/%d clusters at %s %s", len(ready), len(s.targets), prel.Spec.Chart.Name, st.ChartVersion)
		if removing > 0 {
			msg += fmt.Sprintf("; removing from %d", removing)
		}
		if len(s.unreachable) > 0 {
			sort.Strings(s.unreachable)
			msg += "; waiting for unreachable " + strings.Join(s.unreachable, ", ")
		}
		if len(s.noRoom) > 0 {
			msg += fmt.Sprintf("; %d new clusters wait until the clusters that left are uninstalled (status holds at most %d)",
				len(s.noRoom), pluginsv1.MaxTargetClusters)
		}
		if s.decision != nil && s.decision.Waiting != "" {
			msg += "; " + s.decision.Waiting
		}
		set(pluginsv1.ReadyCondition, metav1.ConditionFalse, ReasonProgressing, msg)
		set(pluginsv1.ReconcilingCondition, metav1.ConditionTrue, ReasonProgressing, msg)
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
	}
	var drifted []string
	for _, n := range names {
		if c := s.clusters[n]; c.Drift != nil {
			drifted = append(drifted, n)
		}
	}
	if len(drifted) > 0 && prel.DeletionTimestamp.IsZero() {
		msg := fmt.Sprintf("drift not corrected in %d clusters: ", len(drifted))
		for i, n := range drifted {
			if i == 3 {
				msg += fmt.Sprintf("; and %d more", len(drifted)-3)
				break
			}
			if i > 0 {
				msg += "; "
			}
			d := s.clusters[n].Drift
			msg += n + ": " + truncate(strings.Join(d.Objects, ", "), 200) + " (" + truncate(d.Message, 160) + ")"
		}
		set(pluginsv1.DriftedCondition, metav1.ConditionTrue, "DriftDetected", msg)
	} else {
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.DriftedCondition)
	}
	st.ObservedGeneration = gen

	if !equality.Semantic.DeepEqual(s.orig.Status, prel.Status) {
		if err := r.Client.Status().Patch(ctx, prel, client.MergeFromWithOptions(s.orig, client.MergeFromWithOptimisticLock{})); err != nil {
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		}
		r.mu.Lock()
		r.written[prel.UID] = s.readRVs
		r.mu.Unlock()
	}
	r.emit(s)
	return nil
}

func failedList(s *scope, failed []string) string {
	if len(failed) == 0 {
		return ""
	}
	var parts []string
	for i, n := range failed {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("and %d more", len(failed)-3))
			break
		}
		parts = append(parts, n+": "+truncate(s.clusters[n].Message, 200))
	}
	return ": " + strings.Join(parts, "; ")
}

// emit sends the events of this pass, once its status is written.
func (r *Reconciler) emit(s *scope) {
	if r.Recorder == nil {
		return
	}
	for _, e := range s.events {
		e()
	}
}

// eventFor words an operation for an operator: "upgraded hello 0.1.0 → 0.2.0 on prod-a,
// revision 3, in 4.2s".
func (r *Reconciler) eventFor(prel *pluginsv1.PluginRelease, cluster string, o outcome, dur time.Duration) func() {
	return func() {
		if r.Recorder == nil {
			return
		}
		chart := prel.Spec.Chart.Name
		switch {
		case o.failed:
			r.Recorder.Eventf(prel, memberRef(cluster), corev1.EventTypeWarning, failedReasons[o.action], o.action,
				"%s of %s %s on %s failed after %s: %s", o.action, chart, o.version, cluster, dur, truncate(o.msg, 400))
		case o.recorded:
			r.Recorder.Eventf(prel, memberRef(cluster), corev1.EventTypeNormal, "Recorded", o.action,
				"%s %s already runs on %s as revision %d: recorded, no Helm action", chart, o.version, cluster, o.revision)
		case o.action == opUninstall:
			r.Recorder.Eventf(prel, memberRef(cluster), corev1.EventTypeNormal, "Uninstalled", o.action, "uninstalled %s from %s in %s", chart, cluster, dur)
		case o.action == opUpgrade:
			r.Recorder.Eventf(prel, memberRef(cluster), corev1.EventTypeNormal, "Upgraded", o.action,
				"upgraded %s %s → %s on %s, revision %d, in %s", chart, o.fromVersion, o.version, cluster, o.revision, dur)
		default:
			r.Recorder.Eventf(prel, memberRef(cluster), corev1.EventTypeNormal, "Installed", o.action,
				"installed %s %s on %s, revision %d, in %s", chart, o.version, cluster, o.revision, dur)
		}
	}
}

// rollbackEvent says how the remediation of a failed upgrade went.
func (r *Reconciler) rollbackEvent(prel *pluginsv1.PluginRelease, cluster string, rb *rollbackOutcome, dur time.Duration) func() {
	return func() {
		if r.Recorder == nil {
			return
		}
		chart := prel.Spec.Chart.Name
		if rb.failed {
			r.Recorder.Eventf(prel, memberRef(cluster), corev1.EventTypeWarning, failedReasons[opRollback], opRollback,
				"rollback of %s %s → %s on %s failed after %s: %s", chart, rb.from, rb.to, cluster, dur, truncate(rb.msg, 400))
			return
		}
		r.Recorder.Eventf(prel, memberRef(cluster), corev1.EventTypeNormal, "RolledBack", opRollback,
			"rolled back %s %s → %s on %s, revision %d, in %s (the upgrade failed)", chart, rb.from, rb.to, cluster, rb.revision, dur)
	}
}

// memberRef is an event's related object: the MemberCluster it happened in. It also keeps the
// events of different clusters apart: events/v1 folds events with the same regarding object,
// reason and action (whatever their notes) into one series, so without it "installed on
// member-2" would be shown as a repeat of "installed on member-1".
func memberRef(cluster string) *clustersv1.MemberCluster {
	return &clustersv1.MemberCluster{
		TypeMeta:   metav1.TypeMeta{APIVersion: clustersv1.GroupVersion.String(), Kind: "MemberCluster"},
		ObjectMeta: metav1.ObjectMeta{Name: cluster}}
}

var failedReasons = map[string]string{opInstall: "InstallFailed", opUpgrade: "UpgradeFailed", opRollback: "RollbackFailed", opUninstall: "UninstallFailed"}
