package pluginrepository

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/chartrepo"
)

// patchStatus computes the status of one pass and writes it; all conditions are set here.
func (r *Reconciler) patchStatus(ctx context.Context, s *scope) error {
	if s.aborted {
		return nil
	}
	repo := s.repo
	st := &repo.Status
	gen := repo.Generation
	set := func(t string, status metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: status, Reason: reason,
			Message: truncate(msg, 1024), ObservedGeneration: gen})
	}
	oldReady := meta.FindStatusCondition(s.orig.Status.Conditions, pluginsv1.ReadyCondition)

	if s.cur != nil {
		st.LastFetchTime = &metav1.Time{Time: s.cur.FetchedAt}
		if s.cur.Index != nil {
			idx := s.cur.Index
			st.IndexDigest = idx.Digest
			st.ChartCount = int32(len(idx.Charts))
			st.Charts = idx.Charts
			if len(st.Charts) > pluginsv1.MaxListedCharts {
				st.Charts = st.Charts[:pluginsv1.MaxListedCharts]
			}
		} else {
			st.IndexDigest, st.ChartCount, st.Charts = "", 0, nil
		}
	}
	serving := ""
	if s.cur != nil {
		serving = "; releases keep using " + describeSource(s.cur)
	}

	switch {
	case s.failure != nil:
		set(pluginsv1.ReadyCondition, metav1.ConditionFalse, s.failure.Reason, s.failure.Message+serving)
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.ReconcilingCondition)
		if s.terminal {
			set(pluginsv1.StalledCondition, metav1.ConditionTrue, s.failure.Reason, s.failure.Message)
		} else {
			meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
		}
	case s.suspended:
		if s.cur != nil {
			set(pluginsv1.ReadyCondition, metav1.ConditionTrue, pluginsv1.ReasonSuspended, "suspended: not fetched until spec.suspend is cleared"+serving)
		} else {
			set(pluginsv1.ReadyCondition, metav1.ConditionFalse, pluginsv1.ReasonSuspended, "suspended before a fetch succeeded: nothing to serve")
		}
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.ReconcilingCondition)
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
	default:
		set(pluginsv1.ReadyCondition, metav1.ConditionTrue, pluginsv1.ReasonSucceeded, successMessage(s.cur))
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.ReconcilingCondition)
		meta.RemoveStatusCondition(&st.Conditions, pluginsv1.StalledCondition)
	}
	st.ObservedGeneration = gen

	ready := meta.FindStatusCondition(st.Conditions, pluginsv1.ReadyCondition)
	if ready.Status == metav1.ConditionTrue {
		readyGauge.WithLabelValues(repo.Name).Set(1)
	} else {
		readyGauge.WithLabelValues(repo.Name).Set(0)
	}

	if !equality.Semantic.DeepEqual(s.orig.Status, repo.Status) {
		if err := r.Client.Status().Patch(ctx, repo, client.MergeFrom(s.orig)); err != nil {
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		}
	}
	r.notify(repo, oldReady, ready, s)
	return nil
}

// notify emits events on transitions only: a new index, a new failure reason, a recovery.
func (r *Reconciler) notify(repo *pluginsv1.PluginRepository, old, cur *metav1.Condition, s *scope) {
	if r.Recorder == nil {
		return
	}
	switch {
	case s.failure != nil:
		if old == nil || old.Reason != cur.Reason || old.Status != cur.Status {
			r.Recorder.Eventf(repo, nil, corev1.EventTypeWarning, s.failure.Reason, "Fetch", "%s", truncate(s.failure.Message, 1024))
		}
	case s.updated && s.cur != nil:
		r.Recorder.Eventf(repo, nil, corev1.EventTypeNormal, "IndexUpdated", "Fetch", "%s", successMessage(s.cur))
	case old != nil && old.Status != metav1.ConditionTrue && cur.Status == metav1.ConditionTrue:
		r.Recorder.Eventf(repo, nil, corev1.EventTypeNormal, "Recovered", "Fetch", "%s", successMessage(s.cur))
	}
}

func successMessage(src *chartrepo.Source) string {
	if src == nil {
		return ""
	}
	if src.Registry != nil {
		return fmt.Sprintf("the registry %s answered", src.Registry.Host)
	}
	idx := src.Index
	msg := fmt.Sprintf("fetched index %s: %d charts", shortDigest(idx.Digest), len(idx.Charts))
	if idx.Skipped > 0 {
		msg += fmt.Sprintf(" (%d invalid entries skipped)", idx.Skipped)
	}
	if len(idx.Charts) > pluginsv1.MaxListedCharts {
		msg += fmt.Sprintf("; status.charts lists the first %d", pluginsv1.MaxListedCharts)
	}
	return msg
}

func describeSource(src *chartrepo.Source) string {
	when := src.FetchedAt.UTC().Format("2006-01-02T15:04:05Z")
	if src.Registry != nil {
		return "the registry as checked at " + when
	}
	return fmt.Sprintf("the last good index %s, fetched at %s", shortDigest(src.Index.Digest), when)
}

func shortDigest(d string) string {
	if i := strings.IndexByte(d, ':'); i >= 0 && len(d) > i+13 {
		return d[:i+13]
	}
	return d
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
