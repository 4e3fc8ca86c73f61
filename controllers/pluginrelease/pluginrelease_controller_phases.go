package pluginrelease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"helm.sh/helm/v3/pkg/release"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/chartrepo"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/helm"
	"github.com/paddock-dev/paddock/internal/rollout"
)

// Reasons of a PluginRelease's Ready condition, beside the chart and repository ones.
const (
	ReasonSucceeded          = "Succeeded"
	ReasonProgressing        = "Progressing"
	ReasonSuspended          = "Suspended"
	ReasonRepositoryNotReady = "RepositoryNotReady"
	ReasonValuesInvalid      = "ValuesInvalid"
	ReasonTooManyTargets     = "TooManyTargets"
	ReasonRolloutHalted      = "RolloutHalted"
	ReasonClustersFailed     = "ClustersFailed"
	ReasonUninstalling       = "Uninstalling"
)

// Operations recorded in history and lastOperation.
const (
	opInstall   = "install"
	opUpgrade   = "upgrade"
	opRollback  = "rollback"
	opUninstall = "uninstall"
)

// failure is why this pass cannot proceed.
type failure struct {
	reason, msg string
	stalled     bool
}

type scope struct {
	prel, orig *pluginsv1.PluginRelease
	clusters   map[string]*pluginsv1.ClusterReleaseStatus
	history    []pluginsv1.HistoryEntry
	folded     []foldedRef
	resolved   *chartrepo.Resolved
	failure    *failure
	decision   *rollout.Decision
	suspended  bool
	// targets are the clusters the release selects now; desired their config digests.
	targets map[string]*clustersv1.MemberCluster
	desired map[string]string
	// unreachable are targets that could not be started because the member is not usable.
	unreachable []string
	events      []func()
	// deleted: the finalizer is gone; there is no status to write.
	deleted bool
	// staleCache: the cache was behind the apiserver; nothing was started, the pass comes again.
	staleCache bool
	// latest: this pass wrote the object (with an optimistic lock) before deciding, so it holds
	// the apiserver's latest version and need not read it again.
	latest bool
	// heldBack counts the targets a halted rollout does not start.
	heldBack int
	// noRoom are the targets that wait for room in status (see hasRoom).
	noRoom map[string]bool
	// conflictAt is when the next target in Conflict is due to be looked at again.
	conflictAt time.Time
	// reportSigs are the drift reports folded in this pass (see driftState.reportSig), kept
	// once status is written.
	reportSigs map[string]string
	// retrying: some failed target will be retried by time alone.
	retrying bool
	// retryAt is when an uninstall that failed may be tried again.
	retryAt time.Time
	// passErr: the pass ended in an error (retried); it decided nothing, so the conditions
	// stay as they were (what it folded is still written).
	passErr error
	// readRVs are the resourceVersions this pass read (from the cache, and after adding the
	// finalizer): older than anything its status patch writes.
	readRVs []string
}

func newScope(prel *pluginsv1.PluginRelease) *scope {
	s := &scope{prel: prel, orig: prel.DeepCopy(), clusters: map[string]*pluginsv1.ClusterReleaseStatus{}}
	for i := range prel.Status.Clusters {
		c := prel.Status.Clusters[i]
		s.clusters[c.Name] = &c
	}
	return s
}

func (s *scope) cluster(name string) *pluginsv1.ClusterReleaseStatus {
	c, ok := s.clusters[name]
	if !ok {
		c = &pluginsv1.ClusterReleaseStatus{Name: name, Phase: pluginsv1.PhasePending}
		s.clusters[name] = c
	}
	return c
}

// hasRoom reports whether status can hold name: it has an entry already, or there are fewer than
// MaxTargetClusters. Clusters that left the targets keep theirs until they are uninstalled, so a
// release whose targets were all replaced holds both for a while; new targets wait for room
// (taking none while it lacks), which keeps status within what etcd stores.
func (s *scope) hasRoom(name string) bool {
	if _, ok := s.clusters[name]; ok || len(s.clusters) < pluginsv1.MaxTargetClusters {
		return true
	}
	if s.noRoom == nil {
		s.noRoom = map[string]bool{}
	}
	s.noRoom[name] = true
	return false
}

func setPhase(c *pluginsv1.ClusterReleaseStatus, phase pluginsv1.ClusterPhase, msg string) {
	if c.Phase != phase || c.LastTransitionTime == nil {
		c.LastTransitionTime = &metav1.Time{Time: time.Now()}
	}
	c.Phase, c.Message = phase, truncate(msg, 512)
}

// rollbackOutcome is a rollback that remediated a failed upgrade (within its outcome).
type rollbackOutcome struct {
	from, to          string
	revision          int
	failed            bool
	msg               string
	started, finished time.Time
}

// outcome is a finished action.
type outcome struct {
	action, digest            string
	fromVersion, version, app string
	revision                  int
	phase                     pluginsv1.ClusterPhase
	msg                       string
	failed, unreachable, gone bool
	// recorded: found already done in the member (no Helm action).
	recorded bool
	// rollback: the remediation of a failed upgrade, its own history entry and event.
	rollback *rollbackOutcome
	// kind: what the rollout started it as (runningAction.kind).
	kind              string
	started, finished time.Time
	// Drift checks: cancelled (superseded by an action), the release is gone (install again),
	// the drifted objects found.
	cancelled, reinstall bool
	driftObjects         []string
	// manifestDigest is the digest of the manifest a successful install or upgrade produced.
	manifestDigest string
}

// fold moves the finished actions of this release into the scope's status.
func (r *Reconciler) fold(s *scope) {
	var forget []string
	defer func() {
		for _, c := range forget {
			r.forgetDrift(s.prel.UID, c)
		}
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	for key, list := range r.done {
		if key.uid != s.prel.UID {
			continue
		}
		s.folded = append(s.folded, foldedRef{key, len(list)})
		for _, o := range list {
			// Values from Secrets never reach status, events or history (an apiserver error
			// may quote the value it refused).
			o.msg = redact(o.msg, r.secrets[key.uid])
			if o.rollback != nil {
				rb := *o.rollback
				rb.msg = redact(rb.msg, r.secrets[key.uid])
				o.rollback = &rb
			}
			if o.action == opDriftCheck || o.action == opDriftCorrected {
				r.foldDrift(s, key.cluster, o)
				continue
			}
			c := s.cluster(key.cluster)
			// A conflict's recheck that finds it still there is no news: no history entry and
			// no event each time (they would crowd out everything else).
			again := o.failed && o.phase == pluginsv1.PhaseConflict && c.Reason == pluginsv1.ClusterReasonReleaseConflict &&
				c.ConfigDigest == o.digest
			if o.action == opUninstall && !o.failed {
				delete(s.clusters, key.cluster)
				forget = append(forget, key.cluster)
			} else {
				prevReason := c.Reason
				setPhase(c, o.phase, o.msg)
				c.LastOperation = o.action
				c.Reason = outcomeReason(o)
				if !o.failed {
					c.ChartVersion, c.AppVersion, c.Revision, c.ConfigDigest, c.Failures = o.version, o.app, int32(o.revision), o.digest, 0
					c.ManifestDigest = o.manifestDigest
				} else {
					// A cut-off (the member went away) or an action cancelled before it started
					// is retried whatever the remediation says, and uses none of its retries.
					neutral := o.unreachable || o.phase == pluginsv1.PhasePending
					if o.phase == pluginsv1.PhasePending && !o.unreachable {
						c.Reason = prevReason // cancelled: it says nothing new
					}
					// Failures counts the failures of this change in a row, of one kind: a
					// conflict's rechecks back off with it, but once the conflict clears (even
					// by way of a cut-off), an upgrade that fails has all its retries.
					was, now := failureKind(prevReason), failureKind(c.Reason)
					if c.ConfigDigest != o.digest || (was != "" && was != now && (!neutral || was == pluginsv1.ClusterReasonReleaseConflict)) {
						c.Failures = 0
					}
					if !neutral {
						c.Failures++
					}
					c.ConfigDigest = o.digest
					if rb := o.rollback; rb != nil && !rb.failed && rb.revision > 0 {
						// The member runs the rolled-back-to chart again, as a new revision.
						c.Revision = int32(rb.revision)
					}
				}
			}
			if o.action == opUninstall {
				if o.failed {
					r.uninstallAfter[key] = o.finished.Add(r.retryDelay(1))
					f, ok := r.uninstallFailing[key]
					if !ok {
						// Failing already, as status recorded (before a restart), or from now.
						if f.since, ok = failingSinceInHistory(s.prel, key.cluster); !ok {
							f.since = o.finished
						}
					}
					f.seen = true
					r.uninstallFailing[key] = f
				} else {
					delete(r.uninstallAfter, key)
					delete(r.uninstallFailing, key)
				}
			} else if o.action == opInstall || o.action == opUpgrade {
				// Back among the targets: an uninstall later fails afresh.
				delete(r.uninstallAfter, key)
				delete(r.uninstallFailing, key)
			}
			if o.failed && o.phase == pluginsv1.PhaseConflict {
				r.rechecked[key] = o.finished
			} else if !o.unreachable {
				delete(r.rechecked, key)
			}
			if again {
				continue
			}
			result := "Succeeded"
			if o.failed {
				result = "Failed"
			}
			end := o.finished
			if o.rollback != nil {
				// The upgrade ended where its rollback began: two entries, in order.
				end = o.rollback.started
			}
			dur := end.Sub(o.started).Round(100 * time.Millisecond)
			s.history = append(s.history, pluginsv1.HistoryEntry{Time: metav1.Time{Time: end}, Cluster: key.cluster,
				Action: o.action, FromVersion: o.fromVersion, ToVersion: o.version, Revision: int32(o.revision),
				Result: result, Duration: dur.String(), Message: truncate(o.msg, 256)})
			s.events = append(s.events, r.eventFor(s.prel, key.cluster, o, dur))
			if rb := o.rollback; rb != nil {
				result, rdur := "Succeeded", rb.finished.Sub(rb.started).Round(100*time.Millisecond)
				if rb.failed {
					result = "Failed"
				}
				s.history = append(s.history, pluginsv1.HistoryEntry{Time: metav1.Time{Time: rb.finished}, Cluster: key.cluster,
					Action: opRollback, FromVersion: rb.from, ToVersion: rb.to, Revision: int32(rb.revision),
					Result: result, Duration: rdur.String(), Message: truncate(rb.msg, 256)})
				s.events = append(s.events, r.rollbackEvent(s.prel, key.cluster, rb, rdur))
			}
		}
	}
}

// failureKind groups the reasons a target's Failures counts in a row: an install or upgrade
// failure (one change, whichever Helm action it took), a conflict, an uninstall failure; ""
// for none or a cut-off (which counts for no kind and ends none but a conflict).
func failureKind(reason string) string {
	switch reason {
	case pluginsv1.ClusterReasonInstallFailed, pluginsv1.ClusterReasonUpgradeFailed:
		return "change"
	case pluginsv1.ClusterReasonReleaseConflict, pluginsv1.ClusterReasonUninstallFailed:
		return reason
	}
	return ""
}

// foldedRef is how many outcomes of a key a pass folded.
type foldedRef struct {
	key actionKey
	n   int
}

// outcomeReason is a target's status reason after o.
func outcomeReason(o outcome) string {
	switch {
	case !o.failed:
		return ""
	case o.unreachable:
		return pluginsv1.ClusterReasonMemberUnreachable
	case o.phase == pluginsv1.PhaseConflict:
		return pluginsv1.ClusterReasonReleaseConflict
	case o.action == opUpgrade:
		return pluginsv1.ClusterReasonUpgradeFailed
	case o.action == opUninstall:
		return pluginsv1.ClusterReasonUninstallFailed
	}
	return pluginsv1.ClusterReasonInstallFailed
}

// forgetFolded drops the outcomes that are now in status.
func (r *Reconciler) forgetFolded(s *scope) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for cluster, sig := range s.reportSigs {
		if st := r.drift[actionKey{s.prel.UID, cluster}]; st != nil {
			st.reportSig = sig
		}
	}
	for _, f := range s.folded {
		// Outcomes that arrived after the fold stay for the next pass.
		if rest := r.done[f.key][f.n:]; len(rest) > 0 {
			r.done[f.key] = rest
		} else {
			delete(r.done, f.key)
		}
	}
}

// isRunning says whether an install, upgrade or uninstall runs on the target (a drift check does
// not count: it changes nothing the rollout waits for).
//
// An action that finished after this pass folded the outcomes counts as running too: its outcome
// waits in r.done for the next pass, and the status this pass holds does not show it yet (acting
// on that status would start the same action again).
func (r *Reconciler) isRunning(s *scope, cluster string) bool {
	running, _ := r.runningKind(s, cluster)
	return running
}

// runningKind is isRunning, and what the rollout started the action as (kindRetry, kindRecheck
// or "").
func (r *Reconciler) runningKind(s *scope, cluster string) (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := actionKey{s.prel.UID, cluster}
	if a, ok := r.running[key]; ok && a.action != opDriftCheck {
		return true, a.kind
	}
	done := r.done[key]
	for _, f := range s.folded {
		if f.key == key && f.n <= len(done) {
			done = done[f.n:]
		}
	}
	for _, o := range done {
		if o.action != opDriftCheck && o.action != opDriftCorrected {
			return true, o.kind
		}
	}
	return false, ""
}

// cancelDrift cancels a drift check running on the target, which an action supersedes; it says
// whether one was running (the action starts once it has ended).
func (r *Reconciler) cancelDrift(uid types.UID, cluster string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.running[actionKey{uid, cluster}]
	if ok && a.action == opDriftCheck {
		a.cancel()
		return true
	}
	return false
}

// anyRunning says whether an action of the release runs (drift checks too when withDrift).
func (r *Reconciler) anyRunning(uid types.UID, withDrift bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, a := range r.running {
		if k.uid == uid && (withDrift || a.action != opDriftCheck) {
			return true
		}
	}
	return false
}

// anyProgressing says whether an install, upgrade or uninstall of the release runs, a conflict's
// recheck aside (it waits for someone: no progress of its own).
func (r *Reconciler) anyProgressing(uid types.UID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, a := range r.running {
		if k.uid == uid && a.action != opDriftCheck && a.kind != kindRecheck {
			return true
		}
	}
	return false
}

func (r *Reconciler) reconcileNormal(ctx context.Context, s *scope) (ctrl.Result, error) {
	prel := s.prel
	src, ok := r.Repositories.Get(prel.Spec.Chart.Repository)
	if !ok {
		s.failure = &failure{reason: ReasonRepositoryNotReady,
			msg: fmt.Sprintf("PluginRepository %s has no index yet (missing, or not fetched successfully)", prel.Spec.Chart.Repository)}
		return ctrl.Result{}, nil
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	resolved, err := r.Charts.Get(rctx, src, prel.Spec.Chart.Name, prel.Spec.Chart.Version)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctrl.Result{}, ctx.Err()
		}
		e := chartrepo.AsError(err)
		s.failure = &failure{reason: e.Reason, msg: e.Message}
		return ctrl.Result{RequeueAfter: time.Minute}, nil
	}
	s.resolved = resolved

	targets, err := r.targets(ctx, prel)
	if err != nil {
		var ve *valuesError
		if errors.As(err, &ve) {
			s.failure = &failure{reason: ReasonValuesInvalid, msg: ve.msg, stalled: true}
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if len(targets) > pluginsv1.MaxTargetClusters {
		// Refused before anything is done anywhere: its status could not hold every target.
		s.failure = &failure{reason: ReasonTooManyTargets, stalled: true, msg: fmt.Sprintf(
			"spec.targets selects %d clusters; one PluginRelease serves at most %d: split it into several with narrower clusterSelectors (nothing was changed in any cluster)",
			len(targets), pluginsv1.MaxTargetClusters)}
		return ctrl.Result{}, nil
	}
	s.targets = targets
	base, secrets, err := baseValues(ctx, r.valuesReader(), prel, r.SecretNamespaces, r.ProtectedNamespaces)
	r.mu.Lock()
	// Kept across passes (a rotated Secret's old values may still be in a running action's
	// errors): only added to, bounded, dropped with the PluginRelease.
	if len(secrets) > 0 {
		r.secrets[prel.UID] = rememberSecrets(r.secrets[prel.UID], secrets)
	}
	r.mu.Unlock()
	if err != nil {
		var ve *valuesError
		if errors.As(err, &ve) {
			s.failure = &failure{reason: ReasonValuesInvalid, msg: ve.msg, stalled: !ve.retry}
			if ve.retry {
				return ctrl.Result{RequeueAfter: time.Minute}, nil
			}
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	values := map[string]map[string]any{}
	s.desired = map[string]string{}
	for name, mc := range targets {
		v, err := clusterValues(prel, base, mc)
		if err != nil {
			var ve *valuesError
			retry := errors.As(err, &ve) && ve.retry
			s.failure = &failure{reason: ReasonValuesInvalid, msg: err.Error(), stalled: !retry}
			if retry {
				return ctrl.Result{RequeueAfter: time.Minute}, nil
			}
			return ctrl.Result{}, nil
		}
		values[name] = v
		s.desired[name] = r.digests.config(resolved.Digest, v, prel)
	}

	// The rollout: its waves are frozen when its change starts; clusters that join later go
	// into the next pass, once this one is complete.
	spec, err := rolloutSpec(prel)
	if err != nil {
		s.failure = &failure{reason: ReasonValuesInvalid, msg: err.Error(), stalled: true}
		return ctrl.Result{}, nil
	}
	change := r.digests.rollout(resolved.Digest, base, prel)
	st := prel.Status.Rollout
	if st == nil || st.ConfigDigest != change || (r.passComplete(spec, st, s) && hasNewTargets(st, targets)) {
		st = freeze(spec, targets, change)
		prel.Status.Rollout = st
	}
	waves := make([]rollout.Wave, len(st.Waves))
	for i, w := range st.Waves {
		waves[i] = rollout.Wave{Name: w.Name, Clusters: w.Clusters}
		if w.CompletedAt != nil {
			t := w.CompletedAt.Time
			waves[i].CompletedAt = &t
		}
	}
	now := time.Now()
	states, retryAt := r.states(s, waves, now)
	s.retrying = !retryAt.IsZero()
	d := rollout.Decide(spec, waves, states, now)
	s.decision = &d
	if d.Wave < len(waves) {
		for _, name := range waves[d.Wave].Clusters {
			if states[name] == rollout.RetryDue || states[name] == rollout.RetryRunning {
				// A retry of the wave the rollout is on starts or runs: in progress.
				s.retrying = true
			}
		}
	}
	if d.Halted {
		// What the halt holds back: targets not acted on yet in this wave and after it.
		for _, w := range waves[d.Wave:] {
			for _, name := range w.Clusters {
				if states[name] == rollout.Pending {
					s.heldBack++
				}
			}
		}
	}
	for i := range st.Waves {
		if d.CompletedAt[i] != nil {
			st.Waves[i].CompletedAt = &metav1.Time{Time: *d.CompletedAt[i]}
		} else {
			st.Waves[i].CompletedAt = nil
		}
	}
	st.WaveIndex = int32(min(d.Wave, len(st.Waves)-1))
	st.Wave = st.Waves[st.WaveIndex].Name
	st.Waiting = d.Waiting

	if len(d.Start)+len(d.Recheck) > 0 && r.APIReader != nil && !s.latest {
		// Starting an action on status older than the last one written would repeat an action
		// whose outcome is already recorded: make sure the cache served the latest version
		// (one read per pass that starts something).
		live := &pluginsv1.PluginRelease{}
		if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(prel), live); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		if live.ResourceVersion != s.orig.ResourceVersion {
			d.Start, d.Recheck = nil, nil
			s.staleCache = true
		}
	}
	for _, name := range d.Start {
		if !s.hasRoom(name) {
			continue
		}
		if r.cancelDrift(prel.UID, name) {
			continue
		}
		if _, err := r.Cache.Get(ctx, name); err != nil {
			s.unreachable = append(s.unreachable, name)
			setPhase(s.cluster(name), pluginsv1.PhaseUnreachable, notUsable(name, err))
			s.cluster(name).Reason = pluginsv1.ClusterReasonMemberUnreachable
			continue
		}
		kind := ""
		if states[name] == rollout.RetryDue {
			kind = kindRetry
		}
		r.startInstallOrUpgrade(s, name, values[name], kind)
	}
	// Conflicts due are looked at again (an install or upgrade that reads the record first).
	for _, name := range d.Recheck {
		if r.isRunning(s, name) || !s.hasRoom(name) || !r.usable(name) || r.cancelDrift(prel.UID, name) {
			continue
		}
		r.startInstallOrUpgrade(s, name, values[name], kindRecheck)
	}
	// Targets whose member is not usable wait for it (those cut off mid-action stay Failed).
	for name := range targets {
		if states[name] != rollout.Blocked || r.isRunning(s, name) || !inWaves(st, name) || !s.hasRoom(name) {
			continue
		}
		c := s.cluster(name)
		s.unreachable = append(s.unreachable, name)
		if c.Phase != pluginsv1.PhaseFailed {
			_, err := r.Cache.Get(ctx, name)
			if err == nil {
				err = clustercache.ErrNotConnected
			}
			setPhase(c, pluginsv1.PhaseUnreachable, notUsable(name, err))
			c.Reason = pluginsv1.ClusterReasonMemberUnreachable
		}
	}
	// Clusters still frozen in a wave the rollout has not reached wait.
	for _, w := range st.Waves {
		for _, name := range w.Clusters {
			if _, ok := targets[name]; !ok || !s.hasRoom(name) {
				continue
			}
			c := s.cluster(name)
			if states[name] == rollout.Pending && !r.isRunning(s, name) && c.Phase == pluginsv1.PhasePending {
				setPhase(c, pluginsv1.PhaseWaiting, "held by the rollout: "+d.Waiting)
			}
		}
	}
	// Targets not in this pass (joined meanwhile) wait for the next.
	for name := range targets {
		if !inWaves(st, name) && s.hasRoom(name) {
			setPhase(s.cluster(name), pluginsv1.PhaseWaiting, "joined during the rollout; handled by the next pass")
		}
	}
	// Clusters that are no longer targets lose the release.
	for name, c := range s.clusters {
		if _, ok := targets[name]; ok || r.isRunning(s, name) || r.cancelDrift(prel.UID, name) {
			continue
		}
		if r.giveUpUninstall(s, name, c, now) {
			continue
		}
		r.startUninstall(ctx, s, name, false)
	}

	next := r.resync()
	if s.staleCache {
		next = 200 * time.Millisecond
	}
	if driftAt := r.scheduleDrift(s, states, now); !driftAt.IsZero() && driftAt.Sub(now) < next {
		next = max(driftAt.Sub(now), time.Second)
	}
	if d.RequeueAfter > 0 && d.RequeueAfter < next {
		next = d.RequeueAfter
	}
	if !retryAt.IsZero() && retryAt.Sub(now) < next {
		next = max(retryAt.Sub(now), time.Second)
	}
	if !s.conflictAt.IsZero() && s.conflictAt.Sub(now) < next {
		next = max(s.conflictAt.Sub(now), time.Second)
	}
	if !s.retryAt.IsZero() && s.retryAt.Sub(now) < next {
		next = max(s.retryAt.Sub(now), time.Second)
	}
	for _, v := range prel.Spec.ValuesFrom {
		if v.Kind == "Secret" && next > SecretValuesInterval {
			next = SecretValuesInterval
		}
	}
	if len(s.unreachable) > 0 && next > 30*time.Second {
		next = 30 * time.Second
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// maxRememberedSecrets bounds the values of rotated Secrets kept for redaction.
const maxRememberedSecrets = 512

// rememberSecrets returns a new list (readers may hold the old one outside the lock): every
// current value, then as many earlier ones as fit, newest first.
func rememberSecrets(old, current []string) []string {
	limit := max(maxRememberedSecrets, len(current))
	seen := map[string]bool{}
	out := make([]string, 0, min(len(current)+len(old), limit))
	for _, list := range [][]string{current, old} {
		for _, v := range list {
			if len(out) == limit {
				return out
			}
			if !seen[v] {
				seen[v] = true
				out = append(out, v)
			}
		}
	}
	return out
}

func (r *Reconciler) resync() time.Duration {
	if r.Resync > 0 {
		return r.Resync
	}
	return DefaultResync
}

func (r *Reconciler) retryDelay(failures int32) time.Duration {
	d := r.RetryDelay
	if d <= 0 {
		d = 10 * time.Second
	}
	for i := int32(1); i < failures && d < 5*time.Minute; i++ {
		d *= 2
	}
	return d
}

// states maps every frozen cluster to the rollout engine's view, and says when the earliest
// failed target becomes due for a retry.
func (r *Reconciler) states(s *scope, waves []rollout.Wave, now time.Time) (map[string]rollout.State, time.Time) {
	// The retries of the action that failed: install's or upgrade's.
	retriesOf := func(c *pluginsv1.ClusterReleaseStatus) int32 {
		if rem := remediationFor(s.prel, c.LastOperation != opUpgrade); rem != nil {
			return rem.Retries
		}
		return 0
	}
	out := map[string]rollout.State{}
	var retryAt time.Time
	for _, w := range waves {
		for _, name := range w.Clusters {
			want, ok := s.desired[name]
			if !ok {
				out[name] = rollout.Gone
				continue
			}
			c, ok := s.clusters[name]
			if running, kind := r.runningKind(s, name); running {
				switch kind {
				case kindRetry:
					// A retry of the change still counts against the wave's budget, so a halt
					// it caused holds while it runs.
					out[name] = rollout.RetryRunning
				case kindRecheck:
					out[name] = rollout.RecheckRunning
				default:
					out[name] = rollout.Running
				}
				continue
			}
			if ok && c.Phase == pluginsv1.PhaseDeployed && c.ConfigDigest == want {
				out[name] = rollout.Succeeded
				continue
			}
			if !r.usable(name) {
				if ok && (c.Phase == pluginsv1.PhaseFailed || c.Phase == pluginsv1.PhaseConflict) && c.ConfigDigest == want &&
					c.Reason != pluginsv1.ClusterReasonMemberUnreachable {
					// A failure of the change still counts against the wave's budget.
					out[name] = rollout.Failed
					continue
				}
				// A member that is not usable takes no start slot and is no failure, but its wave
				// is not complete without it: it is acted on when it is back.
				out[name] = rollout.Blocked
				continue
			}
			switch {
			case !ok:
				out[name] = rollout.Pending
			case c.Reason == pluginsv1.ClusterReasonMemberUnreachable && c.ConfigDigest == want:
				// Cut off by the member going away, and it is back: retried (after the delay).
				if due := transitioned(c).Add(r.retryDelay(1)); now.Before(due) {
					out[name] = rollout.Retrying
					if retryAt.IsZero() || due.Before(retryAt) {
						retryAt = due
					}
				} else {
					out[name] = rollout.RetryDue
				}
			case c.Phase == pluginsv1.PhaseConflict && c.ConfigDigest == want:
				// A failure of its wave (a halt holds), but looked at again with a growing delay
				// whatever the remediation says: the other release may be removed, or spec.adopt
				// set (which changes no digest, so it is seen here, at once). The recheck is an
				// install or upgrade that reads the record first, in a free slot of its wave,
				// without reopening it: one that finds the conflict gone acts at once.
				out[name] = rollout.Failed
				due := transitioned(c).Add(r.recheckDelay(c.Failures))
				if last, ok := r.lastRecheck(actionKey{s.prel.UID, name}); ok && last.Add(r.retryDelay(c.Failures)).After(due) {
					// Rechecks that could not run for a while (a member down, a full wave)
					// resume at the backoff, not in a burst that catches up with the sum.
					due = last.Add(r.retryDelay(c.Failures))
				}
				if s.prel.Spec.Adopt || !now.Before(due) {
					out[name] = rollout.Recheck
				} else if s.conflictAt.IsZero() || due.Before(s.conflictAt) {
					// Only a requeue: a conflict waits for someone, so it is no retry that
					// keeps the release Reconciling.
					s.conflictAt = due
				}
			case (c.Phase == pluginsv1.PhaseFailed || c.Phase == pluginsv1.PhaseConflict) && c.ConfigDigest == want:
				retries := retriesOf(c)
				due := transitioned(c).Add(r.retryDelay(c.Failures))
				switch {
				case c.Phase == pluginsv1.PhaseFailed && c.Failures <= retries && !now.Before(due):
					out[name] = rollout.RetryDue
				case c.Phase == pluginsv1.PhaseFailed && c.Failures <= retries:
					// Retried later: not a failure of the wave (yet), and the wave is not complete.
					out[name] = rollout.Retrying
					if retryAt.IsZero() || due.Before(retryAt) {
						retryAt = due
					}
				default:
					out[name] = rollout.Failed
				}
			default:
				// Unreachable targets are retried when the member is back: Pending again.
				out[name] = rollout.Pending
			}
		}
	}
	return out, retryAt
}

// lastRecheck is when this process last found the target's conflict still there.
func (r *Reconciler) lastRecheck(key actionKey) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.rechecked[key]
	return t, ok
}

// recheckDelay is how long after a target entered Conflict its next recheck is due, after
// checks rechecks: the growing delays (retryDelay) added up, as a recheck keeps the phase (and
// its transition time) of a conflict it finds still there.
func (r *Reconciler) recheckDelay(checks int32) time.Duration {
	var d time.Duration
	for i := int32(1); i <= checks; i++ {
		d += r.retryDelay(i)
	}
	return d
}

// transitioned is when c entered its phase (the zero time if status never said: due at once).
func transitioned(c *pluginsv1.ClusterReleaseStatus) time.Time {
	if c.LastTransitionTime == nil {
		return time.Time{}
	}
	return c.LastTransitionTime.Time
}

// usable says whether the member may be acted on now.
func (r *Reconciler) usable(name string) bool {
	_, err := r.Cache.Get(r.ctx, name)
	return err == nil
}

func (r *Reconciler) passComplete(spec rollout.Spec, st *pluginsv1.RolloutStatus, s *scope) bool {
	for _, w := range st.Waves {
		for _, name := range w.Clusters {
			want, ok := s.desired[name]
			if !ok {
				continue
			}
			// Settled: at the change, failed at it or in conflict, or waiting for its member to
			// come back (which may take days: clusters that joined meanwhile must not wait for it).
			c, ok := s.clusters[name]
			if !ok {
				return false
			}
			settled := c.Phase == pluginsv1.PhaseUnreachable ||
				(c.ConfigDigest == want && (c.Phase == pluginsv1.PhaseDeployed || c.Phase == pluginsv1.PhaseFailed || c.Phase == pluginsv1.PhaseConflict))
			if !settled {
				return false
			}
		}
	}
	return true
}

func hasNewTargets(st *pluginsv1.RolloutStatus, targets map[string]*clustersv1.MemberCluster) bool {
	for name := range targets {
		if !inWaves(st, name) {
			return true
		}
	}
	return false
}

func inWaves(st *pluginsv1.RolloutStatus, name string) bool {
	for _, w := range st.Waves {
		for _, c := range w.Clusters {
			if c == name {
				return true
			}
		}
	}
	return false
}

// freeze plans a new rollout pass over targets.
func freeze(spec rollout.Spec, targets map[string]*clustersv1.MemberCluster, change string) *pluginsv1.RolloutStatus {
	ts := make([]rollout.Target, 0, len(targets))
	for name, mc := range targets {
		ts = append(ts, rollout.Target{Name: name, Labels: mc.Labels})
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
	st := &pluginsv1.RolloutStatus{ConfigDigest: change, StartedAt: &metav1.Time{Time: time.Now()}}
	for _, w := range rollout.Plan(spec, ts) {
		st.Waves = append(st.Waves, pluginsv1.WaveStatus{Name: w.Name, Clusters: append([]string{}, w.Clusters...)})
	}
	return st
}

func rolloutSpec(prel *pluginsv1.PluginRelease) (rollout.Spec, error) {
	var spec rollout.Spec
	ro := prel.Spec.Rollout
	if ro == nil {
		return spec, nil
	}
	spec.MaxConcurrency, spec.MaxFailures = ro.MaxConcurrency, ro.MaxFailures
	if ro.BakeTime != nil {
		spec.BakeTime = ro.BakeTime.Duration
	}
	for i, w := range ro.Waves {
		sel, err := metav1.LabelSelectorAsSelector(&w.ClusterSelector)
		if err != nil {
			return spec, fmt.Errorf("spec.rollout.waves[%d].clusterSelector: %s", i, err)
		}
		if sel.Empty() {
			sel = labels.Everything()
		}
		spec.Waves = append(spec.Waves, rollout.WaveSpec{Name: w.Name, Selector: sel, MaxConcurrency: w.MaxConcurrency})
	}
	return spec, nil
}

func remediationFor(prel *pluginsv1.PluginRelease, install bool) *pluginsv1.Remediation {
	a := prel.Spec.Upgrade
	if install {
		a = prel.Spec.Install
	}
	if a == nil {
		return nil
	}
	return a.Remediation
}

func notUsable(name string, err error) string {
	var nre *clustercache.NotReadyError
	if errors.As(err, &nre) {
		return fmt.Sprintf("member %s is not usable (%s); the release is applied when it is Ready", name, nre.Reason)
	}
	return fmt.Sprintf("member %s is not connected; the release is applied when it is Ready", name)
}

// ownerValue is the OwnerLabel value of this PluginRelease's releases.
func ownerValue(prel *pluginsv1.PluginRelease) string { return prel.Namespace + "." + prel.Name }

// startInstallOrUpgrade runs the action for one target in its own goroutine.
func (r *Reconciler) startInstallOrUpgrade(s *scope, name string, vals map[string]any, kind string) {
	prel, resolved, digest := s.prel.DeepCopy(), s.resolved, s.desired[name]
	c := s.cluster(name)
	from := c.ChartVersion
	if c.Revision > 0 && from == resolved.Version {
		// A redeploy of the same chart version: say why (a values change, or a phase that was
		// not Deployed), so that an unexpected one can be traced.
		r.log.Info("Redeploying a target at the same chart version", "pluginRelease", prel.Namespace+"/"+prel.Name, "member", name,
			"phase", c.Phase, "reason", c.Reason, "configDigest", c.ConfigDigest, "desiredDigest", digest, "revision", c.Revision)
	}
	phase := pluginsv1.PhaseUpgrading
	if c.Revision == 0 {
		phase = pluginsv1.PhaseInstalling
	}
	if kind != kindRecheck {
		// A recheck keeps the conflict shown (and Stalled) until it finds otherwise.
		setPhase(c, phase, fmt.Sprintf("%s %s", strings.ToLower(string(phase)), resolved))
	}
	action := opUpgrade
	if phase == pluginsv1.PhaseInstalling {
		action = opInstall
	}
	r.run(prel, name, digest, action, kind, func(ctx context.Context) outcome {
		return r.installOrUpgrade(ctx, prel, name, resolved, vals, digest, from, action)
	})
}

// run starts job for (prel, cluster) unless one is running, holding a global action slot.
func (r *Reconciler) run(prel *pluginsv1.PluginRelease, cluster, digest, action, kind string, job func(ctx context.Context) outcome) {
	key := actionKey{prel.UID, cluster}
	ctx, cancel := context.WithCancel(r.ctx)
	r.mu.Lock()
	if _, ok := r.running[key]; ok {
		r.mu.Unlock()
		cancel()
		return
	}
	r.running[key] = &runningAction{action: action, cancel: cancel, digest: digest, kind: kind}
	r.mu.Unlock()
	obj := &pluginsv1.PluginRelease{ObjectMeta: metav1.ObjectMeta{Namespace: prel.Namespace, Name: prel.Name}}
	go func() {
		defer cancel()
		var o outcome
		log := r.log.WithValues("pluginRelease", prel.Namespace+"/"+prel.Name, "member", cluster, "action", action)
		queued := time.Now()
		if r.slots.acquire(ctx, action != opDriftCheck) {
			r.mu.Lock()
			if a := r.running[key]; a != nil {
				a.started = true
			}
			r.mu.Unlock()
			start := time.Now()
			o = job(ctx)
			r.slots.release()
			log.V(1).Info("Action finished", "queued", start.Sub(queued).String(), "took", time.Since(start).String(), "failed", o.failed)
		} else {
			o = outcome{action: action, failed: true, phase: pluginsv1.PhasePending, msg: "cancelled before it started"}
		}
		if ctx.Err() != nil && r.ctx.Err() != nil {
			// Shutting down: nothing is recorded; the next manager recovers the release.
			r.mu.Lock()
			delete(r.running, key)
			r.mu.Unlock()
			return
		}
		o.kind = kind
		r.mu.Lock()
		delete(r.running, key)
		// Appended, never replacing: an outcome not yet in status (its patch failed) must not be
		// lost to the next action's.
		r.done[key] = append(r.done[key], o)
		r.mu.Unlock()
		select {
		case r.wake <- event.GenericEvent{Object: obj}:
		case <-r.ctx.Done():
		}
	}()
}

func (r *Reconciler) installOrUpgrade(ctx context.Context, prel *pluginsv1.PluginRelease, cluster string,
	resolved *chartrepo.Resolved, vals map[string]any, digest, from, action string) outcome {
	o := outcome{digest: digest, fromVersion: from, version: resolved.Version, app: resolved.AppVersion, started: time.Now()}
	finish := func(phase pluginsv1.ClusterPhase, failed bool, msg string) outcome {
		o.phase, o.failed, o.msg, o.finished = phase, failed, msg, time.Now()
		return o
	}
	// failWith ends the action on err: cut off if the member went away, else Failed.
	failWith := func(err error) outcome {
		if r.cutOff(cluster, err) {
			o.unreachable = true
			return finish(pluginsv1.PhaseFailed, true, "cut off: the member became unreachable ("+r.clean(prel.UID, err)+"); retried when it is Ready again")
		}
		return finish(pluginsv1.PhaseFailed, true, r.clean(prel.UID, err))
	}
	// The action this target was started for, until the record says which it is: a failure before
	// that (the record unreadable) spends that action's remediation retries.
	o.action = action
	acc, err := r.Cache.Get(ctx, cluster)
	if err != nil {
		o.unreachable = true
		return finish(pluginsv1.PhaseUnreachable, true, notUsable(cluster, err))
	}
	log := r.log.WithValues("pluginRelease", prel.Namespace+"/"+prel.Name, "member", cluster)
	hc, err := helm.New(acc, prel.GetReleaseName(), prel.GetTargetNamespace(), log, r.redactor(prel.UID))
	if err != nil {
		return failWith(err)
	}
	last, err := hc.Last()
	if err != nil {
		return failWith(err)
	}
	owner := ownerValue(prel)
	// Ownership first: a pending release of someone else's is their lock, not ours to break.
	if last != nil && last.Labels[helm.OwnerLabel] != owner && !prel.Spec.Adopt {
		return finish(pluginsv1.PhaseConflict, true, fmt.Sprintf("a release %s/%s exists that this PluginRelease did not install; set spec.adopt: true to take it over",
			prel.GetTargetNamespace(), prel.GetReleaseName()))
	}
	if recovered, err := hc.RecoverPending(last); err != nil {
		return failWith(err)
	} else if recovered {
		log.Info("Recovered a pending release left by an interrupted action")
		if last, err = hc.Last(); err != nil {
			return failWith(err)
		}
	}
	ch, err := resolved.Fresh()
	if err != nil {
		return finish(pluginsv1.PhaseFailed, true, err.Error())
	}
	chartLabel := helm.ChartLabelValue(resolved.Digest)
	opts := helm.Options{CreateNamespace: prel.Spec.CreateNamespace, MaxHistory: prel.Spec.GetMaxHistory(),
		Labels:      map[string]string{helm.OwnerLabel: owner, helm.ChartLabel: chartLabel},
		Description: "Paddock PluginRelease " + prel.Namespace + "/" + prel.Name}
	install := last == nil || last.Info == nil || last.Info.Status == release.StatusUninstalled
	var rel *release.Release
	if install {
		o.action = opInstall
		opts.Timeout, opts.Wait = prel.Spec.Install.TimeoutOr(pluginsv1.DefaultActionTimeout), prel.Spec.Install != nil && prel.Spec.Install.Wait
		// History kept at an uninstall (uninstall.keepHistory): installed over it, a new revision.
		opts.Replace = last != nil && last.Info != nil && last.Info.Status == release.StatusUninstalled
		rel, err = hc.Install(ctx, ch, vals, opts)
		if err != nil && r.cutOff(cluster, err) {
			o.unreachable = true
			return finish(pluginsv1.PhaseFailed, true, "install cut off: the member became unreachable ("+r.clean(prel.UID, err)+"); retried when it is Ready again")
		}
		if err != nil {
			msg := "install failed: " + r.clean(prel.UID, err)
			// A failed install is uninstalled, so that the next attempt starts clean; not when it
			// was cancelled (shutdown): Helm may still be working, and the next manager recovers it.
			// Only a release this attempt made: the record is read again, and one that is not
			// ours (another PluginRelease that installed the same name a moment before, which is
			// why this install failed) is left alone.
			if ctx.Err() == nil {
				if cur, lerr := hc.Last(); lerr == nil && cur != nil && cur.Labels[helm.OwnerLabel] == owner &&
					(last == nil || cur.Version > last.Version) {
					if uerr := hc.Uninstall(opts.Timeout, opts.Replace); uerr != nil {
						msg += "; cleaning it up failed too: " + r.clean(prel.UID, uerr)
					}
				}
			}
			return finish(pluginsv1.PhaseFailed, true, msg)
		}
	} else if alreadyRunning(last, owner, chartLabel, resolved, vals) && r.rendersAs(ctx, hc, resolved, vals, last) {
		// The member runs this chart with these values already, as this PluginRelease left it:
		// status lost the outcome (the manager stopped before writing it) or its digests changed
		// (a new digest key). Recorded, without another Helm revision.
		o.action, o.fromVersion, o.recorded = opUpgrade, resolved.Version, true
		o.revision, o.manifestDigest = last.Version, r.digests.manifest(last.Manifest)
		return finish(pluginsv1.PhaseDeployed, false, fmt.Sprintf("%s %s, revision %d (already running these values; no Helm action)",
			resolved.Name, resolved.Version, last.Version))
	} else {
		o.action = opUpgrade
		if from == "" && last.Chart != nil && last.Chart.Metadata != nil {
			o.fromVersion = last.Chart.Metadata.Version
		}
		opts.Timeout, opts.Wait = prel.Spec.Upgrade.TimeoutOr(pluginsv1.DefaultActionTimeout), prel.Spec.Upgrade != nil && prel.Spec.Upgrade.Wait
		rel, err = hc.Upgrade(ctx, ch, vals, opts)
		if err != nil && r.cutOff(cluster, err) {
			o.unreachable = true
			return finish(pluginsv1.PhaseFailed, true, "upgrade cut off: the member became unreachable ("+r.clean(prel.UID, err)+"); retried when it is Ready again")
		}
		if err != nil {
			msg := "upgrade failed: " + r.clean(prel.UID, err)
			// Remediation undoes what the upgrade wrote: one that failed before writing a
			// revision (a render error, a refused value) left the member as it was.
			wrote := true
			if cur, lerr := hc.Last(); lerr == nil && cur != nil && cur.Version == last.Version {
				wrote = false
			}
			if rem := remediationFor(prel, false); rem != nil && ctx.Err() == nil && !wrote {
				msg += "; nothing to remediate (the upgrade wrote no revision: the member is as it was)"
			} else if rem != nil && ctx.Err() == nil {
				switch rem.Strategy {
				case pluginsv1.RemediationUninstall:
					if uerr := hc.Uninstall(opts.Timeout, false); uerr != nil {
						msg += "; uninstalling failed too: " + r.clean(prel.UID, uerr)
					} else {
						msg += "; uninstalled (remediation)"
					}
				default:
					// Back to the revision that last ran well: the deployed one (a failed upgrade
					// leaves it deployed), not merely the one before (an interrupted or failed
					// attempt, whose manifest never ran).
					to, derr := hc.Deployed()
					switch {
					case derr != nil:
						msg += "; not rolled back: reading the deployed revision failed: " + r.clean(prel.UID, derr)
					case to == nil:
						msg += "; not rolled back: no revision was ever deployed well"
					default:
						rb := &rollbackOutcome{started: time.Now(), from: resolved.Version}
						if to.Chart != nil && to.Chart.Metadata != nil {
							rb.to = to.Chart.Metadata.Version
						}
						if rerr := hc.Rollback(opts.Timeout, opts.MaxHistory, to.Version); rerr != nil {
							rb.failed, rb.msg = true, fmt.Sprintf("rolling back to revision %d failed: %s", to.Version, r.clean(prel.UID, rerr))
							msg += "; rolling back failed too: " + r.clean(prel.UID, rerr)
						} else {
							rb.msg = fmt.Sprintf("rolled back to revision %d after the failed upgrade", to.Version)
							if cur, lerr := hc.Last(); lerr == nil && cur != nil {
								rb.revision = cur.Version
							}
							msg += fmt.Sprintf("; rolled back to revision %d (remediation)", to.Version)
						}
						rb.finished = time.Now()
						o.rollback = rb
					}
				}
			}
			return finish(pluginsv1.PhaseFailed, true, msg)
		}
	}
	o.revision, o.manifestDigest = rel.Version, r.digests.manifest(rel.Manifest)
	return finish(pluginsv1.PhaseDeployed, false, fmt.Sprintf("%s %s, revision %d", resolved.Name, resolved.Version, rel.Version))
}

// rendersAs says whether the chart with vals renders (locally, no cluster) exactly manifest: a
// release record whose labels and values say "already running" is believed only if its manifest
// is what this chart makes, since whoever may write Secrets in the release namespace can write
// a record too.
func (r *Reconciler) rendersAs(ctx context.Context, hc *helm.Client, resolved *chartrepo.Resolved, vals map[string]any, last *release.Release) bool {
	ch, err := resolved.Fresh()
	if err != nil {
		return false
	}
	// Hooks too: they are not in the manifest, and a forged one would run with Paddock's
	// credentials at the next uninstall or rollback.
	manifest, hooks, err := hc.Render(ctx, ch, deepCopy(vals))
	return err == nil && manifest == last.Manifest && helm.SameHooks(hooks, last.Hooks)
}

// alreadyRunning says whether last, the member's latest release record, is deployed, this
// PluginRelease's, made from the chart archive chartLabel names, with exactly vals.
func alreadyRunning(last *release.Release, owner, chartLabel string, resolved *chartrepo.Resolved, vals map[string]any) bool {
	if last == nil || last.Info == nil || last.Info.Status != release.StatusDeployed ||
		last.Labels[helm.OwnerLabel] != owner || last.Labels[helm.ChartLabel] != chartLabel || chartLabel == "" {
		return false
	}
	// The chart's own metadata too: a rollback may carry labels of another revision.
	if last.Chart == nil || last.Chart.Metadata == nil || last.Chart.Metadata.Name != resolved.Name ||
		last.Chart.Metadata.Version != resolved.Version {
		return false
	}
	// Compared as JSON (keys sorted; the record's numbers come back as float64).
	a, err1 := json.Marshal(last.Config)
	b, err2 := json.Marshal(vals)
	if len(last.Config) == 0 && len(vals) == 0 {
		return true
	}
	return err1 == nil && err2 == nil && bytes.Equal(a, b)
}

// startUninstall removes the release from a cluster that is no longer a target (or from every
// cluster when the PluginRelease is deleted).
func (r *Reconciler) startUninstall(ctx context.Context, s *scope, name string, deleting bool) {
	prel := s.prel.DeepCopy()
	c := s.cluster(name)
	from := c.ChartVersion
	if c.Revision == 0 && (c.Phase == pluginsv1.PhasePending || c.Phase == pluginsv1.PhaseWaiting) {
		// Never acted on there: nothing to remove. An install that was under way, failed or cut
		// off by the member going away may have left a release: uninstalled (a missing one is
		// not an error). So may a conflict's recheck that found it gone and installed (status
		// shows Conflict until its outcome is written): the uninstall leaves a release that is
		// not this PluginRelease's alone.
		delete(s.clusters, name)
		return
	}
	key := actionKey{prel.UID, name}
	r.mu.Lock()
	after, wait := r.uninstallAfter[key]
	r.mu.Unlock()
	if wait && time.Now().Before(after) {
		// The last attempt failed a moment ago: retried after RetryDelay, not in a loop.
		if s.retryAt.IsZero() || after.Before(s.retryAt) {
			s.retryAt = after
		}
		return
	}
	setPhase(c, pluginsv1.PhaseUninstalling, "uninstalling")
	digest := c.ConfigDigest // c is this pass's: not read from the action's goroutine
	r.run(prel, name, digest, opUninstall, "", func(ctx context.Context) outcome {
		o := outcome{action: opUninstall, fromVersion: from, started: time.Now(), digest: digest}
		done := func(failed bool, msg string) outcome {
			o.failed, o.msg, o.finished = failed, msg, time.Now()
			o.phase = pluginsv1.PhaseUninstalling
			return o
		}
		acc, err := r.Cache.Get(ctx, name)
		if err != nil {
			acc, err = r.Cache.GetForCleanup(ctx, name)
		}
		if err != nil {
			o.unreachable = true
			return done(true, notUsable(name, err))
		}
		hc, err := helm.New(acc, prel.GetReleaseName(), prel.GetTargetNamespace(), r.log, r.redactor(prel.UID))
		if err != nil {
			return done(true, err.Error())
		}
		last, err := hc.Last()
		if err != nil {
			return done(true, r.clean(prel.UID, err))
		}
		if last != nil && last.Labels[helm.OwnerLabel] != ownerValue(prel) {
			// Not ours (adopted releases carry our label after their first upgrade): leave it.
			return done(false, "the release there is not this PluginRelease's; left in place")
		}
		if _, err := hc.RecoverPending(last); err != nil {
			return done(true, r.clean(prel.UID, err))
		}
		keep := prel.Spec.Uninstall != nil && prel.Spec.Uninstall.KeepHistory
		timeout := pluginsv1.DefaultUninstallTimeout
		if prel.Spec.Uninstall != nil && prel.Spec.Uninstall.Timeout != nil {
			timeout = prel.Spec.Uninstall.Timeout.Duration
		}
		if err := hc.Uninstall(timeout, keep); err != nil {
			return done(true, "uninstall failed: "+r.clean(prel.UID, err))
		}
		return done(false, "uninstalled")
	})
}

func (r *Reconciler) deletionGrace() time.Duration {
	if r.DeletionGracePeriod > 0 {
		return r.DeletionGracePeriod
	}
	return DefaultDeletionGracePeriod
}

// giveUpUninstall drops a cluster that left the targets once uninstalling from it has failed for
// longer than the grace period (its member unreachable or gone): the release is left there, with a
// Warning event, rather than keeping the PluginRelease unready for ever.
func (r *Reconciler) giveUpUninstall(s *scope, name string, c *pluginsv1.ClusterReleaseStatus, now time.Time) bool {
	grace := r.deletionGrace()
	if c.Phase != pluginsv1.PhaseUninstalling || c.Message == "uninstalling" || !r.failingLonger(s, name, c, grace) {
		return false
	}
	r.skipUninstall(s, name, c, grace)
	return true
}

// uninstallFailure is since when uninstalling from a target has been failing.
type uninstallFailure struct {
	since time.Time
	// seen: this process saw an attempt fail (since may come from status, after a restart).
	seen bool
}

// failingLonger says whether uninstalling from cluster (c, in Uninstalling) has been failing for
// longer than grace, and failed once more since this process started. After a restart the
// failures status recorded since the last other action there say since when (the earliest kept:
// history is bounded, so a grace may run longer, never shorter), so a manager that restarts more
// often than the grace still gives up, after one attempt of its own (a member back meanwhile is
// not given up unseen). Never from before c entered Uninstalling: an earlier removal that failed
// and then rejoined the targets says nothing about this one.
func (r *Reconciler) failingLonger(s *scope, cluster string, c *pluginsv1.ClusterReleaseStatus, grace time.Duration) bool {
	key := actionKey{s.prel.UID, cluster}
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.uninstallFailing[key]
	if !ok {
		if f.since, ok = failingSinceInHistory(s.prel, cluster); !ok {
			return false
		}
		r.uninstallFailing[key] = f
	}
	since := f.since
	if t := transitioned(c); t.After(since) {
		since = t
	}
	return f.seen && time.Since(since) > grace
}

// failingSinceInHistory is the earliest of the failed uninstalls status records for cluster
// since its last other operation there (history is newest first).
func failingSinceInHistory(prel *pluginsv1.PluginRelease, cluster string) (time.Time, bool) {
	var since time.Time
	for _, h := range prel.Status.History {
		if h.Cluster != cluster {
			continue
		}
		if h.Action != opUninstall || h.Result != "Failed" {
			break
		}
		since = h.Time.Time
	}
	return since, !since.IsZero()
}

func (r *Reconciler) skipUninstall(s *scope, name string, c *pluginsv1.ClusterReleaseStatus, grace time.Duration) {
	prel, msg := s.prel, c.Message
	r.mu.Lock()
	delete(r.uninstallFailing, actionKey{prel.UID, name})
	delete(r.uninstallAfter, actionKey{prel.UID, name})
	r.mu.Unlock()
	delete(s.clusters, name)
	r.forgetDrift(prel.UID, name)
	s.events = append(s.events, func() {
		if r.Recorder != nil {
			r.Recorder.Eventf(prel, memberRef(name), "Warning", "UninstallSkipped", "Uninstall",
				"left %s in %s: %s (after %s)", prel.GetReleaseName(), name, truncate(msg, 300), grace)
		}
	})
}

func (r *Reconciler) reconcileDelete(ctx context.Context, s *scope) (ctrl.Result, error) {
	prel := s.prel
	r.mu.Lock()
	for k, a := range r.running {
		// Drift checks, and actions still queued for a slot, are moot now: cancelled. Running
		// installs and upgrades finish (bounded by their timeout), then are uninstalled.
		if k.uid == prel.UID && (a.action == opDriftCheck || !a.started) {
			a.cancel()
		}
	}
	r.mu.Unlock()
	if r.anyRunning(prel.UID, true) {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
	}
	grace := r.deletionGrace()
	expired := time.Since(prel.DeletionTimestamp.Time) > grace
	for name, c := range s.clusters {
		// Given up only after failing for a grace period of its own: an uninstall that ran long
		// (hooks, a timeout) and failed once is retried, not dropped.
		if expired && c.Phase == pluginsv1.PhaseUninstalling && c.Message != "uninstalling" && r.failingLonger(s, name, c, grace) {
			r.skipUninstall(s, name, c, grace)
			continue
		}
		r.startUninstall(ctx, s, name, true)
	}
	if len(s.clusters) > 0 {
		next := 5 * time.Second
		if !s.retryAt.IsZero() {
			next = max(min(time.Until(s.retryAt), next), 500*time.Millisecond)
		}
		return ctrl.Result{RequeueAfter: next}, nil
	}
	r.forgetDrift(prel.UID, "")
	r.mu.Lock()
	delete(r.secrets, prel.UID)
	for k := range r.uninstallAfter {
		if k.uid == prel.UID {
			delete(r.uninstallAfter, k)
		}
	}
	for k := range r.uninstallFailing {
		if k.uid == prel.UID {
			delete(r.uninstallFailing, k)
		}
	}
	for k := range r.rechecked {
		if k.uid == prel.UID {
			delete(r.rechecked, k)
		}
	}
	r.mu.Unlock()
	orig := prel.DeepCopy()
	controllerutil.RemoveFinalizer(prel, Finalizer)
	if err := r.Client.Patch(ctx, prel, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	s.deleted = true
	return ctrl.Result{}, nil
}

// valuesReader reads values ConfigMaps from the cache and Secrets uncached.
func (r *Reconciler) valuesReader() client.Reader {
	return splitReader{cached: r.Client, secrets: r.APIReader}
}

type splitReader struct{ cached, secrets client.Reader }

func (s splitReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*corev1.Secret); ok && s.secrets != nil {
		return s.secrets.Get(ctx, key, obj, opts...)
	}
	return s.cached.Get(ctx, key, obj, opts...)
}

func (s splitReader) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	return s.cached.List(ctx, list, opts...)
}

// connectionErrors are what an action's error says when the member stopped answering (Helm
// flattens the errors it wraps, so the text is what is left).
var connectionErrors = []string{"connection refused", "connection reset", "no route to host", "i/o timeout",
	"http2: client connection lost", "server closed idle connection", "unexpected EOF", ": EOF",
	"connection is not admitted", "TLS handshake timeout", "network is unreachable", "broken pipe"}

// cutOff says whether an action failed because the member went away rather than because of the
// chart: a connection error, or the member is not usable any more.
func (r *Reconciler) cutOff(cluster string, err error) bool {
	if !r.usable(cluster) || errors.Is(err, clustercache.ErrConnectionNotAdmitted) {
		return true
	}
	// The member's apiserver answered (an admission webhook it could not reach, say): the
	// chart's or the cluster's problem, counted and remediated as any failure.
	var st apierrors.APIStatus
	if errors.As(err, &st) || strings.Contains(err.Error(), "failed calling webhook") {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	msg := err.Error()
	for _, s := range connectionErrors {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// clean is sanitize of err with the release's secret values redacted first (before lines are
// joined and the text truncated, which would break a value up).
func (r *Reconciler) clean(uid types.UID, err error) string {
	return sanitize(errors.New(r.redactor(uid)(err.Error())))
}

// sanitize keeps an action error short and on one line: Helm joins several errors as
// "N errors occurred:\n\t* a\n\t* b", which becomes "a; b".
func sanitize(err error) string {
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "* "))
		if l == "" || multiErrorHeader.MatchString(l) {
			continue
		}
		parts = append(parts, l)
	}
	return truncate(strings.Join(parts, "; "), 400)
}

var multiErrorHeader = regexp.MustCompile(`^\d+ errors? occurred:$`)

// truncate cuts s to at most n bytes plus "...", on a rune boundary (a status must be valid
// UTF-8). It is idempotent: a truncated string truncates to itself.
func truncate(s string, n int) string {
	if len(s) <= n || (len(s) <= n+3 && strings.HasSuffix(s, "...")) {
		return s
	}
	k := n
	for k > 0 && !utf8.RuneStart(s[k]) {
		k--
	}
	return s[:k] + "..."
}
