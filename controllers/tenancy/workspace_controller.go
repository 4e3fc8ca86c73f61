package tenancy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
	"github.com/paddock-dev/paddock/internal/fleet"
)

// WorkspaceIndex and NamespaceIndex index NamespaceQuotas by spec.workspace and spec.namespace.
const (
	WorkspaceIndex = "spec.workspace"
	NamespaceIndex = "spec.namespace"
)

// Workspace condition reasons of its own.
const (
	// ReasonOverQuota: what was admitted exceeds spec.quota.hard (the quota was lowered);
	// nothing new or grown is admitted until it fits again.
	ReasonOverQuota = "OverQuota"
	// ReasonInvalidSelector: spec.clusters.clusterSelector does not parse.
	ReasonInvalidSelector = "InvalidSelector"
)

// WorkspaceReconciler keeps a Workspace's status: its clusters, the namespaces its
// NamespaceQuotas place in them, and its budget's ledger (the only writer of
// status.allocations, so that admission is decided in one place, one claim at a time).
type WorkspaceReconciler struct {
	Client   client.Client
	Recorder events.EventRecorder
}

// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=workspaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=workspaces/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=namespacequotas,verbs=get;list;watch
// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters,verbs=get;list;watch

// SetupWithManager registers the controller and the NamespaceQuota index it reads by.
func (r *WorkspaceReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, opts controller.Options) error {
	if err := IndexNamespaceQuotas(ctx, mgr); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("workspace").
		For(&tenancyv1.Workspace{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&tenancyv1.NamespaceQuota{}, workspacesOfQuota).
		Watches(&clustersv1.MemberCluster{}, handler.EnqueueRequestsFromMapFunc(r.allWorkspaces),
			builder.WithPredicates(predicate.Or(predicate.LabelChangedPredicate{}, predicate.GenerationChangedPredicate{}))).
		WithOptions(opts).
		Complete(r)
}

// IndexNamespaceQuotas indexes NamespaceQuotas by workspace and by namespace (once per manager,
// whichever tenancy controller's setup comes first).
func IndexNamespaceQuotas(ctx context.Context, mgr ctrl.Manager) error { return indexOnce(ctx, mgr) }

// workspacesOfQuota enqueues a NamespaceQuota's workspace, before and after an edit (a move
// frees its share in the old one).
var workspacesOfQuota = handler.TypedFuncs[client.Object, reconcile.Request]{
	CreateFunc: func(_ context.Context, e event.TypedCreateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		enqueueWorkspace(q, e.Object)
	},
	UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		enqueueWorkspace(q, e.ObjectOld)
		enqueueWorkspace(q, e.ObjectNew)
	},
	DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		enqueueWorkspace(q, e.Object)
	},
}

func enqueueWorkspace(q workqueue.TypedRateLimitingInterface[reconcile.Request], o client.Object) {
	for _, ws := range quotaWorkspaces(o) {
		q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: ws}})
	}
}

// quotaWorkspaces are the workspaces a NamespaceQuota belongs to: its spec's, and the one its
// applied spec placed it in (while it moves, both).
func quotaWorkspaces(o client.Object) []string {
	nsq, ok := o.(*tenancyv1.NamespaceQuota)
	if !ok {
		return nil
	}
	var out []string
	if nsq.Spec.Workspace != "" {
		out = append(out, nsq.Spec.Workspace)
	}
	if a := nsq.Status.Applied; a != nil && a.Workspace != "" && a.Workspace != nsq.Spec.Workspace {
		out = append(out, a.Workspace)
	}
	return out
}

// allWorkspaces enqueues every Workspace (a MemberCluster's labels may move it in or out of any).
func (r *WorkspaceReconciler) allWorkspaces(ctx context.Context, _ client.Object) []reconcile.Request {
	var list tenancyv1.WorkspaceList
	if err := r.Client.List(ctx, &list); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list Workspaces for a MemberCluster")
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, ws := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: ws.Name}})
	}
	return out
}

func (r *WorkspaceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ws := &tenancyv1.Workspace{}
	if err := r.Client.Get(ctx, req.NamespacedName, ws); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ws.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	orig := ws.DeepCopy()
	st := &ws.Status
	gen := ws.Generation
	set := func(t string, status metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	snapshot := &fleetSnapshot{Reader: r.Client}
	clusters, err := selectClusters(ctx, snapshot, ws.Spec.Clusters, "spec.clusters")
	var selErr *fleet.SelectorError
	if errors.As(err, &selErr) {
		set(tenancyv1.ReadyCondition, metav1.ConditionFalse, ReasonInvalidSelector, selErr.Error())
		set(tenancyv1.StalledCondition, metav1.ConditionTrue, ReasonInvalidSelector, selErr.Error())
		meta.RemoveStatusCondition(&st.Conditions, tenancyv1.ReconcilingCondition)
		st.ObservedGeneration = gen
		return ctrl.Result{}, r.patchStatus(ctx, orig, ws)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	var quotas tenancyv1.NamespaceQuotaList
	if err := r.Client.List(ctx, &quotas, client.MatchingFields{WorkspaceIndex: ws.Name}); err != nil {
		return ctrl.Result{}, err
	}

	// Namespaces per cluster, and the claims on the budget: a NamespaceQuota that selects
	// clusters outside the workspace claims nothing (its own status says why).
	type placed struct {
		namespace string
		clusters  []string
	}
	inside := map[string]placed{}
	var claims []Claim
	used := corev1.ResourceList{}
	for i := range quotas.Items {
		nsq := &quotas.Items[i]
		if nsq.Spec.Workspace != ws.Name {
			// Moving out (listed by its applied workspace): what was admitted here stays until
			// the members hold it for its new workspace.
			claims = append(claims, Claim{Name: nsq.Name, UID: nsq.UID, Hold: true})
			continue
		}
		selected, err := selectClusters(ctx, snapshot, nsq.Spec.Clusters, "spec.clusters")
		if err != nil && !errors.As(err, &selErr) {
			return ctrl.Result{}, err
		}
		if err != nil || len(outside(selected, clusters)) > 0 {
			// Not decided now (its own status says why), but what was admitted for it stays:
			// its quotas may still be in the members.
			claims = append(claims, Claim{Name: nsq.Name, UID: nsq.UID, Hold: true})
			continue
		}
		inside[nsq.Name] = placed{nsq.Spec.Namespace, selected}
		claims = append(claims, Claim{Name: nsq.Name, UID: nsq.UID, Generation: nsq.Generation, Created: nsq.CreationTimestamp.Time,
			Hard: nsq.Spec.Hard.Core(), Clusters: int32(len(selected))})
		addTo(used, nsq.Status.Used)
	}
	var over []string
	if ws.Spec.Quota != nil {
		adm := Admit(ws.Spec.Quota.Hard.Core(), st.Allocations, claims)
		st.Allocations = adm.Allocations
		st.Quota = &tenancyv1.WorkspaceQuotaStatus{Hard: ws.Spec.Quota.Hard.Core(), Allocated: adm.Allocated, Used: used,
			Refused: refusals(adm.Refused, claims)}
		over = overBudget(ws.Spec.Quota.Hard.Core(), adm.Allocated)
	} else {
		st.Allocations, st.Quota = nil, nil
	}
	// The workspace's namespaces: those of its NamespaceQuotas that are in place (with a budget,
	// those admitted: a refused one places nothing).
	perCluster := map[string][]string{}
	admitted := map[string]bool{}
	for _, a := range st.Allocations {
		admitted[a.NamespaceQuota] = true
	}
	for name, p := range inside {
		if ws.Spec.Quota != nil && !admitted[name] {
			continue
		}
		for _, c := range p.clusters {
			perCluster[c] = append(perCluster[c], p.namespace)
		}
	}
	st.Clusters, st.NamespaceCount = nil, 0
	for _, c := range clusters {
		if len(st.Clusters) == tenancyv1.MaxWorkspaceNamespaces {
			break
		}
		ns := perCluster[c]
		sort.Strings(ns)
		wc := tenancyv1.WorkspaceCluster{Name: c, NamespaceCount: int32(len(ns))}
		if len(ns) > 100 {
			ns = ns[:100]
		}
		wc.Namespaces = ns
		st.Clusters = append(st.Clusters, wc)
		st.NamespaceCount += wc.NamespaceCount
	}
	st.ClusterCount = int32(len(clusters))

	switch {
	case len(clusters) == 0:
		msg := "no MemberCluster matches spec.clusters"
		set(tenancyv1.ReadyCondition, metav1.ConditionFalse, tenancyv1.ReasonNoClusters, msg)
		set(tenancyv1.StalledCondition, metav1.ConditionTrue, tenancyv1.ReasonNoClusters, msg)
	case len(over) > 0:
		msg := "what was admitted exceeds spec.quota.hard (was it lowered?): " + strings.Join(over, "; ") +
			"; no new or grown NamespaceQuota is admitted until it fits"
		set(tenancyv1.ReadyCondition, metav1.ConditionFalse, ReasonOverQuota, msg)
		set(tenancyv1.StalledCondition, metav1.ConditionTrue, ReasonOverQuota, msg)
	default:
		set(tenancyv1.ReadyCondition, metav1.ConditionTrue, tenancyv1.ReasonSucceeded,
			fmt.Sprintf("%d clusters, %d namespaces", len(clusters), st.NamespaceCount))
		meta.RemoveStatusCondition(&st.Conditions, tenancyv1.StalledCondition)
	}
	meta.RemoveStatusCondition(&st.Conditions, tenancyv1.ReconcilingCondition)
	st.ObservedGeneration = gen
	return ctrl.Result{}, r.patchStatus(ctx, orig, ws)
}

// refusals lists the refused claims, by name, for status (each NamespaceQuota reads its own).
func refusals(refused map[string]string, claims []Claim) []tenancyv1.Refusal {
	var out []tenancyv1.Refusal
	for _, c := range claims {
		if msg, ok := refused[c.Name]; ok {
			out = append(out, tenancyv1.Refusal{NamespaceQuota: c.Name, Generation: c.Generation, Message: truncate(msg, 1024)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NamespaceQuota < out[j].NamespaceQuota })
	return out
}

// truncate cuts s to at most n bytes, on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// patchStatus writes status with an optimistic lock: the ledger is decided on what was read,
// and a write over a newer version could admit a claim twice.
func (r *WorkspaceReconciler) patchStatus(ctx context.Context, orig, ws *tenancyv1.Workspace) error {
	if equality.Semantic.DeepEqual(orig.Status, ws.Status) {
		return nil
	}
	err := r.Client.Status().Patch(ctx, ws, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
