// Package membercluster reconciles MemberClusters: it validates the kubeconfig, connects the
// member through the cluster cache, probes its health and identity, and reports all of it in
// status, events and metrics.
package membercluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
)

// secretIndex indexes MemberClusters by "namespace/name" of their kubeconfig Secret.
const secretIndex = "spec.attach.kubeconfigSecretRef"

// Defaults of the Reconciler's knobs.
const (
	DefaultDeletionGracePeriod = 2 * time.Minute
	DefaultStatusHeartbeat     = 10 * time.Minute
	DefaultMaxConcurrentProbes = 500
)

// Reconciler reconciles MemberCluster objects.
type Reconciler struct {
	// Client reads MemberClusters and Secret metadata from the cache and writes status.
	Client client.Client
	// APIReader reads Secret data uncached, only when a Secret's resourceVersion changed.
	APIReader client.Reader
	// Cache is the access layer's write side (only this controller connects, admits and revokes;
	// the others are given a clustercache.Reader).
	Cache clustercache.Writer
	// Policy checks kubeconfigs.
	Policy clustercache.Policy
	// Recorder emits events.
	Recorder events.EventRecorder
	// Clock is injectable for tests: the prober reads the time and schedules its probes with it.
	// AfterFunc callbacks must run in their own goroutine, as time.AfterFunc's do (the prober reads
	// the clock in them; k8s.io/utils/clock/testing.FakeClock calls them under its lock, so wrap
	// it). Probe timeouts are contexts on real time.
	Clock clock.WithDelayedExecution
	// DeletionGracePeriod bounds how long deletion waits for an unreachable member.
	DeletionGracePeriod time.Duration
	// StatusHeartbeat is how stale lastProbeTime may get before status is written anyway.
	StatusHeartbeat time.Duration
	// MaxConcurrentProbes bounds the probes in flight across all members.
	MaxConcurrentProbes int
	// SecretNamespaces are the namespaces kubeconfig Secrets may live in
	// (--kubeconfig-secret-namespaces); empty allows any (tests only: the manager always sets it).
	SecretNamespaces []string

	ctx            context.Context
	log            logr.Logger
	slots          *probeSlots
	inventorySlots chan struct{}
	probeDone      chan event.GenericEvent

	mu     sync.Mutex
	health map[types.UID]*memberState
	// conflicts counts the conflicts in a row per MemberCluster name.
	conflicts map[string]int
	// secrets remembers, per MemberCluster name, which kubeconfig Secret metadata the current
	// connection's version was last confirmed for.
	secrets map[string]secretSeen
	// cleanupProbes is when deletion last probed a member to prove a connection for cleanup.
	cleanupProbes map[types.UID]time.Time
	// deletions: the deletions confirmed against the apiserver, and the outcome of their cleanup
	// once it ran (so that a retried finalizer patch never cleans up a second time).
	deletions map[types.UID]*deletionState
}

// deletionState is what a deletion has done so far.
type deletionState struct {
	cleaned bool
	event   *pendingEvent
}

// secretSeen: the Secret's metadata ("uid/resourceVersion/key/context") as last read, and the
// connection version (a digest of the kubeconfig data) it held then.
type secretSeen struct{ seen, version string }

// memberState is what the controller remembers about a member between reconciles. mu guards
// what the prober writes; identityMismatch, markerGen and verifiedGen are only touched by
// reconciles, which controller-runtime never runs in parallel for one member.
type memberState struct {
	mu     sync.Mutex
	uid    types.UID
	name   string
	health health
	// live is the last liveness result and inv the last successful inventory, both through acc
	// (reset when acc is replaced); invErr is the last inventory failure.
	live   *clustercache.LivenessResult
	inv    *clustercache.InventoryResult
	invErr string
	// probedConn: a liveness probe through acc has completed. hcPending: spec.healthCheck changed
	// and no probe with the new settings has completed.
	probedConn, hcPending bool
	// replaced: acc replaced another connection in this process (a Secret change, an unpause, a
	// fixed kubeconfig), so status shows Reconciling until a probe through it is in.
	replaced, everConnected bool

	inFlight, invInFlight, probeNow bool
	// maxSlotWait is the longest a probe of this member waited for a slot (tests read it).
	maxSlotWait         time.Duration
	lastStart, invStart time.Time
	// epoch numbers schedules: a timer from an older epoch does nothing.
	epoch  uint64
	active bool
	acc    *clustercache.Accessor
	hc     clustersv1.HealthCheckSpec
	timer  clock.Timer
	// lastPublished is the lastProbeTime that status holds (as the last reconcile left it).
	lastPublished time.Time

	// identityMismatch is the clusterID last observed when it differed from status.clusterID
	// (seededMismatch after a restart, until a probe reads it again).
	identityMismatch string
	// verifiedGen is the connection (Accessor.Generation) through which a probe confirmed the
	// pinned identity; markerGen the one the marker namespace was ensured through.
	verifiedGen, markerGen uint64
	// pinnedID is status.clusterID as the last reconcile saw it (the prober reads it).
	pinnedID string
	// flippedID is set by the prober when a successful probe through acc read a clusterID other
	// than pinnedID, and cleared by one that reads pinnedID again or by a new connection: a later
	// failed probe must not make the reconcile forget that this connection reached another cluster.
	flippedID string
	// markerWatchGen is the connection the marker namespace is watched through; markerStop ends
	// that watch; markerLost is set by the watch when the marker namespace goes.
	markerWatchGen uint64
	markerStop     func()
	markerLost     atomic.Bool
	// markerEndedGen is set by the marker watch's handler to its connection when the access
	// layer ended that watch (revoked, replaced, dropped, too large).
	markerEndedGen atomic.Uint64
}

// seededMismatch stands for "the identity had changed when the manager last ran" until a probe
// through the new connection reads the member's clusterID.
const seededMismatch = "?"

// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters/finalizers,verbs=update
// Kubeconfig Secrets are read only in the namespaces of --kubeconfig-secret-namespaces: the chart
// grants get/list/watch on Secrets there with namespaced Roles (templates/kubeconfig-secrets-rbac.yaml),
// never cluster-wide.
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the controller.
func (r *Reconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, opts controller.Options) error {
	r.init(ctx, mgr.GetLogger().WithName("membercluster-prober"))
	if err := mgr.GetFieldIndexer().IndexField(ctx, &clustersv1.MemberCluster{}, secretIndex, func(o client.Object) []string {
		mc := o.(*clustersv1.MemberCluster)
		if mc.Spec.Attach == nil {
			return nil
		}
		ref := mc.Spec.Attach.KubeconfigSecretRef
		return []string{ref.Namespace + "/" + ref.Name}
	}); err != nil {
		return fmt.Errorf("indexing MemberClusters by kubeconfig Secret: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("membercluster").
		For(&clustersv1.MemberCluster{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		// Secrets are watched as metadata only: the manager does not keep every Secret of the
		// management cluster in memory; data is read when a resourceVersion changes.
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.membersForSecret)).
		// Completed probes requeue their member.
		WatchesRawSource(source.Channel(r.probeDone, &handler.EnqueueRequestForObject{})).
		WithOptions(opts).
		Complete(r)
}

func (r *Reconciler) membersForSecret(ctx context.Context, o client.Object) []reconcile.Request {
	var list clustersv1.MemberClusterList
	if err := r.Client.List(ctx, &list, client.MatchingFields{secretIndex: o.GetNamespace() + "/" + o.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list MemberClusters for Secret")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, mc := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: mc.Name}})
	}
	return reqs
}

// init defaults the knobs and starts the prober's state; SetupWithManager calls it.
func (r *Reconciler) init(ctx context.Context, log logr.Logger) {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.DeletionGracePeriod == 0 {
		r.DeletionGracePeriod = DefaultDeletionGracePeriod
	}
	if r.StatusHeartbeat == 0 {
		r.StatusHeartbeat = DefaultStatusHeartbeat
	}
	if r.MaxConcurrentProbes <= 0 {
		r.MaxConcurrentProbes = DefaultMaxConcurrentProbes
	}
	r.health = map[types.UID]*memberState{}
	r.conflicts = map[string]int{}
	r.secrets = map[string]secretSeen{}
	r.cleanupProbes = map[types.UID]time.Time{}
	r.deletions = map[types.UID]*deletionState{}
	r.ctx, r.log = ctx, log
	r.slots = newProbeSlots(r.MaxConcurrentProbes)
	// Inventory reads are short on healthy members and can be large (a node list): few at once.
	r.inventorySlots = make(chan struct{}, min(max(4, r.MaxConcurrentProbes/20), 32))
	r.probeDone = make(chan event.GenericEvent, 1024)
}

// conflictRequeue is how soon a reconcile whose patch met a conflict runs again.
const conflictRequeue = 500 * time.Millisecond

// Reconcile moves a MemberCluster towards its desired state.
//
// A patch refused for a conflict (the object changed since the informer cache delivered it: at
// scale, often our own previous status write not seen yet) is not an error: the reconcile runs
// again shortly, on a fresher copy. As an error it would go through the workqueue's failure
// backoff, which grows per retry, and at thousands of members attaching at once would hold back
// most of them.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	res, err := r.reconcile(ctx, req)
	conflict := err != nil && apierrors.IsConflict(err)
	r.mu.Lock()
	if conflict {
		r.conflicts[req.Name]++
	} else {
		delete(r.conflicts, req.Name)
	}
	n := r.conflicts[req.Name]
	r.mu.Unlock()
	if !conflict {
		return res, err
	}
	conflictsTotal.Inc()
	if n <= maxQuickConflictRetries {
		ctrl.LoggerFrom(ctx).V(1).Info("MemberCluster changed since it was read; reconciling again", "member", req.Name)
		return ctrl.Result{RequeueAfter: conflictRequeue/2 + rand.N(conflictRequeue)}, nil
	}
	// A conflict that keeps coming back (another writer racing us) backs off, doubling up to
	// maxConflictBackoff. Computed here: a RequeueAfter result makes the workqueue forget the
	// item's failures, so its own backoff would start again at every conflict.
	delay := maxConflictBackoff
	if shift := n - maxQuickConflictRetries; shift < 20 {
		delay = min(conflictRequeue<<shift, maxConflictBackoff)
	}
	ctrl.LoggerFrom(ctx).Info("MemberCluster keeps changing while it is reconciled; backing off", "member", req.Name,
		"conflictsInARow", n, "retryIn", delay)
	return ctrl.Result{RequeueAfter: delay}, nil
}

// maxConflictBackoff bounds the backoff of conflicts that keep coming back.
const maxConflictBackoff = 5 * time.Minute

// maxQuickConflictRetries is how many conflicts in a row are retried quickly.
const maxQuickConflictRetries = 5

func (r *Reconciler) reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	mc := &clustersv1.MemberCluster{}
	if err := r.Client.Get(ctx, req.NamespacedName, mc); err != nil {
		if apierrors.IsNotFound(err) {
			r.Cache.Disconnect(req.Name)
			r.forgetStateByName(req.Name, "")
			forgetMetrics(req.Name)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}

	if !mc.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, mc)
	}

	if !controllerutil.ContainsFinalizer(mc, clustersv1.MemberClusterFinalizer) {
		orig := mc.DeepCopy()
		controllerutil.AddFinalizer(mc, clustersv1.MemberClusterFinalizer)
		// Optimistic lock: a merge patch of metadata.finalizers replaces the whole list, so it must
		// not be computed from a stale copy (another owner's finalizer would be lost).
		if err := r.Client.Patch(ctx, mc, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}

	s := &scope{mc: mc, orig: mc.DeepCopy(), state: r.stateFor(mc)}
	defer func() {
		if s.patchFailed {
			return // the same patch would fail again; the retry recomputes it
		}
		if err := r.patchStatus(ctx, s); err != nil && !errors.Is(err, errGone) {
			if retErr == nil {
				retErr = err
			}
		}
	}()

	if mc.Spec.Paused {
		deactivate(s.state)
		// The connection is dropped: after an unpause a new one proves the identity again (the
		// cluster behind the kubeconfig may have changed meanwhile).
		r.Cache.Revoke(mc.Name, clustersv1.ReasonPaused, true)
		r.Cache.Disconnect(mc.Name)
		s.paused = true
		return ctrl.Result{}, nil
	}

	return r.reconcileNormal(ctx, s)
}

// stateFor returns the in-memory state of a member, seeding it from status on first sight.
func (r *Reconciler) stateFor(mc *clustersv1.MemberCluster) *memberState {
	r.mu.Lock()
	st, ok := r.health[mc.UID]
	if !ok {
		st = &memberState{uid: mc.UID, name: mc.Name, health: seedHealth(r.Clock.Now(), &mc.Status)}
		if c := findCondition(mc.Status.Conditions, clustersv1.StalledCondition); c != nil &&
			c.Status == metav1.ConditionTrue && c.Reason == clustersv1.ReasonClusterIdentityChanged {
			// The identity had changed when the manager last ran: stay Stalled until a probe says
			// otherwise, never briefly usable.
			st.identityMismatch = seededMismatch
		}
		r.health[mc.UID] = st
	}
	r.mu.Unlock()
	if !ok {
		// A MemberCluster deleted without our finalizer and recreated under the same name: the
		// old one's prober must not live on.
		r.forgetStateByName(mc.Name, mc.UID)
	}
	return st
}

func (r *Reconciler) forgetState(uid types.UID) {
	r.mu.Lock()
	st := r.health[uid]
	delete(r.health, uid)
	delete(r.cleanupProbes, uid)
	delete(r.deletions, uid)
	if st != nil {
		delete(r.secrets, st.name)
	}
	r.mu.Unlock()
	if st != nil {
		deactivate(st)
		st.stopMarkerWatch()
	}
}

func (st *memberState) stopMarkerWatch() {
	st.mu.Lock()
	stop := st.markerStop
	st.markerStop, st.markerWatchGen = nil, 0
	st.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// forgetStateByName drops the state of every MemberCluster of that name except keep.
func (r *Reconciler) forgetStateByName(name string, keep types.UID) {
	r.mu.Lock()
	delete(r.secrets, name)
	var gone []*memberState
	for uid, st := range r.health {
		if st.name == name && uid != keep {
			gone = append(gone, st)
			delete(r.health, uid)
			delete(r.cleanupProbes, uid)
			delete(r.deletions, uid)
		}
	}
	r.mu.Unlock()
	for _, st := range gone {
		deactivate(st)
		st.stopMarkerWatch()
	}
}

// heartbeat is how stale lastProbeTime may get in status before it is written anyway, spread
// over [StatusHeartbeat, 1.1×StatusHeartbeat) by UID so that a fleet attached at once does not
// write its heartbeats at once.
func (r *Reconciler) heartbeat(uid types.UID) time.Duration {
	h := fnv.New32a()
	_, _ = h.Write([]byte(uid))
	return r.StatusHeartbeat + time.Duration(uint64(h.Sum32())%1000)*r.StatusHeartbeat/10000
}

// patchStatus computes conditions and writes status when it changed (or the heartbeat is due),
// then emits the events of the transitions it recorded. It is idempotent: after a successful
// write, s.orig is what was written.
func (r *Reconciler) patchStatus(ctx context.Context, s *scope) error {
	computeStatus(s)
	updateMetrics(s)

	newStatus := s.mc.Status.DeepCopy()
	oldStatus := s.orig.Status.DeepCopy()
	// lastProbeTime and lastSuccessfulProbeTime alone do not justify a write until the heartbeat;
	// a write for anything else takes the fresh ones along (a member that just turned not Ready
	// shows when it last answered, not a time up to a heartbeat old).
	heartbeatDue := oldStatus.LastProbeTime == nil ||
		(newStatus.LastProbeTime != nil && newStatus.LastProbeTime.Sub(oldStatus.LastProbeTime.Time) >= r.heartbeat(s.mc.UID))
	if !heartbeatDue {
		withOldTimes := newStatus.DeepCopy()
		withOldTimes.LastProbeTime, withOldTimes.LastSuccessfulProbeTime = oldStatus.LastProbeTime, oldStatus.LastSuccessfulProbeTime
		if equality.Semantic.DeepEqual(withOldTimes, oldStatus) {
			s.mc.Status = *withOldTimes
			return nil
		}
	}
	if equality.Semantic.DeepEqual(newStatus, oldStatus) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, s.mc, client.MergeFromWithOptions(s.orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsNotFound(err) {
			// Gone (its finalizers removed by hand): nothing may act on the member for it.
			s.patchFailed = true
			return errGone
		}
		// Nothing is announced for a status that did not land: the retry announces it.
		s.patchFailed = true
		return fmt.Errorf("patching status: %w", err)
	}
	r.emitTransitionEvents(s)
	s.orig = s.mc.DeepCopy()
	return nil
}

// errGone: the MemberCluster was deleted while it was reconciled.
var errGone = errors.New("the MemberCluster is gone")

// maxEventNote is what the events API accepts in a note.
const maxEventNote = 1024

func truncateNote(msg string) string {
	if len(msg) <= maxEventNote {
		return msg
	}
	cut := maxEventNote - len("...")
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "..."
}

func (r *Reconciler) event(obj *clustersv1.MemberCluster, eventType, reason, action, msg string) {
	r.Recorder.Eventf(obj, nil, eventType, reason, action, "%s", truncateNote(msg))
}

func (r *Reconciler) emitTransitionEvents(s *scope) {
	for _, e := range s.pendingEvents {
		r.event(s.mc, e.eventType, e.reason, e.action, e.msg)
	}
	s.pendingEvents = nil
	oldReady := findCondition(s.orig.Status.Conditions, clustersv1.ReadyCondition)
	newReady := findCondition(s.mc.Status.Conditions, clustersv1.ReadyCondition)
	if newReady == nil {
		return
	}
	if oldReady != nil && oldReady.Status == newReady.Status && oldReady.Reason == newReady.Reason {
		return
	}
	eventType := corev1.EventTypeNormal
	if newReady.Status == metav1.ConditionFalse && newReady.Reason != clustersv1.ReasonProgressing && newReady.Reason != clustersv1.ReasonProbePending {
		eventType = corev1.EventTypeWarning
	}
	r.event(s.mc, eventType, newReady.Reason, "Probe", newReady.Message)
}

// reconcileDelete lets dependants clean up, cleans up what Paddock placed in the member and
// releases the finalizer. It never wedges: when the member cannot be reached it gives up after
// DeletionGracePeriod, and a member that cannot be reached at all (its Secret gone or refused,
// its identity never pinned) is released at once.
func (r *Reconciler) reconcileDelete(ctx context.Context, mc *clustersv1.MemberCluster) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	if !controllerutil.ContainsFinalizer(mc, clustersv1.MemberClusterFinalizer) {
		r.Cache.Disconnect(mc.Name)
		return ctrl.Result{}, nil
	}
	// The cached copy may be stale: a pass that runs after this controller released the member
	// (its own finalizer patch not in the cache yet) would connect to the member again and clean up
	// a second time, and with a new MemberCluster of the same name already there it would work on
	// that one's connection. Only the apiserver's copy says this deletion is still ours: it is read
	// when a deletion is first seen and again before cleanup, not on every wait for dependants.
	r.mu.Lock()
	del := r.deletions[mc.UID]
	var cleaned bool
	var ev *pendingEvent
	if del != nil {
		cleaned, ev = del.cleaned, del.event
	}
	r.mu.Unlock()
	var live *clustersv1.MemberCluster
	if del == nil {
		var err error
		if live, err = r.stillDeleting(ctx, mc); err != nil || live == nil {
			return ctrl.Result{}, err
		}
		del = &deletionState{}
		r.mu.Lock()
		r.deletions[mc.UID] = del
		r.mu.Unlock()
	}
	if !cleaned {
		r.mu.Lock()
		if st := r.health[mc.UID]; st != nil {
			deactivate(st)
		}
		r.mu.Unlock()
		r.prepareCleanup(ctx, mc)
		waited := r.Clock.Since(mc.DeletionTimestamp.Time)

		// Controllers that placed things in the member go first (their finalizers are
		// *.paddock.dev/), bounded by the grace period.
		if others := dependantFinalizers(mc); len(others) > 0 && waited < r.DeletionGracePeriod {
			log.Info("Waiting for dependants to clean up the member", "member", mc.Name, "finalizers", others)
			return ctrl.Result{RequeueAfter: min(time.Second, r.DeletionGracePeriod-waited)}, nil
		}
		if live == nil {
			var err error
			if live, err = r.stillDeleting(ctx, mc); err != nil || live == nil {
				return ctrl.Result{}, err
			}
		}
		if others := dependantFinalizers(live); len(others) > 0 && waited < r.DeletionGracePeriod {
			return ctrl.Result{RequeueAfter: min(time.Second, r.DeletionGracePeriod-waited)}, nil
		}
		var requeue time.Duration
		if ev, requeue = r.cleanupForDeletion(ctx, mc, waited); requeue > 0 {
			return ctrl.Result{RequeueAfter: requeue}, nil
		}
		// Remembered until the finalizer is gone: the event is emitted once the patch has landed,
		// and a failed patch retries the patch, never the cleanup.
		r.mu.Lock()
		del.cleaned, del.event = true, ev
		r.mu.Unlock()
	}

	if live == nil {
		// A retry of the patch alone: based on the apiserver's copy too.
		var err error
		if live, err = r.stillDeleting(ctx, mc); err != nil || live == nil {
			return ctrl.Result{}, err
		}
	}
	// Disconnected before the finalizer goes: once the object is gone nothing may still reach the
	// member through it.
	r.Cache.Disconnect(mc.Name)
	// Patched from the apiserver's copy, so that the optimistic lock fails only on a change since
	// it was read (a dependant's finalizer going), not on a stale cache.
	patched := live.DeepCopy()
	controllerutil.RemoveFinalizer(patched, clustersv1.MemberClusterFinalizer)
	if err := r.Client.Patch(ctx, patched, client.MergeFromWithOptions(live, client.MergeFromWithOptimisticLock{})); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("removing finalizer: %w", err)
	}
	if ev != nil {
		r.event(mc, ev.eventType, ev.reason, ev.action, ev.msg)
	}
	r.forgetState(mc.UID)
	forgetMetrics(mc.Name)
	log.Info("Released member", "member", mc.Name)
	return ctrl.Result{}, nil
}

// stillDeleting reads the MemberCluster from the apiserver and returns it if it is the same
// object, still deleting and still holding this controller's finalizer (else nil).
func (r *Reconciler) stillDeleting(ctx context.Context, mc *clustersv1.MemberCluster) (*clustersv1.MemberCluster, error) {
	live := &clustersv1.MemberCluster{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(mc), live); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	if live.UID != mc.UID || live.DeletionTimestamp.IsZero() ||
		!controllerutil.ContainsFinalizer(live, clustersv1.MemberClusterFinalizer) {
		return nil, nil
	}
	return live, nil
}

// cleanupForDeletion removes what Paddock placed in the member (unless the policy orphans it)
// and returns the event that reports it, or how soon to try again.
func (r *Reconciler) cleanupForDeletion(ctx context.Context, mc *clustersv1.MemberCluster, waited time.Duration) (*pendingEvent, time.Duration) {
	if mc.Spec.DeletionPolicy == clustersv1.DeletionPolicyOrphan {
		return nil, 0
	}
	log := ctrl.LoggerFrom(ctx)
	outcome, err := r.cleanupMember(ctx, mc)
	reason := ""
	if err != nil {
		// A member controls its error text: bound it before it reaches events or logs.
		reason = sanitizeMessage(err.Error())
	}
	var inUse *inUseError
	switch {
	case errors.As(err, &inUse):
		log.Info("Skipped member cleanup", "member", mc.Name, "reason", reason)
		return &pendingEvent{corev1.EventTypeNormal, "CleanupSkipped", "Delete", inUse.Error()}, 0
	case err != nil && outcome == cleanupRetry && waited < r.DeletionGracePeriod:
		log.Info("Could not clean up member yet; retrying", "member", mc.Name, "reason", reason)
		return nil, min(retryInterval(mc.Spec.HealthCheck)*5, r.DeletionGracePeriod-waited)
	case err != nil && outcome == cleanupRetry:
		log.Info("Abandoned member cleanup", "member", mc.Name, "reason", reason)
		return &pendingEvent{corev1.EventTypeWarning, "CleanupAbandoned", "Delete", fmt.Sprintf(
			"Gave up cleaning up the member after %s: %s; what Paddock placed there is left in place", r.DeletionGracePeriod, reason)}, 0
	case err != nil:
		log.Info("Skipped member cleanup", "member", mc.Name, "reason", reason)
		return &pendingEvent{corev1.EventTypeWarning, "CleanupSkipped", "Delete", reason}, 0
	case outcome == cleanupDone:
		return &pendingEvent{corev1.EventTypeNormal, "CleanedUp", "Delete", "Removed what Paddock placed in the member"}, 0
	}
	return nil, 0
}

// prepareCleanup puts the member in its "deleting, cleanup only" state: Get refuses it, and
// GetForCleanup serves dependants through a connection whose identity is proven. After a manager
// restart or a Secret change mid-deletion there is no such connection yet, so one is connected
// and probed here, and admitted only if it reaches the pinned cluster.
func (r *Reconciler) prepareCleanup(ctx context.Context, mc *clustersv1.MemberCluster) {
	if _, err := r.Cache.GetForCleanup(ctx, mc.Name); err == nil || mc.Status.ClusterID == "" {
		r.Cache.BeginCleanup(mc.Name)
		return
	}
	acc, err := r.connect(ctx, mc)
	// Marked before the probe, so the admission below never makes the member usable for Get.
	r.Cache.BeginCleanup(mc.Name)
	if err != nil {
		return
	}
	// The probe runs on a reconcile worker: at most once per 5 retry intervals per member, so
	// that many unreachable members being deleted at once do not hold every worker.
	r.mu.Lock()
	last, due := r.cleanupProbes[mc.UID], true
	if now := r.Clock.Now(); now.Sub(last) < 5*retryInterval(mc.Spec.HealthCheck) {
		due = false
	} else {
		r.cleanupProbes[mc.UID] = now
	}
	r.mu.Unlock()
	if !due {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, mc.Spec.HealthCheck.GetTimeout())
	res := acc.ProbeLiveness(pctx)
	cancel()
	if res.Err == nil && res.ClusterID == mc.Status.ClusterID {
		r.Cache.Admit(acc, res.ClusterID)
	}
}

// dependantFinalizers lists the finalizers of other Paddock controllers on the MemberCluster.
func dependantFinalizers(mc *clustersv1.MemberCluster) []string {
	var out []string
	for _, f := range mc.Finalizers {
		if f == clustersv1.MemberClusterFinalizer {
			continue
		}
		if domain, _, ok := strings.Cut(f, "/"); ok && (domain == "paddock.dev" || strings.HasSuffix(domain, ".paddock.dev")) {
			out = append(out, f)
		}
	}
	return out
}

func findCondition(conds []metav1.Condition, t string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}
