package tenancy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
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
	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
	"github.com/paddock-dev/paddock/internal/fleet"
)

// RoleGrant condition reasons of its own.
const (
	// ReasonClusterNotFound: scope.cluster names no MemberCluster.
	ReasonClusterNotFound = "ClusterNotFound"
)

// GrantWorkspaceIndex indexes RoleGrants by scope.workspace.
const GrantWorkspaceIndex = "spec.scope.workspace"

var (
	roleBindingsGVR        = schema.GroupVersionResource{Group: rbacv1.GroupName, Version: "v1", Resource: "rolebindings"}
	clusterRoleBindingsGVR = schema.GroupVersionResource{Group: rbacv1.GroupName, Version: "v1", Resource: "clusterrolebindings"}
)

// RoleGrantReconciler makes a RoleGrant's bindings in members (a RoleBinding per namespace of
// its workspace or its namespace, a ClusterRoleBinding per cluster), keeps them equal to its spec,
// removes the ones it no longer wants, and proves them: after each pass it asks the member's own
// authorizer (a SubjectAccessReview) whether a subject may do something the role grants.
type RoleGrantReconciler struct {
	Client   client.Client
	Cache    clustercache.Reader
	Recorder events.EventRecorder
	// Resync is how often a quiet cluster is read, restored and verified anyway (DefaultResync).
	Resync time.Duration
	// CleanupGracePeriod bounds a deletion's wait for unreachable members
	// (DefaultCleanupGracePeriod).
	CleanupGracePeriod time.Duration

	state   *syncState
	watches *memberWatches
	wake    *waker
}

// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=rolegrants,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=rolegrants/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=rolegrants/finalizers,verbs=update
// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=workspaces;namespacequotas,verbs=get;list;watch
// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the controller.
func (r *RoleGrantReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, opts controller.Options) error {
	if r.Cache == nil {
		return errors.New("the RoleGrant controller needs the member cache")
	}
	if err := indexOnce(ctx, mgr); err != nil {
		return err
	}
	if err := setupMemberFinalizer(mgr, r.grace()); err != nil {
		return err
	}
	r.state, r.wake = newSyncState(), newWaker()
	r.watches = newMemberWatches(r.Cache, tenancyv1.RoleGrantLabel, r.state, r.wake,
		clustercache.WatchSpec{Resource: roleBindingsGVR, LabelSelector: tenancyv1.RoleGrantLabel},
		clustercache.WatchSpec{Resource: clusterRoleBindingsGVR, LabelSelector: tenancyv1.RoleGrantLabel})
	go r.wake.pump(ctx)
	go func() {
		<-ctx.Done()
		r.watches.stopAll()
	}()
	return ctrl.NewControllerManagedBy(mgr).
		Named("rolegrant").
		For(&tenancyv1.RoleGrant{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&tenancyv1.NamespaceQuota{}, handler.EnqueueRequestsFromMapFunc(r.grantsOfQuota), builder.WithPredicates(placementChanged)).
		Watches(&tenancyv1.Workspace{}, handler.EnqueueRequestsFromMapFunc(r.grantsOfWorkspace),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&clustersv1.MemberCluster{}, handler.EnqueueRequestsFromMapFunc(r.allGrants),
			builder.WithPredicates(predicate.Or(predicate.LabelChangedPredicate{}, predicate.GenerationChangedPredicate{}))).
		WatchesRawSource(source.Channel(r.Cache.Subscribe(), handler.EnqueueRequestsFromMapFunc(r.grantsOfMember))).
		WatchesRawSource(source.Channel(r.wake.out, &handler.EnqueueRequestForObject{})).
		WithOptions(opts).
		Complete(r)
}

func (r *RoleGrantReconciler) grantsOfWorkspace(ctx context.Context, o client.Object) []reconcile.Request {
	return r.grantsIn(ctx, o.GetName())
}

// placementChanged passes NamespaceQuota events that change which namespaces a workspace has
// where (not its usage, which changes all the time).
var placementChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*tenancyv1.NamespaceQuota), e.ObjectNew.(*tenancyv1.NamespaceQuota)
		return o.DeletionTimestamp.IsZero() != n.DeletionTimestamp.IsZero() || appliedWorkspace(o) != appliedWorkspace(n) ||
			o.Spec.Workspace != n.Spec.Workspace || !slices.Equal(placedIn(o), placedIn(n))
	},
}

func appliedWorkspace(n *tenancyv1.NamespaceQuota) string {
	if n.Status.Applied == nil {
		return ""
	}
	return n.Status.Applied.Workspace
}

func placedIn(n *tenancyv1.NamespaceQuota) []string {
	var out []string
	for _, c := range n.Status.Clusters {
		if c.Placed && c.Phase != tenancyv1.NamespaceRemoving {
			out = append(out, c.Name)
		}
	}
	return out
}

// grantsOfQuota wakes the workspace-scoped RoleGrants of a NamespaceQuota's workspace (its
// namespaces come and go with the NamespaceQuota's status).
func (r *RoleGrantReconciler) grantsOfQuota(ctx context.Context, o client.Object) []reconcile.Request {
	var out []reconcile.Request
	for _, ws := range quotaWorkspaces(o) {
		out = append(out, r.grantsIn(ctx, ws)...)
	}
	return out
}

func (r *RoleGrantReconciler) grantsIn(ctx context.Context, workspace string) []reconcile.Request {
	var list tenancyv1.RoleGrantList
	if err := r.Client.List(ctx, &list, client.MatchingFields{GrantWorkspaceIndex: workspace}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list RoleGrants of a workspace")
		return nil
	}
	return grantRequests(list.Items, nil)
}

func (r *RoleGrantReconciler) allGrants(ctx context.Context, _ client.Object) []reconcile.Request {
	var list tenancyv1.RoleGrantList
	if err := r.Client.List(ctx, &list); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list RoleGrants for a MemberCluster")
		return nil
	}
	return grantRequests(list.Items, nil)
}

func (r *RoleGrantReconciler) grantsOfMember(ctx context.Context, o client.Object) []reconcile.Request {
	owners := map[string]bool{}
	for _, ow := range r.state.markMember(o.GetName()) {
		owners[ow] = true
	}
	var list tenancyv1.RoleGrantList
	if err := r.Client.List(ctx, &list); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list RoleGrants for a member")
		return nil
	}
	return grantRequests(list.Items, func(g *tenancyv1.RoleGrant) bool {
		if owners[g.Name] {
			return true
		}
		for _, c := range g.Status.Clusters {
			if c.Name == o.GetName() {
				return true
			}
		}
		return false
	})
}

func grantRequests(items []tenancyv1.RoleGrant, keep func(*tenancyv1.RoleGrant) bool) []reconcile.Request {
	out := make([]reconcile.Request, 0, len(items))
	for i := range items {
		if keep == nil || keep(&items[i]) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: items[i].Name}})
		}
	}
	return out
}

func (r *RoleGrantReconciler) resync() time.Duration {
	if r.Resync > 0 {
		return r.Resync
	}
	return DefaultResync
}

func (r *RoleGrantReconciler) grace() time.Duration {
	if r.CleanupGracePeriod > 0 {
		return r.CleanupGracePeriod
	}
	return DefaultCleanupGracePeriod
}

// grantTargets are where a RoleGrant's bindings go: per cluster, the namespaces of its
// RoleBindings, or none for a ClusterRoleBinding.
type grantTargets struct {
	clusters []string
	// namespaces per cluster; clusterWide: a ClusterRoleBinding in each cluster instead.
	namespaces  map[string][]string
	clusterWide bool
	verdict     *verdict
}

// targets resolves the RoleGrant's scope from the management cluster.
func (r *RoleGrantReconciler) targets(ctx context.Context, rg *tenancyv1.RoleGrant) (*grantTargets, error) {
	t := &grantTargets{namespaces: map[string][]string{}}
	sc := rg.Spec.Scope
	switch {
	case sc.Workspace != "":
		ws := &tenancyv1.Workspace{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: sc.Workspace}, ws); err != nil {
			if apierrors.IsNotFound(err) {
				t.verdict = &verdict{reason: tenancyv1.ReasonWorkspaceNotFound, stalled: true,
					msg: fmt.Sprintf("workspace %q does not exist; no bindings are made (those made before are removed)", sc.Workspace)}
				return t, nil
			}
			return nil, err
		}
		var quotas tenancyv1.NamespaceQuotaList
		if err := r.Client.List(ctx, &quotas, client.MatchingFields{WorkspaceIndex: ws.Name}); err != nil {
			return nil, err
		}
		// Only in the workspace's clusters now (a cluster taken out of it loses its grants at
		// once, whatever its NamespaceQuotas' status still says).
		wsClusters, err := selectClusters(ctx, r.Client, ws.Spec.Clusters, "spec.clusters")
		if err != nil && !errors.As(err, new(*fleet.SelectorError)) {
			return nil, err
		}
		inWS := map[string]bool{}
		for _, c := range wsClusters {
			inWS[c] = true
		}
		// The workspace's namespaces: those its NamespaceQuotas have placed (a member that is
		// unreachable for a while keeps its bindings; a NamespaceQuota being deleted takes its
		// namespace out of the workspace).
		for _, q := range quotas.Items {
			// The namespaces it holds for this workspace: its applied spec's workspace (a
			// NamespaceQuota moving here from another workspace joins once admitted here).
			if !q.DeletionTimestamp.IsZero() || q.Status.Applied == nil || q.Status.Applied.Workspace != ws.Name {
				continue
			}
			for _, c := range q.Status.Clusters {
				if c.Placed && c.Phase != tenancyv1.NamespaceRemoving && inWS[c.Name] {
					t.namespaces[c.Name] = append(t.namespaces[c.Name], q.Spec.Namespace)
				}
			}
		}
		for c, ns := range t.namespaces {
			sort.Strings(ns)
			t.clusters = append(t.clusters, c)
		}
		sort.Strings(t.clusters)
	case sc.Cluster != "":
		mc := &clustersv1.MemberCluster{}
		if err := r.Client.Get(ctx, client.ObjectKey{Name: sc.Cluster}, mc); err != nil {
			if !apierrors.IsNotFound(err) {
				return nil, err
			}
			t.verdict = &verdict{reason: ReasonClusterNotFound, stalled: true, msg: fmt.Sprintf("MemberCluster %q does not exist", sc.Cluster)}
			return t, nil
		}
		if !mc.DeletionTimestamp.IsZero() {
			// Leaving the fleet: its bindings are removed, none made.
			t.verdict = &verdict{reason: ReasonClusterNotFound, stalled: true, msg: fmt.Sprintf("MemberCluster %q is being deleted", sc.Cluster)}
			return t, nil
		}
		t.clusters = []string{sc.Cluster}
		if sc.Namespace != "" {
			t.namespaces[sc.Cluster] = []string{sc.Namespace}
		} else {
			t.clusterWide = true
		}
	default:
		sel, err := selectClusters(ctx, r.Client, tenancyv1.ClusterTargets{ClusterSelector: sc.ClusterSelector}, "spec.scope.clusterSelector")
		var selErr *fleet.SelectorError
		if errors.As(err, &selErr) {
			t.verdict = &verdict{reason: ReasonInvalidSelector, stalled: true, msg: selErr.Error()}
			return t, nil
		}
		if err != nil {
			return nil, err
		}
		t.clusters, t.clusterWide = sel, true
	}
	if len(t.clusters) == 0 && t.verdict == nil {
		msg := "the scope matches no cluster"
		if sc.Workspace != "" {
			msg = fmt.Sprintf("workspace %s has no namespaces in place yet", sc.Workspace)
		}
		t.verdict = &verdict{ready: true, reason: tenancyv1.ReasonNoClusters, msg: msg}
	}
	return t, nil
}

// desiredDigest identifies what the RoleGrant wants in one cluster.
func desiredDigest(rg *tenancyv1.RoleGrant, t *grantTargets, cluster string) string {
	return strconv.FormatInt(rg.Generation, 10) + "|" + strconv.FormatBool(t.clusterWide) + "|" + strings.Join(t.namespaces[cluster], ",")
}

func (r *RoleGrantReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	rg := &tenancyv1.RoleGrant{}
	if err := r.Client.Get(ctx, req.NamespacedName, rg); err != nil {
		if apierrors.IsNotFound(err) {
			r.state.forgetOwner(req.Name, nil)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !rg.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, rg)
	}
	if !controllerutil.ContainsFinalizer(rg, tenancyv1.RoleGrantFinalizer) {
		orig := rg.DeepCopy()
		controllerutil.AddFinalizer(rg, tenancyv1.RoleGrantFinalizer)
		if err := r.Client.Patch(ctx, rg, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	t, err := r.targets(ctx, rg)
	if err != nil {
		return ctrl.Result{}, err
	}
	orig := rg.DeepCopy()
	now := time.Now()
	prev := map[string]tenancyv1.GrantClusterStatus{}
	for _, c := range rg.Status.Clusters {
		prev[c.Name] = c
	}
	wanted := map[string]bool{}
	for _, c := range t.clusters {
		wanted[c] = true
	}
	next := time.Time{}
	later := func(at time.Time) {
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	var work, leaving []string
	for _, c := range t.clusters {
		due, at := r.state.due(rg.Name, rg.UID, c, desiredDigest(rg, t, c), r.watches.watched(c), r.resync(), now)
		if due {
			work = append(work, c)
		} else {
			later(at)
		}
	}
	// Clusters it holds bindings in and no longer wants: removed (a stalled scope, e.g. a
	// missing workspace, wants none).
	for _, c := range rg.Status.Clusters {
		if !wanted[c.Name] {
			leaving = append(leaving, c.Name)
		}
	}
	results := make([]tenancyv1.GrantClusterStatus, len(work))
	forEachCluster(work, func(i int, c string) {
		digest := desiredDigest(rg, t, c)
		begun := r.state.begin(rg.Name, c)
		inPlace := prev[c].Phase == tenancyv1.GrantVerified && r.state.applied(rg.Name, rg.UID, c) == digest
		st, written, failed := r.syncCluster(ctx, rg, c, t, prev[c], inPlace)
		r.state.done(rg.Name, rg.UID, c, digest, failed, written, begun, time.Now())
		results[i] = st
	})
	for _, c := range work {
		// The next pass over the clusters worked on now: a retry, the resync, or the backstop.
		_, at := r.state.due(rg.Name, rg.UID, c, desiredDigest(rg, t, c), r.watches.watched(c), r.resync(), time.Now())
		later(at)
	}
	removed := make([]bool, len(leaving))
	leftMsg := make([]string, len(leaving))
	forEachCluster(leaving, func(i int, c string) {
		removed[i], leftMsg[i] = r.cleanupCluster(ctx, rg, c, nil)
		if removed[i] {
			r.state.forget(rg.Name, c)
		}
	})

	byName := map[string]tenancyv1.GrantClusterStatus{}
	for i, c := range work {
		byName[c] = results[i]
	}
	var clusters []tenancyv1.GrantClusterStatus
	for _, c := range t.clusters {
		st, ok := byName[c]
		if !ok {
			if st, ok = prev[c]; !ok {
				st = tenancyv1.GrantClusterStatus{Name: c, Phase: tenancyv1.GrantPending}
			}
		}
		clusters = append(clusters, grantTransition(st, prev, now))
	}
	for i, c := range leaving {
		if !removed[i] {
			st := prev[c]
			st.Phase, st.Message = tenancyv1.GrantRemoving, truncate(leftMsg[i], 1024)
			clusters = append(clusters, grantTransition(st, prev, now))
			later(now.Add(10 * time.Second))
		}
	}
	if len(clusters) > tenancyv1.MaxWorkspaceNamespaces {
		clusters = clusters[:tenancyv1.MaxWorkspaceNamespaces]
	}
	r.events(rg, prev, clusters)
	st := &rg.Status
	st.Clusters = clusters
	verified, failed, pending := 0, map[string]string{}, 0
	for _, c := range clusters {
		switch c.Phase {
		case tenancyv1.GrantVerified:
			verified++
		case tenancyv1.GrantFailed:
			failed[c.Name] = c.Message
		default:
			pending++
		}
	}
	st.ClusterSummary = fmt.Sprintf("%d/%d", verified, len(t.clusters))
	v := t.verdict
	if v != nil && v.ready && (pending > 0 || len(failed) > 0) {
		// Nothing wanted, but bindings made before are still being removed.
		v = nil
	}
	switch {
	case v != nil:
	case len(failed) > 0:
		v = &verdict{reason: tenancyv1.ReasonClustersFailed, stalled: true,
			msg: fmt.Sprintf("%d of %d clusters failed: %s", len(failed), len(clusters), listFailures(failed))}
	case pending > 0:
		v = &verdict{reason: tenancyv1.ReasonProgressing, reconciling: true,
			msg: fmt.Sprintf("verified in %d of %d clusters", verified, len(t.clusters))}
	default:
		v = &verdict{ready: true, reason: tenancyv1.ReasonSucceeded,
			msg: fmt.Sprintf("%s granted and verified by the members' authorizers in %d clusters", rg.Spec.RoleRef.Name, verified)}
	}
	ctrl.LoggerFrom(ctx).V(1).Info("RoleGrant pass", "generation", rg.Generation, "worked", work, "leaving", leaving,
		"verified", verified, "clusters", len(t.clusters), "reason", v.reason)
	setConditions(&st.Conditions, rg.Generation, *v)
	st.ObservedGeneration = rg.Generation
	if !equality.Semantic.DeepEqual(orig.Status, rg.Status) {
		// With a lock, as for NamespaceQuotas: never write back an older copy's view.
		if err := r.Client.Status().Patch(ctx, rg, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			r.state.redo(rg.Name, work)
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	if next.IsZero() {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{RequeueAfter: max(time.Until(next), time.Second)}, nil
}

func grantTransition(st tenancyv1.GrantClusterStatus, prev map[string]tenancyv1.GrantClusterStatus, now time.Time) tenancyv1.GrantClusterStatus {
	if p, ok := prev[st.Name]; ok && p.Phase == st.Phase && p.LastTransitionTime != nil {
		st.LastTransitionTime = p.LastTransitionTime
		return st
	}
	t := metav1.NewTime(now.Truncate(time.Second))
	st.LastTransitionTime = &t
	return st
}

func (r *RoleGrantReconciler) events(rg *tenancyv1.RoleGrant, prev map[string]tenancyv1.GrantClusterStatus, now []tenancyv1.GrantClusterStatus) {
	if r.Recorder == nil {
		return
	}
	for _, c := range now {
		p, had := prev[c.Name]
		if had && p.Phase == c.Phase && p.Message == c.Message {
			continue
		}
		switch c.Phase {
		case tenancyv1.GrantVerified:
			if !had || p.Phase != tenancyv1.GrantVerified {
				r.Recorder.Eventf(rg, memberRef(c.Name), corev1.EventTypeNormal, "Verified", "Verify", "%s: %d bindings; the member's authorizer allows %s",
					c.Name, c.Bindings, c.Verified.Check)
			}
		case tenancyv1.GrantFailed:
			r.Recorder.Eventf(rg, memberRef(c.Name), corev1.EventTypeWarning, "GrantFailed", "Apply", "%s: %s", c.Name, c.Message)
		}
	}
}

// bindingName is the name of every binding a RoleGrant makes.
func bindingName(rg *tenancyv1.RoleGrant) string { return "paddock-" + rg.Name }

func grantLabels(rg *tenancyv1.RoleGrant) map[string]string {
	return map[string]string{tenancyv1.RoleGrantLabel: rg.Name, tenancyv1.RoleGrantUIDLabel: string(rg.UID), ManagedByLabel: managedBy}
}

func grantSubjects(rg *tenancyv1.RoleGrant) []rbacv1.Subject {
	out := make([]rbacv1.Subject, 0, len(rg.Spec.Subjects))
	for _, s := range rg.Spec.Subjects {
		sub := rbacv1.Subject{Kind: s.Kind, Name: s.Name}
		switch s.Kind {
		case rbacv1.ServiceAccountKind:
			sub.Namespace = s.Namespace
		default:
			sub.APIGroup = rbacv1.GroupName
		}
		out = append(out, sub)
	}
	return out
}

// syncCluster makes the RoleGrant's bindings in one cluster equal to its spec, removes the ones
// it no longer wants there, and asks the member's authorizer whether they work.
func (r *RoleGrantReconciler) syncCluster(ctx context.Context, rg *tenancyv1.RoleGrant, cluster string, t *grantTargets, prev tenancyv1.GrantClusterStatus, inPlace bool) (tenancyv1.GrantClusterStatus, map[string]string, bool) {
	st := tenancyv1.GrantClusterStatus{Name: cluster, Bindings: prev.Bindings, Verified: prev.Verified}
	fail := func(phase tenancyv1.GrantPhase, msg string) (tenancyv1.GrantClusterStatus, map[string]string, bool) {
		st.Phase, st.Message = phase, truncate(msg, 1024)
		return st, nil, true
	}
	acc, err := r.Cache.Get(ctx, cluster)
	if err != nil {
		return fail(tenancyv1.GrantUnreachable, notUsable(cluster, err))
	}
	if err := r.watches.ensure(ctx, cluster); err != nil {
		ctrl.LoggerFrom(ctx).V(1).Info("Member watches not running; resyncing more often", "member", cluster, "error", err.Error())
	}
	kc, err := acc.Kubernetes()
	if err != nil {
		return fail(tenancyv1.GrantFailed, err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, memberTimeout)
	defer cancel()
	memberErr := func(what string, err error) (tenancyv1.GrantClusterStatus, map[string]string, bool) {
		if ctx.Err() != nil || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) {
			return fail(tenancyv1.GrantUnreachable, what+": "+err.Error())
		}
		return fail(tenancyv1.GrantFailed, what+": "+err.Error())
	}
	name, labels, subjects := bindingName(rg), grantLabels(rg), grantSubjects(rg)
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: rg.Spec.RoleRef.Name}
	written := map[string]string{}
	var changed []string
	var count int32

	// What is there now (labelled as this RoleGrant's), to remove what it no longer wants: from
	// the member's watch cache (resourceVersion 0), not a quorum read of etcd on every pass. A
	// stale answer is safe: deletes are conditional on UID, and a create of one that exists falls
	// back to reading it.
	sel := metav1.ListOptions{LabelSelector: tenancyv1.RoleGrantLabel + "=" + rg.Name, ResourceVersion: "0"}
	haveRB, err := kc.RbacV1().RoleBindings(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return memberErr("listing RoleBindings", err)
	}
	haveCRB, err := kc.RbacV1().ClusterRoleBindings().List(ctx, sel)
	if err != nil {
		return memberErr("listing ClusterRoleBindings", err)
	}
	wantNS := map[string]bool{}
	if !t.clusterWide {
		for _, ns := range t.namespaces[cluster] {
			wantNS[ns] = true
		}
	}
	// The ones kept, as listed: a binding already equal to the spec costs no further request.
	listedRB := map[string]*rbacv1.RoleBinding{}
	var listedCRB *rbacv1.ClusterRoleBinding
	for i := range haveRB.Items {
		b := haveRB.Items[i]
		// Kept only when wanted, of this very RoleGrant, and of its role: a binding of the role
		// granted before goes first (fail closed), even while the new role cannot be granted.
		if b.Name == name && wantNS[b.Namespace] && b.Labels[tenancyv1.RoleGrantUIDLabel] == string(rg.UID) && b.RoleRef == ref {
			listedRB[b.Namespace] = &haveRB.Items[i]
			continue
		}
		uid := b.UID
		if err := kc.RbacV1().RoleBindings(b.Namespace).Delete(ctx, b.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return memberErr("removing RoleBinding "+b.Namespace+"/"+b.Name, err)
		}
	}
	for i := range haveCRB.Items {
		b := haveCRB.Items[i]
		if b.Name == name && t.clusterWide && b.Labels[tenancyv1.RoleGrantUIDLabel] == string(rg.UID) && b.RoleRef == ref {
			listedCRB = &haveCRB.Items[i]
			continue
		}
		uid := b.UID
		if err := kc.RbacV1().ClusterRoleBindings().Delete(ctx, b.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return memberErr("removing ClusterRoleBinding "+b.Name, err)
		}
	}

	role, err := kc.RbacV1().ClusterRoles().Get(ctx, rg.Spec.RoleRef.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		st.Bindings = 0
		return fail(tenancyv1.GrantFailed, fmt.Sprintf("ClusterRole %q does not exist in %s; create it there, or grant another role (bindings of another role made before were removed)", rg.Spec.RoleRef.Name, cluster))
	}
	if err != nil {
		return memberErr("reading ClusterRole "+rg.Spec.RoleRef.Name, err)
	}

	var failures []string
	if t.clusterWide {
		rv, did, err := "", false, error(nil)
		if b := listedCRB; b != nil && b.RoleRef == ref && hasAll(b.Labels, labels) && equality.Semantic.DeepEqual(b.Subjects, subjects) {
			rv = b.ResourceVersion
		} else {
			rv, did, err = r.applyClusterRoleBinding(ctx, kc, name, labels, subjects, ref)
		}
		if err != nil {
			return memberErr("ClusterRoleBinding "+name, err)
		}
		written[objectKey("clusterrolebindings", "", name)] = rv
		count++
		if did {
			changed = append(changed, "")
		}
	} else {
		for _, ns := range t.namespaces[cluster] {
			if b := listedRB[ns]; b != nil && b.RoleRef == ref && hasAll(b.Labels, labels) && equality.Semantic.DeepEqual(b.Subjects, subjects) {
				written[objectKey("rolebindings", ns, name)] = b.ResourceVersion
				count++
				continue
			}
			rv, did, err := r.applyRoleBinding(ctx, kc, ns, name, labels, subjects, ref)
			if err != nil {
				if apierrors.IsNotFound(err) {
					failures = append(failures, fmt.Sprintf("namespace %s does not exist in %s", ns, cluster))
					continue
				}
				if ctx.Err() != nil {
					return memberErr("RoleBinding "+ns+"/"+name, err)
				}
				failures = append(failures, fmt.Sprintf("RoleBinding %s/%s: %v", ns, name, err))
				continue
			}
			written[objectKey("rolebindings", ns, name)] = rv
			count++
			if did {
				changed = append(changed, ns)
			}
		}
	}
	st.Bindings = count
	if len(changed) > 0 && inPlace && r.Recorder != nil {
		r.Recorder.Eventf(rg, memberRef(cluster), corev1.EventTypeWarning, "DriftCorrected", "Apply",
			"%d bindings of %s in %s had been deleted or changed outside Paddock and were restored", len(changed), rg.Name, cluster)
	}
	if len(failures) > 0 {
		st.Phase, st.Message = tenancyv1.GrantFailed, truncate(strings.Join(firstN(failures, 5), "; "), 1024)
		return st, written, true
	}

	// Proof: the member's authorizer, asked about the first subject and one thing the role
	// grants, where a binding was just changed (else the first binding).
	ns := ""
	if !t.clusterWide {
		ns = t.namespaces[cluster][0]
		if len(changed) > 0 {
			ns = changed[0]
		}
	}
	check, ra, nra, ok := verificationFor(role, ns)
	if !ok {
		return fail(tenancyv1.GrantFailed, fmt.Sprintf("bindings made, but ClusterRole %s grants nothing in %s that its bindings can give (no rules, or only non-resource URLs, which a RoleBinding cannot grant); an aggregated role whose aggregation has not run yet is asked again",
			rg.Spec.RoleRef.Name, cluster))
	}
	sar := subjectReview(rg.Spec.Subjects[0], ra, nra)
	res, err := kc.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return memberErr("asking the member's authorizer", err)
	}
	st.Verified = &tenancyv1.Verification{Allowed: res.Status.Allowed, Check: describeSubject(rg.Spec.Subjects[0]) + " " + check, Time: metav1.NewTime(time.Now().Truncate(time.Second))}
	if !res.Status.Allowed {
		// The authorizer's cache follows bindings within a moment; asked again shortly.
		st.Phase, st.Message = tenancyv1.GrantApplied, "bindings made; the member's authorizer does not allow "+st.Verified.Check+" yet"
		if res.Status.Reason != "" {
			st.Message += " (" + truncate(res.Status.Reason, 200) + ")"
		}
		return st, written, true
	}
	st.Phase, st.Message = tenancyv1.GrantVerified, ""
	return st, written, false
}

func (r *RoleGrantReconciler) applyRoleBinding(ctx context.Context, kc kubernetes.Interface, ns, name string, labels map[string]string, subjects []rbacv1.Subject, ref rbacv1.RoleRef) (string, bool, error) {
	want := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}, Subjects: subjects, RoleRef: ref}
	return applyBinding(ctx, kc.RbacV1().RoleBindings(ns), "RoleBinding", want,
		func(b *rbacv1.RoleBinding) (*metav1.ObjectMeta, *[]rbacv1.Subject, rbacv1.RoleRef) {
			return &b.ObjectMeta, &b.Subjects, b.RoleRef
		},
		(*rbacv1.RoleBinding).DeepCopy)
}

func (r *RoleGrantReconciler) applyClusterRoleBinding(ctx context.Context, kc kubernetes.Interface, name string, labels map[string]string, subjects []rbacv1.Subject, ref rbacv1.RoleRef) (string, bool, error) {
	want := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Subjects: subjects, RoleRef: ref}
	return applyBinding(ctx, kc.RbacV1().ClusterRoleBindings(), "ClusterRoleBinding", want,
		func(b *rbacv1.ClusterRoleBinding) (*metav1.ObjectMeta, *[]rbacv1.Subject, rbacv1.RoleRef) {
			return &b.ObjectMeta, &b.Subjects, b.RoleRef
		},
		(*rbacv1.ClusterRoleBinding).DeepCopy)
}

// bindingClient is the typed client of RoleBindings (one namespace) or ClusterRoleBindings.
type bindingClient[T any] interface {
	Create(ctx context.Context, b T, opts metav1.CreateOptions) (T, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Update(ctx context.Context, b T, opts metav1.UpdateOptions) (T, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
}

// applyBinding makes the binding want in a member and says its resourceVersion and whether it
// wrote. One not in the pass's list of this RoleGrant's bindings is most likely missing, so it is
// created straight away (one request); one that exists is read: left alone if not Paddock's,
// replaced if of another role (roleRef is immutable), else updated to want's labels and subjects.
func applyBinding[T interface {
	*rbacv1.RoleBinding | *rbacv1.ClusterRoleBinding
}](ctx context.Context, c bindingClient[T], kind string, want T,
	parts func(T) (*metav1.ObjectMeta, *[]rbacv1.Subject, rbacv1.RoleRef), deepCopy func(T) T) (string, bool, error) {
	wm, wsubs, wref := parts(want)
	create := func() (string, bool, error) {
		b, err := c.Create(ctx, want, metav1.CreateOptions{FieldManager: fieldManager})
		if err != nil {
			return "", false, err
		}
		m, _, _ := parts(b)
		return m.ResourceVersion, true, nil
	}
	rv, did, err := create()
	if err == nil || !apierrors.IsAlreadyExists(err) {
		return rv, did, err
	}
	b, err := c.Get(ctx, wm.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return create()
	case err != nil:
		return "", false, err
	}
	m, subs, ref := parts(b)
	if m.Labels[ManagedByLabel] != managedBy {
		return "", false, fmt.Errorf("a %s of that name, not made by Paddock, exists; Paddock leaves it alone", kind)
	}
	if ref != wref {
		uid := m.UID
		if err := c.Delete(ctx, wm.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return "", false, err
		}
		return create()
	}
	if hasAll(m.Labels, wm.Labels) && equality.Semantic.DeepEqual(*subs, *wsubs) {
		return m.ResourceVersion, false, nil
	}
	b = deepCopy(b)
	m, subs, _ = parts(b)
	if m.Labels == nil {
		m.Labels = map[string]string{}
	}
	for k, v := range wm.Labels {
		m.Labels[k] = v
	}
	*subs = *wsubs
	if b, err = c.Update(ctx, b, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
		return "", false, err
	}
	m, _, _ = parts(b)
	return m.ResourceVersion, true, nil
}

// verificationFor picks one thing the role grants, to ask the authorizer about: the first
// resource rule whose verb, group and resource are all concrete, else the first resource rule as
// written (wildcards and all: a review of "*" matches only a rule of "*", which is what the role
// grants), else the first non-resource rule. ok is false for a role with no rule to check.
func verificationFor(role *rbacv1.ClusterRole, ns string) (what string, ra *authzv1.ResourceAttributes, nra *authzv1.NonResourceAttributes, ok bool) {
	concrete := func(r rbacv1.PolicyRule) bool {
		return r.Verbs[0] != "*" && r.Resources[0] != "*" && !strings.Contains(r.Resources[0], "/") && r.APIGroups[0] != "*"
	}
	var pick *rbacv1.PolicyRule
	for _, strict := range []bool{true, false} {
		for i := range role.Rules {
			r := role.Rules[i]
			if len(r.Verbs) == 0 || len(r.Resources) == 0 || len(r.APIGroups) == 0 || len(r.ResourceNames) > 0 || (strict && !concrete(r)) {
				continue
			}
			pick = &role.Rules[i]
			break
		}
		if pick != nil {
			break
		}
	}
	if pick != nil {
		res, sub, _ := strings.Cut(pick.Resources[0], "/")
		ra = &authzv1.ResourceAttributes{Namespace: ns, Verb: pick.Verbs[0], Group: pick.APIGroups[0], Resource: res, Subresource: sub}
		what = ra.Verb + " " + pick.Resources[0]
		if ra.Group != "" {
			what += "." + ra.Group
		}
		if ns != "" {
			what += " in namespace " + ns
		} else {
			what += " in all namespaces"
		}
		return what, ra, nil, true
	}
	for _, r := range role.Rules {
		// (A RoleBinding cannot grant non-resource URLs.)
		if ns == "" && len(r.NonResourceURLs) > 0 && len(r.Verbs) > 0 {
			nra = &authzv1.NonResourceAttributes{Path: r.NonResourceURLs[0], Verb: r.Verbs[0]}
			return nra.Verb + " " + nra.Path, nil, nra, true
		}
	}
	return "", nil, nil, false
}

// subjectReview asks about one subject.
func subjectReview(s tenancyv1.Subject, ra *authzv1.ResourceAttributes, nra *authzv1.NonResourceAttributes) *authzv1.SubjectAccessReview {
	spec := authzv1.SubjectAccessReviewSpec{ResourceAttributes: ra, NonResourceAttributes: nra}
	switch s.Kind {
	case rbacv1.UserKind:
		spec.User = s.Name
	case rbacv1.GroupKind:
		// A user of no other group, so that only the group's bindings answer.
		spec.User, spec.Groups = "paddock:verification", []string{s.Name}
	case rbacv1.ServiceAccountKind:
		spec.User = "system:serviceaccount:" + s.Namespace + ":" + s.Name
		spec.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:" + s.Namespace}
	}
	return &authzv1.SubjectAccessReview{Spec: spec}
}

func describeSubject(s tenancyv1.Subject) string {
	switch s.Kind {
	case rbacv1.ServiceAccountKind:
		return "ServiceAccount " + s.Namespace + "/" + s.Name
	default:
		return s.Kind + " " + s.Name
	}
}

// cleanupCluster removes every binding labelled as this RoleGrant's in one cluster, and then
// (when verify is set) asks the member's authorizer whether the subject still may do what the
// role grants. It says whether the cluster is done, else why not.
func (r *RoleGrantReconciler) cleanupCluster(ctx context.Context, rg *tenancyv1.RoleGrant, cluster string, verify *string) (bool, string) {
	acc, gone, err := cleanupAccessor(ctx, r.Client, r.Cache, cluster)
	if gone {
		return true, ""
	}
	if err != nil {
		return false, notUsable(cluster, err)
	}
	kc, err := acc.Kubernetes()
	if err != nil {
		return false, err.Error()
	}
	ctx, cancel := context.WithTimeout(ctx, memberTimeout)
	defer cancel()
	sel := metav1.ListOptions{LabelSelector: tenancyv1.RoleGrantLabel + "=" + rg.Name}
	rbs, err := kc.RbacV1().RoleBindings(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return false, "listing RoleBindings: " + err.Error()
	}
	crbs, err := kc.RbacV1().ClusterRoleBindings().List(ctx, sel)
	if err != nil {
		return false, "listing ClusterRoleBindings: " + err.Error()
	}
	var namespaces []string
	for _, b := range rbs.Items {
		uid := b.UID
		if err := kc.RbacV1().RoleBindings(b.Namespace).Delete(ctx, b.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return false, "deleting RoleBinding " + b.Namespace + "/" + b.Name + ": " + err.Error()
		}
		namespaces = append(namespaces, b.Namespace)
	}
	for _, b := range crbs.Items {
		uid := b.UID
		if err := kc.RbacV1().ClusterRoleBindings().Delete(ctx, b.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return false, "deleting ClusterRoleBinding " + b.Name + ": " + err.Error()
		}
	}
	if verify != nil && len(rbs.Items)+len(crbs.Items) > 0 {
		*verify = r.verifyRevoked(ctx, kc, rg, namespaces, len(crbs.Items) > 0)
	}
	return true, ""
}

// verifyRevoked asks the member's authorizer, after the bindings went, whether the subject may
// still do what the role grants, and says the answer.
func (r *RoleGrantReconciler) verifyRevoked(ctx context.Context, kc kubernetes.Interface, rg *tenancyv1.RoleGrant, namespaces []string, clusterWide bool) string {
	role, err := kc.RbacV1().ClusterRoles().Get(ctx, rg.Spec.RoleRef.Name, metav1.GetOptions{})
	if err != nil {
		return "not verified: reading ClusterRole " + rg.Spec.RoleRef.Name + ": " + err.Error()
	}
	ns := ""
	if !clusterWide && len(namespaces) > 0 {
		ns = namespaces[0]
	}
	check, ra, nra, ok := verificationFor(role, ns)
	if !ok {
		return "nothing to verify: ClusterRole " + rg.Spec.RoleRef.Name + " has no rules"
	}
	what := describeSubject(rg.Spec.Subjects[0]) + " " + check
	// The authorizer's cache follows the deletion within a moment.
	for range 5 {
		res, err := kc.AuthorizationV1().SubjectAccessReviews().Create(ctx, subjectReview(rg.Spec.Subjects[0], ra, nra), metav1.CreateOptions{})
		if err != nil {
			return "not verified: " + err.Error()
		}
		if !res.Status.Allowed {
			return "the member's authorizer no longer allows " + what
		}
		select {
		case <-ctx.Done():
			return "not verified: " + ctx.Err().Error()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return "the member's authorizer still allows " + what + " (other bindings grant it)"
}

// finalize removes every binding the RoleGrant made, in every cluster it may have made them in,
// verifies they no longer grant anything, and lets it go. Never wedged: clusters unreachable for
// the grace period are left (a Warning event names them).
func (r *RoleGrantReconciler) finalize(ctx context.Context, rg *tenancyv1.RoleGrant) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(rg, tenancyv1.RoleGrantFinalizer) {
		return ctrl.Result{}, nil
	}
	seen := map[string]bool{}
	var clusters []string
	for _, c := range rg.Status.Clusters {
		if !seen[c.Name] {
			seen[c.Name] = true
			clusters = append(clusters, c.Name)
		}
	}
	if t, err := r.targets(ctx, rg); err == nil {
		for _, c := range t.clusters {
			if !seen[c] {
				seen[c] = true
				clusters = append(clusters, c)
			}
		}
	}
	done := make([]bool, len(clusters))
	msgs := make([]string, len(clusters))
	proofs := make([]string, len(clusters))
	forEachCluster(clusters, func(i int, c string) { done[i], msgs[i] = r.cleanupCluster(ctx, rg, c, &proofs[i]) })
	left := map[string]string{}
	for i, c := range clusters {
		if !done[i] {
			left[c] = msgs[i]
			continue
		}
		if proofs[i] != "" && r.Recorder != nil {
			kind := corev1.EventTypeNormal
			if strings.Contains(proofs[i], "still allows") || strings.HasPrefix(proofs[i], "not verified") {
				kind = corev1.EventTypeWarning
			}
			r.Recorder.Eventf(rg, memberRef(c), kind, "Revoked", "Delete", "%s: bindings removed; %s", c, proofs[i])
		}
	}
	if len(left) > 0 {
		if waited := time.Since(rg.DeletionTimestamp.Time); waited < r.grace() {
			orig := rg.DeepCopy()
			prev := map[string]tenancyv1.GrantClusterStatus{}
			for _, c := range rg.Status.Clusters {
				prev[c.Name] = c
			}
			var st []tenancyv1.GrantClusterStatus
			for c, msg := range left {
				e := prev[c]
				e.Name, e.Phase, e.Message = c, tenancyv1.GrantRemoving, truncate(msg, 1024)
				st = append(st, grantTransition(e, prev, time.Now()))
			}
			sort.Slice(st, func(i, j int) bool { return st[i].Name < st[j].Name })
			rg.Status.Clusters = st
			setConditions(&rg.Status.Conditions, rg.Generation, verdict{reason: tenancyv1.ReasonDeleting, reconciling: true,
				msg: fmt.Sprintf("removing the bindings; %d clusters not reached yet: %s", len(left), listFailures(left))})
			if err := r.Client.Status().Patch(ctx, rg, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
				return ctrl.Result{}, client.IgnoreNotFound(err)
			}
			return ctrl.Result{RequeueAfter: min(10*time.Second, r.grace()-waited)}, nil
		}
		if r.Recorder != nil {
			r.Recorder.Eventf(rg, nil, corev1.EventTypeWarning, "CleanupAbandoned", "Delete",
				"gave up removing the bindings after %s from clusters not reachable (they may still grant %s there): %s", r.grace(), rg.Spec.RoleRef.Name, listFailures(left))
		}
	}
	orig := rg.DeepCopy()
	controllerutil.RemoveFinalizer(rg, tenancyv1.RoleGrantFinalizer)
	if err := r.Client.Patch(ctx, rg, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	r.state.forgetOwner(rg.Name, nil)
	return ctrl.Result{}, nil
}
