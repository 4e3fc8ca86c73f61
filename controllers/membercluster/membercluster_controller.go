// Package membercluster reconciles MemberClusters: it validates the kubeconfig, connects the
// member through the cluster cache, probes its health and identity, and reports all of it in
// status, events and metrics.
package membercluster

import (
	"context"
	"fmt"
	"sync"
	"time"

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
	DefaultStatusHeartbeat     = time.Minute
	DefaultMaxConcurrentProbes = 500
)

// Reconciler reconciles MemberCluster objects.
type Reconciler struct {
	// Client reads MemberClusters and Secret metadata from the cache and writes status.
	Client client.Client
	// APIReader reads Secret data uncached, only when a Secret's resourceVersion changed.
	APIReader client.Reader
	// Cache holds the members' clients.
	Cache *clustercache.ClusterCache
	// Policy checks kubeconfigs.
	Policy clustercache.Policy
	// Recorder emits events.
	Recorder events.EventRecorder
	// Clock is injectable for tests.
	Clock clock.PassiveClock
	// DeletionGracePeriod bounds how long deletion waits for an unreachable member.
	DeletionGracePeriod time.Duration
	// StatusHeartbeat is how stale lastProbeTime may get before status is written anyway.
	StatusHeartbeat time.Duration
	// MaxConcurrentProbes bounds the probes in flight across all members.
	MaxConcurrentProbes int

	ctx        context.Context
	log        logr.Logger
	probeSlots chan struct{}
	probeDone  chan event.GenericEvent

	mu     sync.Mutex
	health map[types.UID]*memberState
}

// memberState is what the controller remembers about a member between reconciles. mu guards
// what the probe goroutine writes (health, latest, inFlight, lastStart); the rest is only touched
// by reconciles, which controller-runtime never runs in parallel for one member.
type memberState struct {
	mu     sync.Mutex
	health health
	// latest is the last completed probe.
	latest    *clustercache.ProbeResult
	inFlight  bool
	lastStart time.Time
	// What the prober probes with; active is false while paused, refused or deleted.
	active bool
	acc    *clustercache.Accessor
	hc     clustersv1.HealthCheckSpec
	timer  *time.Timer
	// lastPublished is when a reconcile last took the state into status.
	lastPublished time.Time

	// identityMismatch is the clusterID last observed when it differed from status.clusterID.
	identityMismatch string
	// markerVersion is the accessor version the marker namespace was ensured for.
	markerVersion string
	name          string
}

// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the controller.
func (r *Reconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, opts controller.Options) error {
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
	r.ctx, r.log = ctx, mgr.GetLogger().WithName("membercluster-prober")
	r.probeSlots = make(chan struct{}, r.MaxConcurrentProbes)
	r.probeDone = make(chan event.GenericEvent, 1024)
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

// Reconcile moves a MemberCluster towards its desired state.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	log := ctrl.LoggerFrom(ctx)
	mc := &clustersv1.MemberCluster{}
	if err := r.Client.Get(ctx, req.NamespacedName, mc); err != nil {
		if apierrors.IsNotFound(err) {
			r.Cache.Disconnect(req.Name)
			r.forgetStateByName(req.Name)
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
		if err := r.Client.Patch(ctx, mc, client.MergeFrom(orig)); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}

	s := &scope{mc: mc, orig: mc.DeepCopy(), state: r.stateFor(mc)}
	defer func() {
		if err := r.patchStatus(ctx, s); err != nil {
			log.Error(err, "Failed to patch status")
			if retErr == nil {
				retErr = err
			}
		}
	}()

	if mc.Spec.Paused {
		deactivate(s.state)
		r.Cache.SetReady(mc.Name, false, clustersv1.ReasonPaused)
		s.paused = true
		return ctrl.Result{}, nil
	}

	return r.reconcileNormal(ctx, s)
}

// stateFor returns the in-memory state of a member, seeding it from status on first sight.
func (r *Reconciler) stateFor(mc *clustersv1.MemberCluster) *memberState {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.health[mc.UID]
	if !ok {
		st = &memberState{name: mc.Name, health: seedHealth(r.Clock.Now(), &mc.Status)}
		r.health[mc.UID] = st
	}
	return st
}

func (r *Reconciler) forgetState(uid types.UID) {
	r.mu.Lock()
	st := r.health[uid]
	delete(r.health, uid)
	r.mu.Unlock()
	if st != nil {
		deactivate(st)
	}
}

// forgetStateByName drops the state of a MemberCluster that vanished without our finalizer.
func (r *Reconciler) forgetStateByName(name string) {
	r.mu.Lock()
	var gone []*memberState
	for uid, st := range r.health {
		if st.name == name {
			gone = append(gone, st)
			delete(r.health, uid)
		}
	}
	r.mu.Unlock()
	for _, st := range gone {
		deactivate(st)
	}
}

// patchStatus computes conditions and writes status when it changed (or the heartbeat is due).
func (r *Reconciler) patchStatus(ctx context.Context, s *scope) error {
	computeStatus(s)
	r.emitTransitionEvents(s)
	updateMetrics(s)

	newStatus := s.mc.Status.DeepCopy()
	oldStatus := s.orig.Status.DeepCopy()
	// lastProbeTime and lastSuccessfulProbeTime alone do not justify a write until the heartbeat.
	heartbeatDue := oldStatus.LastProbeTime == nil ||
		(newStatus.LastProbeTime != nil && newStatus.LastProbeTime.Sub(oldStatus.LastProbeTime.Time) >= r.StatusHeartbeat)
	if !heartbeatDue {
		newStatus.LastProbeTime, newStatus.LastSuccessfulProbeTime = oldStatus.LastProbeTime, oldStatus.LastSuccessfulProbeTime
	}
	if equality.Semantic.DeepEqual(newStatus, oldStatus) {
		return nil
	}
	s.mc.Status = *newStatus
	if err := r.Client.Status().Patch(ctx, s.mc, client.MergeFrom(s.orig)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	return nil
}

func (r *Reconciler) emitTransitionEvents(s *scope) {
	oldReady := findCondition(s.orig.Status.Conditions, clustersv1.ReadyCondition)
	newReady := findCondition(s.mc.Status.Conditions, clustersv1.ReadyCondition)
	if newReady == nil {
		return
	}
	if oldReady != nil && oldReady.Status == newReady.Status && oldReady.Reason == newReady.Reason {
		return
	}
	eventType := corev1.EventTypeNormal
	if newReady.Status == metav1.ConditionFalse && newReady.Reason != clustersv1.ReasonProgressing {
		eventType = corev1.EventTypeWarning
	}
	r.Recorder.Eventf(s.mc, nil, eventType, newReady.Reason, "Probe", "%s", newReady.Message)
}

// reconcileDelete cleans up what Paddock placed in the member and releases the finalizer. It
// never wedges: when the member cannot be reached it gives up after DeletionGracePeriod.
func (r *Reconciler) reconcileDelete(ctx context.Context, mc *clustersv1.MemberCluster) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	if !controllerutil.ContainsFinalizer(mc, clustersv1.MemberClusterFinalizer) {
		r.Cache.Disconnect(mc.Name)
		return ctrl.Result{}, nil
	}
	r.Cache.SetReady(mc.Name, false, clustersv1.ReasonDeleting)
	r.mu.Lock()
	if st := r.health[mc.UID]; st != nil {
		deactivate(st)
	}
	r.mu.Unlock()

	var cleanupErr error
	if mc.Spec.DeletionPolicy != clustersv1.DeletionPolicyOrphan {
		cleanupErr = r.cleanupMember(ctx, mc)
	}
	if cleanupErr != nil {
		waited := r.Clock.Since(mc.DeletionTimestamp.Time)
		if waited < r.DeletionGracePeriod {
			log.Info("Could not clean up member yet; retrying", "member", mc.Name, "reason", cleanupErr.Error())
			return ctrl.Result{RequeueAfter: min(retryInterval(mc.Spec.HealthCheck)*5, r.DeletionGracePeriod-waited)}, nil
		}
		r.Recorder.Eventf(mc, nil, corev1.EventTypeWarning, "CleanupAbandoned", "Delete",
			"Gave up cleaning up the member after %s: %s; what Paddock placed there is left in place", r.DeletionGracePeriod, cleanupErr)
		log.Info("Abandoned member cleanup", "member", mc.Name, "reason", cleanupErr.Error())
	} else if mc.Spec.DeletionPolicy != clustersv1.DeletionPolicyOrphan {
		r.Recorder.Eventf(mc, nil, corev1.EventTypeNormal, "CleanedUp", "Delete", "Removed what Paddock placed in the member")
	}

	orig := mc.DeepCopy()
	controllerutil.RemoveFinalizer(mc, clustersv1.MemberClusterFinalizer)
	if err := r.Client.Patch(ctx, mc, client.MergeFrom(orig)); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("removing finalizer: %w", err)
	}
	r.Cache.Disconnect(mc.Name)
	r.forgetState(mc.UID)
	forgetMetrics(mc.Name)
	log.Info("Released member", "member", mc.Name)
	return ctrl.Result{}, nil
}

func findCondition(conds []metav1.Condition, t string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}
