package pluginrelease

import (
	"context"
	"time"

	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// MemberFinalizer is put on a MemberCluster while some PluginRelease has a release there (lists
// it in status.clusters). Deleting the MemberCluster then waits (bounded by the MemberCluster
// controller's grace period for dependants) until the releases are uninstalled, before the
// member's connection is dropped.
const MemberFinalizer = "plugins.paddock.dev/releases"

// clusterIndex indexes PluginReleases by the clusters in their status.
const clusterIndex = "status.clusters.name"

// memberFinalizer keeps MemberFinalizer on exactly the MemberClusters that hold releases.
type memberFinalizer struct {
	client client.Client
	grace  time.Duration
}

// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters,verbs=get;list;watch;update;patch

func (m *memberFinalizer) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	mc := &clustersv1.MemberCluster{}
	if err := m.client.Get(ctx, req.NamespacedName, mc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var list pluginsv1.PluginReleaseList
	if err := m.client.List(ctx, &list, client.MatchingFields{clusterIndex: mc.Name}); err != nil {
		return ctrl.Result{}, err
	}
	inUse, has := len(list.Items) > 0, controllerutil.ContainsFinalizer(mc, MemberFinalizer)
	if inUse && has && !mc.DeletionTimestamp.IsZero() {
		// Never wedged: a release that cannot be removed there (suspended, its repository gone,
		// the member unreachable) lets the MemberCluster go after the grace period.
		if waited := time.Since(mc.DeletionTimestamp.Time); waited < m.grace {
			return ctrl.Result{RequeueAfter: m.grace - waited}, nil
		}
		inUse = false
	}
	orig := mc.DeepCopy()
	switch {
	case inUse && !has && mc.DeletionTimestamp.IsZero():
		controllerutil.AddFinalizer(mc, MemberFinalizer)
	case !inUse && has:
		controllerutil.RemoveFinalizer(mc, MemberFinalizer)
	default:
		return ctrl.Result{}, nil
	}
	return ctrl.Result{}, client.IgnoreNotFound(m.client.Patch(ctx, mc, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})))
}

func statusClusters(o client.Object) []string {
	p, ok := o.(*pluginsv1.PluginRelease)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(p.Status.Clusters))
	for _, c := range p.Status.Clusters {
		out = append(out, c.Name)
	}
	return out
}

// clustersOfReleases enqueues the MemberClusters a PluginRelease lists, before and after a change
// (a cluster that left its status may free its MemberCluster).
var clustersOfReleases = handler.TypedFuncs[client.Object, reconcile.Request]{
	CreateFunc: func(_ context.Context, e event.TypedCreateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		enqueueNames(q, statusClusters(e.Object))
	},
	UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		enqueueNames(q, statusClusters(e.ObjectOld))
		enqueueNames(q, statusClusters(e.ObjectNew))
	},
	DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		enqueueNames(q, statusClusters(e.Object))
	},
}

func enqueueNames(q workqueue.TypedRateLimitingInterface[reconcile.Request], names []string) {
	for _, n := range names {
		q.Add(reconcile.Request{NamespacedName: client.ObjectKey{Name: n}})
	}
}

func (m *memberFinalizer) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("pluginrelease-members").
		For(&clustersv1.MemberCluster{}).
		Watches(&pluginsv1.PluginRelease{}, clustersOfReleases).
		Complete(m)
}
