package pluginrelease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/chartrepo"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/digestkey"
	"github.com/paddock-dev/paddock/internal/fleet"
)

// Finalizer makes deleting a PluginRelease uninstall it from every target first.
const Finalizer = "plugins.paddock.dev/uninstall"

// repositoryIndex indexes PluginReleases by spec.chart.repository.
const repositoryIndex = "spec.chart.repository"

// configMapIndex indexes PluginReleases by the ConfigMaps their valuesFrom names (a change to one
// is seen through the cache). Secrets are not cached: a release with values from a Secret reads
// it again every SecretValuesInterval.
const configMapIndex = "spec.valuesFrom.configMap"

// targetIndex indexes PluginReleases by the cluster names they target, and by selectorKey for
// those with a clusterSelector.
const (
	targetIndex = "spec.targets"
	selectorKey = "*selector"
)

// SecretValuesInterval is how often values Secrets are read again.
const SecretValuesInterval = time.Minute

// Defaults of the Reconciler's knobs.
const (
	DefaultMaxConcurrentActions = 50
	DefaultDeletionGracePeriod  = 2 * time.Minute
	DefaultResync               = 10 * time.Minute
)

// Reconciler reconciles PluginReleases. Helm actions run in goroutines of their own (at most
// MaxConcurrentActions at once across all releases), never in a reconcile worker: a reconcile
// decides what to start, folds in what finished, and writes status.
type Reconciler struct {
	// Client reads PluginReleases, MemberClusters and values ConfigMaps from the cache and writes
	// status.
	Client client.Client
	// APIReader reads values Secrets uncached (the manager caches no Secret outside its own
	// namespaces).
	APIReader client.Reader
	// SecretNamespaces are the namespaces whose PluginReleases may read values from Secrets
	// (nil: any namespace, RBAC decides). Elsewhere a Secret in valuesFrom is refused with a
	// condition naming the manager flag, before any read.
	SecretNamespaces []string
	// ProtectedNamespaces hold the manager's own Secrets (member kubeconfigs, repository
	// credentials): a PluginRelease there never reads values from Secrets, whatever
	// SecretNamespaces says, so that it cannot ship those credentials to a member.
	ProtectedNamespaces []string
	// DigestKey keys the digests in status (internal/digestkey): at least digestkey.MinBytes.
	DigestKey []byte
	// Cache is the access layer's read side.
	Cache clustercache.Reader
	// Repositories holds every PluginRepository's last good index.
	Repositories *chartrepo.Store
	// Charts downloads each chart version once.
	Charts *chartrepo.ChartCache
	// Recorder emits events.
	Recorder events.EventRecorder
	// MaxConcurrentActions bounds Helm actions in flight across all PluginReleases.
	MaxConcurrentActions int
	// DeletionGracePeriod bounds how long deleting waits for unreachable targets.
	DeletionGracePeriod time.Duration
	// Resync is how often a settled release is looked at again (drift backstop).
	Resync time.Duration
	// RetryDelay is the pause before retrying a failed target (doubled per failure; default 10s).
	RetryDelay time.Duration
	// SweepInterval is how often the state of PluginReleases that are gone is dropped (default
	// DefaultSweepInterval).
	SweepInterval time.Duration

	ctx     context.Context
	log     logr.Logger
	slots   *slots
	digests digester
	wake    chan event.GenericEvent

	mu      sync.Mutex
	running map[actionKey]*runningAction
	done    map[actionKey][]outcome
	// Drift detection (drift.go).
	drift      map[actionKey]*driftState
	watches    map[driftWatchKey]*driftWatch
	byLabel    map[labelKey]map[actionKey]struct{}
	pokes      map[types.NamespacedName]struct{}
	pokeSignal chan struct{}
	// written holds, per PluginRelease, the resourceVersion its status was patched from: while
	// the cache still serves that version, a pass would decide on status older than what it
	// wrote (and start again an action whose outcome it has just recorded), so it waits.
	written map[types.UID][]string
	// secrets are, per PluginRelease, the values read from Secrets, redacted from every message.
	secrets map[types.UID][]string
	// uninstallAfter holds back retrying an uninstall that just failed.
	uninstallAfter map[actionKey]time.Time
	// uninstallFailing is since when uninstalling from a target has been failing (see
	// failingLonger).
	uninstallFailing map[actionKey]uninstallFailure
	// rechecked is when a target's conflict was last found still there (the next recheck backs
	// off from it; after a restart, from when the conflict began).
	rechecked map[actionKey]time.Time
}

type actionKey struct {
	uid     types.UID
	cluster string
}

type runningAction struct {
	action string
	cancel context.CancelFunc
	digest string
	// started: it holds an action slot (else it is queued for one).
	started bool
	// kind says what the rollout started it as: a retry, a recheck, or "" (a first attempt).
	kind string
}

// What the rollout started an install or upgrade as (runningAction.kind, outcome.kind).
const (
	kindRetry   = "retry"
	kindRecheck = "recheck"
)

// +kubebuilder:rbac:groups=plugins.paddock.dev,resources=pluginreleases,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=plugins.paddock.dev,resources=pluginreleases/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=plugins.paddock.dev,resources=pluginreleases/finalizers,verbs=update
// +kubebuilder:rbac:groups=plugins.paddock.dev,resources=pluginrepositories,verbs=get;list;watch
// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch

// SetupWithManager registers the controller.
func (r *Reconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, opts controller.Options) error {
	if r.Repositories == nil || r.Charts == nil || r.Cache == nil {
		return fmt.Errorf("the PluginRelease controller needs Repositories, Charts and Cache")
	}
	if len(r.DigestKey) < digestkey.MinBytes {
		return fmt.Errorf("the PluginRelease controller needs a digest key of at least %d bytes", digestkey.MinBytes)
	}
	r.digests = digester{key: r.DigestKey}
	r.ctx, r.log = ctx, mgr.GetLogger().WithName("pluginrelease-actions")
	n := r.MaxConcurrentActions
	if n <= 0 {
		n = DefaultMaxConcurrentActions
	}
	r.slots = newSlots(n)
	r.wake = make(chan event.GenericEvent, 1024)
	r.running, r.done = map[actionKey]*runningAction{}, map[actionKey][]outcome{}
	r.drift, r.watches, r.byLabel = map[actionKey]*driftState{}, map[driftWatchKey]*driftWatch{}, map[labelKey]map[actionKey]struct{}{}
	r.pokes, r.pokeSignal = map[types.NamespacedName]struct{}{}, make(chan struct{}, 1)
	r.written, r.uninstallAfter, r.uninstallFailing = map[types.UID][]string{}, map[actionKey]time.Time{}, map[actionKey]uninstallFailure{}
	r.secrets, r.rechecked = map[types.UID][]string{}, map[actionKey]time.Time{}
	go r.pump(ctx)
	go r.sweeper(ctx)
	if err := mgr.GetFieldIndexer().IndexField(ctx, &pluginsv1.PluginRelease{}, repositoryIndex, func(o client.Object) []string {
		return []string{o.(*pluginsv1.PluginRelease).Spec.Chart.Repository}
	}); err != nil {
		return fmt.Errorf("indexing PluginReleases by repository: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &pluginsv1.PluginRelease{}, configMapIndex, func(o client.Object) []string {
		var out []string
		for _, v := range o.(*pluginsv1.PluginRelease).Spec.ValuesFrom {
			if v.Kind == "ConfigMap" {
				out = append(out, v.Name)
			}
		}
		return out
	}); err != nil {
		return fmt.Errorf("indexing PluginReleases by values ConfigMap: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &pluginsv1.PluginRelease{}, targetIndex, func(o client.Object) []string {
		t := o.(*pluginsv1.PluginRelease).Spec.Targets
		out := append([]string{}, t.ClusterNames...)
		if t.ClusterSelector != nil {
			out = append(out, selectorKey)
		}
		return out
	}); err != nil {
		return fmt.Errorf("indexing PluginReleases by target: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &pluginsv1.PluginRelease{}, clusterIndex, statusClusters); err != nil {
		return fmt.Errorf("indexing PluginReleases by cluster: %w", err)
	}
	if err := (&memberFinalizer{client: mgr.GetClient(), grace: r.deletionGrace()}).setup(mgr); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("pluginrelease").
		For(&pluginsv1.PluginRelease{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&pluginsv1.PluginRepository{}, handler.EnqueueRequestsFromMapFunc(r.releasesForRepository)).
		Watches(&clustersv1.MemberCluster{}, handler.EnqueueRequestsFromMapFunc(r.releasesForMember)).
		Watches(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.releasesForConfigMap)).
		WatchesRawSource(source.Channel(r.Cache.Subscribe(), handler.EnqueueRequestsFromMapFunc(r.releasesForMember))).
		WatchesRawSource(source.Channel(r.wake, &handler.EnqueueRequestForObject{})).
		WithOptions(opts).
		Complete(r)
}

func (r *Reconciler) releasesForRepository(ctx context.Context, o client.Object) []reconcile.Request {
	var list pluginsv1.PluginReleaseList
	if err := r.Client.List(ctx, &list, client.MatchingFields{repositoryIndex: o.GetName()}); err != nil {
		return nil
	}
	return requests(list.Items)
}

func (r *Reconciler) releasesForConfigMap(ctx context.Context, o client.Object) []reconcile.Request {
	var list pluginsv1.PluginReleaseList
	if err := r.Client.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{configMapIndex: o.GetName()}); err != nil {
		return nil
	}
	return requests(list.Items)
}

// releasesForMember maps a MemberCluster (or an access-layer event named after one) to the
// PluginReleases it matters to: those naming it, those whose selector matches it, and those that
// have a release there. At thousands of members and releases, enqueueing every release for every
// member event would cost a reconcile per pair.
func (r *Reconciler) releasesForMember(ctx context.Context, o client.Object) []reconcile.Request {
	name := o.GetName()
	seen := map[types.NamespacedName]bool{}
	var out []reconcile.Request
	add := func(items []pluginsv1.PluginRelease, keep func(*pluginsv1.PluginRelease) bool) {
		for i := range items {
			p := &items[i]
			nn := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
			if seen[nn] || (keep != nil && !keep(p)) {
				continue
			}
			seen[nn] = true
			out = append(out, reconcile.Request{NamespacedName: nn})
		}
	}
	var byName, bySelector, byStatus pluginsv1.PluginReleaseList
	if err := r.Client.List(ctx, &byName, client.MatchingFields{targetIndex: name}); err == nil {
		add(byName.Items, nil)
	}
	if err := r.Client.List(ctx, &byStatus, client.MatchingFields{clusterIndex: name}); err == nil {
		add(byStatus.Items, nil)
	}
	if err := r.Client.List(ctx, &bySelector, client.MatchingFields{targetIndex: selectorKey}); err == nil {
		mc := &clustersv1.MemberCluster{}
		var lbls labels.Set
		if err := r.Client.Get(ctx, client.ObjectKey{Name: name}, mc); err == nil {
			lbls = mc.Labels
		}
		add(bySelector.Items, func(p *pluginsv1.PluginRelease) bool {
			sel, err := metav1.LabelSelectorAsSelector(p.Spec.Targets.ClusterSelector)
			// A bad selector gets its condition from its own reconcile; a deleted member
			// (no labels) matters to releases that had it, found through status above.
			return err != nil || (lbls != nil && sel.Matches(lbls))
		})
	}
	return out
}

func requests(items []pluginsv1.PluginRelease) []reconcile.Request {
	out := make([]reconcile.Request, 0, len(items))
	for _, p := range items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}})
	}
	return out
}

// Reconcile drives one PluginRelease.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	prel := &pluginsv1.PluginRelease{}
	if err := r.Client.Get(ctx, req.NamespacedName, prel); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.cacheBehind(prel) {
		return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
	}
	cachedRV := prel.ResourceVersion
	latest := false
	if prel.DeletionTimestamp.IsZero() && !controllerutil.ContainsFinalizer(prel, Finalizer) {
		orig := prel.DeepCopy()
		controllerutil.AddFinalizer(prel, Finalizer)
		if err := r.Client.Patch(ctx, prel, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, err
		}
		latest = true
	}
	s := newScope(prel)
	s.latest = latest
	s.readRVs = []string{cachedRV, prel.ResourceVersion}
	r.fold(s)
	passStart := time.Now()
	defer func() {
		defer func() {
			log.FromContext(ctx).V(1).Info("Pass finished", "took", time.Since(passStart).String(), "requeueAfter", res.RequeueAfter.String(), "error", retErr != nil)
		}()
		s.passErr = retErr
		if err := r.patchStatus(ctx, s); err != nil {
			if apierrors.IsConflict(err) {
				res, retErr = ctrl.Result{Requeue: true}, nil
				return
			}
			if retErr == nil {
				retErr = err
			}
			return
		}
		r.forgetFolded(s)
	}()
	if !prel.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, s)
	}
	if prel.Spec.Suspend {
		s.suspended = true
		return ctrl.Result{}, nil
	}
	return r.reconcileNormal(ctx, s)
}

// cacheBehind says whether the cache still serves the version this controller last patched the
// status from.
func (r *Reconciler) cacheBehind(prel *pluginsv1.PluginRelease) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	rvs, ok := r.written[prel.UID]
	if !ok {
		return false
	}
	if slices.Contains(rvs, prel.ResourceVersion) {
		return true
	}
	delete(r.written, prel.UID)
	return false
}

// targets lists the MemberClusters the release selects, by name.
func (r *Reconciler) targets(ctx context.Context, prel *pluginsv1.PluginRelease) (map[string]*clustersv1.MemberCluster, error) {
	out, err := fleet.Select(ctx, r.Client, prel.Spec.Targets.ClusterNames, prel.Spec.Targets.ClusterSelector, "spec.targets")
	var se *fleet.SelectorError
	if errors.As(err, &se) {
		return nil, &valuesError{msg: se.Error()}
	}
	return out, err
}
