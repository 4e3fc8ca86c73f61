package tenancy

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
	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
)

// MemberFinalizer is on a MemberCluster while a NamespaceQuota or RoleGrant lists it in its
// status (holds a namespace, a quota or bindings there). Deleting the MemberCluster then waits,
// bounded by the MemberCluster controller's grace period for dependants, until they are removed
// from the member: a cluster leaving the fleet does not keep Paddock's grants.
const MemberFinalizer = "tenancy.paddock.dev/placements"

// statusClusterIndex indexes NamespaceQuotas and RoleGrants by the clusters in their status.
const statusClusterIndex = "status.clusters.name"

func quotaStatusClusters(o client.Object) []string {
	n, ok := o.(*tenancyv1.NamespaceQuota)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(n.Status.Clusters))
	for _, c := range n.Status.Clusters {
		out = append(out, c.Name)
	}
	return out
}

func grantStatusClusters(o client.Object) []string {
	g, ok := o.(*tenancyv1.RoleGrant)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(g.Status.Clusters))
	for _, c := range g.Status.Clusters {
		out = append(out, c.Name)
	}
	return out
}

// memberFinalizer keeps MemberFinalizer on exactly the MemberClusters the tenancy kinds hold
// things in.
type memberFinalizer struct {
	client client.Client
	// grace: after this long deleting, the finalizer goes whatever is left (the MemberCluster
	// controller's own bound lets it go then too).
	grace time.Duration
}

// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters,verbs=get;list;watch;update;patch

func (m *memberFinalizer) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	mc := &clustersv1.MemberCluster{}
	if err := m.client.Get(ctx, req.NamespacedName, mc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var quotas tenancyv1.NamespaceQuotaList
	if err := m.client.List(ctx, &quotas, client.MatchingFields{statusClusterIndex: mc.Name}); err != nil {
		return ctrl.Result{}, err
	}
	var grants tenancyv1.RoleGrantList
	if err := m.client.List(ctx, &grants, client.MatchingFields{statusClusterIndex: mc.Name}); err != nil {
		return ctrl.Result{}, err
	}
	inUse, has := len(quotas.Items)+len(grants.Items) > 0, controllerutil.ContainsFinalizer(mc, MemberFinalizer)
	if inUse && has && !mc.DeletionTimestamp.IsZero() {
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

// clustersOf enqueues the MemberClusters an object lists in its status, before and after a
// change (a cluster that left may free its MemberCluster).
func clustersOf(list func(client.Object) []string) handler.TypedFuncs[client.Object, reconcile.Request] {
	add := func(q workqueue.TypedRateLimitingInterface[reconcile.Request], o client.Object) {
		for _, n := range list(o) {
			q.Add(reconcile.Request{NamespacedName: client.ObjectKey{Name: n}})
		}
	}
	return handler.TypedFuncs[client.Object, reconcile.Request]{
		CreateFunc: func(_ context.Context, e event.TypedCreateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(q, e.Object)
		},
		UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(q, e.ObjectOld)
			add(q, e.ObjectNew)
		},
		DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(q, e.Object)
		},
	}
}

func (m *memberFinalizer) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("tenancy-members").
		For(&clustersv1.MemberCluster{}).
		Watches(&tenancyv1.NamespaceQuota{}, clustersOf(quotaStatusClusters)).
		Watches(&tenancyv1.RoleGrant{}, clustersOf(grantStatusClusters)).
		Complete(m)
}
