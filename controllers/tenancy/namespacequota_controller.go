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

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
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

// Names of what a NamespaceQuota keeps in its namespace, and the annotation that records which
// NamespaceQuota (by UID) created the namespace: only that one may delete it.
const (
	QuotaName           = "paddock-quota"
	LimitRangeName      = "paddock-limits"
	CreatedByAnnotation = "tenancy.paddock.dev/created-by"
)

// DefaultCleanupGracePeriod bounds how long a NamespaceQuota's (or RoleGrant's) deletion waits
// for members it cannot reach before it lets the object go (with a Warning event naming them).
const DefaultCleanupGracePeriod = 10 * time.Minute

var (
	namespacesGVR     = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	resourceQuotasGVR = schema.GroupVersionResource{Version: "v1", Resource: "resourcequotas"}
	limitRangesGVR    = schema.GroupVersionResource{Version: "v1", Resource: "limitranges"}
)

// NamespaceQuotaReconciler places a NamespaceQuota's namespace in each selected member, with a
// Paddock-owned ResourceQuota and LimitRange equal to its spec, once its workspace's budget has
// admitted it; reads back what the members' quotas enforce and count; and removes what it
// placed when a cluster leaves its selection or it is deleted.
type NamespaceQuotaReconciler struct {
	Client   client.Client
	Cache    clustercache.Reader
	Recorder events.EventRecorder
	// Resync is how often a quiet cluster is read and restored anyway (DefaultResync).
	Resync time.Duration
	// CleanupGracePeriod bounds a deletion's wait for unreachable members
	// (DefaultCleanupGracePeriod).
	CleanupGracePeriod time.Duration

	state   *syncState
	watches *memberWatches
	wake    *waker
}

// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=namespacequotas,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=namespacequotas/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=namespacequotas/finalizers,verbs=update
// +kubebuilder:rbac:groups=tenancy.paddock.dev,resources=workspaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=clusters.paddock.dev,resources=memberclusters,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager registers the controller.
func (r *NamespaceQuotaReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, opts controller.Options) error {
	if r.Cache == nil {
		return errors.New("the NamespaceQuota controller needs the member cache")
	}
	if err := indexOnce(ctx, mgr); err != nil {
		return err
	}
	if err := setupMemberFinalizer(mgr, r.grace()); err != nil {
		return err
	}
	r.state, r.wake = newSyncState(), newWaker()
	r.watches = newMemberWatches(r.Cache, tenancyv1.NamespaceQuotaLabel, r.state, r.wake,
		clustercache.WatchSpec{Resource: namespacesGVR, LabelSelector: tenancyv1.NamespaceQuotaLabel},
		clustercache.WatchSpec{Resource: resourceQuotasGVR, LabelSelector: tenancyv1.NamespaceQuotaLabel},
		clustercache.WatchSpec{Resource: limitRangesGVR, LabelSelector: tenancyv1.NamespaceQuotaLabel})
	go r.wake.pump(ctx)
	go func() {
		<-ctx.Done()
		r.watches.stopAll()
	}()
	return ctrl.NewControllerManagedBy(mgr).
		Named("namespacequota").
		For(&tenancyv1.NamespaceQuota{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&tenancyv1.Workspace{}, handler.EnqueueRequestsFromMapFunc(r.quotasOfWorkspace), builder.WithPredicates(workspaceDecisionChanged)).
		Watches(&clustersv1.MemberCluster{}, handler.EnqueueRequestsFromMapFunc(r.allQuotas),
			builder.WithPredicates(predicate.Or(predicate.LabelChangedPredicate{}, predicate.GenerationChangedPredicate{}))).
		WatchesRawSource(source.Channel(r.Cache.Subscribe(), handler.EnqueueRequestsFromMapFunc(r.quotasOfMember))).
		WatchesRawSource(source.Channel(r.wake.out, &handler.EnqueueRequestForObject{})).
		WithOptions(opts).
		Complete(r)
}

// workspaceDecisionChanged passes Workspace events that change what its NamespaceQuotas may do:
// its spec, or its budget's decisions (not its usage totals, which follow theirs).
var workspaceDecisionChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*tenancyv1.Workspace), e.ObjectNew.(*tenancyv1.Workspace)
		if o.Generation != n.Generation {
			return true
		}
		var or, nr []tenancyv1.Refusal
		if o.Status.Quota != nil {
			or = o.Status.Quota.Refused
		}
		if n.Status.Quota != nil {
			nr = n.Status.Quota.Refused
		}
		return !equality.Semantic.DeepEqual(o.Status.Allocations, n.Status.Allocations) || !equality.Semantic.DeepEqual(or, nr)
	},
}

func (r *NamespaceQuotaReconciler) quotasOfWorkspace(ctx context.Context, o client.Object) []reconcile.Request {
	var list tenancyv1.NamespaceQuotaList
	if err := r.Client.List(ctx, &list, client.MatchingFields{WorkspaceIndex: o.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list NamespaceQuotas of a Workspace")
		return nil
	}
	return quotaRequests(list.Items, nil)
}

func (r *NamespaceQuotaReconciler) allQuotas(ctx context.Context, _ client.Object) []reconcile.Request {
	var list tenancyv1.NamespaceQuotaList
	if err := r.Client.List(ctx, &list); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list NamespaceQuotas for a MemberCluster")
		return nil
	}
	return quotaRequests(list.Items, nil)
}

// quotasOfMember wakes the NamespaceQuotas in a member whose usability changed.
func (r *NamespaceQuotaReconciler) quotasOfMember(ctx context.Context, o client.Object) []reconcile.Request {
	owners := r.state.markMember(o.GetName())
	var list tenancyv1.NamespaceQuotaList
	if err := r.Client.List(ctx, &list); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to list NamespaceQuotas for a member")
		return nil
	}
	return quotaRequests(list.Items, func(n *tenancyv1.NamespaceQuota) bool {
		for _, c := range n.Status.Clusters {
			if c.Name == o.GetName() {
				return true
			}
		}
		for _, ow := range owners {
			if ow == n.Name {
				return true
			}
		}
		return false
	})
}

func quotaRequests(items []tenancyv1.NamespaceQuota, keep func(*tenancyv1.NamespaceQuota) bool) []reconcile.Request {
	out := make([]reconcile.Request, 0, len(items))
	for i := range items {
		if keep == nil || keep(&items[i]) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: items[i].Name}})
		}
	}
	return out
}

func (r *NamespaceQuotaReconciler) resync() time.Duration {
	if r.Resync > 0 {
		return r.Resync
	}
	return DefaultResync
}

func (r *NamespaceQuotaReconciler) grace() time.Duration {
	if r.CleanupGracePeriod > 0 {
		return r.CleanupGracePeriod
	}
	return DefaultCleanupGracePeriod
}

// plan is what one pass decided before touching members.
type plan struct {
	// selected are the clusters the namespace should be in; apply says whether the current spec
	// may be written to them (false: it waits for, or was refused by, the workspace's budget, or
	// is refused outright; the clusters already placed are kept at status.applied).
	selected []string
	apply    bool
	verdict  *verdict
	// conflicts are the selected clusters where another NamespaceQuota holds the namespace.
	conflicts map[string]string
	// allowed are the clusters the namespace may be in now (selected and in the workspace), when
	// known (nil: the workspace is missing or a selector does not parse). Whatever the budget
	// decides, a cluster it holds outside them is cleaned up.
	allowed map[string]bool
}

// target is what a pass makes a member hold: the current spec once admitted, else the last
// admitted one (status.applied).
type target struct {
	workspace  string
	generation int64
	hard       corev1.ResourceList
	limitRange *tenancyv1.LimitRangeDefaults
}

func (t target) digest() string { return strconv.FormatInt(t.generation, 10) + "/" + t.workspace }

func specTarget(nsq *tenancyv1.NamespaceQuota) target {
	return target{workspace: nsq.Spec.Workspace, generation: nsq.Generation, hard: nsq.Spec.Hard.Core(), limitRange: nsq.Spec.LimitRange}
}

func (r *NamespaceQuotaReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	nsq := &tenancyv1.NamespaceQuota{}
	if err := r.Client.Get(ctx, req.NamespacedName, nsq); err != nil {
		if apierrors.IsNotFound(err) {
			r.state.forgetOwner(req.Name, nil)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !nsq.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, nsq)
	}
	if !controllerutil.ContainsFinalizer(nsq, tenancyv1.NamespaceQuotaFinalizer) {
		orig := nsq.DeepCopy()
		controllerutil.AddFinalizer(nsq, tenancyv1.NamespaceQuotaFinalizer)
		if err := r.Client.Patch(ctx, nsq, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	p, err := r.plan(ctx, nsq)
	if err != nil {
		return ctrl.Result{}, err
	}
	orig := nsq.DeepCopy()
	st := &nsq.Status
	now := time.Now()
	prev := map[string]tenancyv1.NamespaceClusterStatus{}
	for _, c := range st.Clusters {
		prev[c.Name] = c
	}
	selected := map[string]bool{}
	for _, c := range p.selected {
		selected[c] = true
	}

	// What the members are made to hold, and where: the admitted spec in the selected
	// clusters; else the last admitted one, only where it is already placed.
	var tgt *target
	var candidates []string
	if p.apply {
		t := specTarget(nsq)
		tgt = &t
		st.Applied = &tenancyv1.AppliedSpec{Workspace: t.workspace, Generation: t.generation, Hard: t.hard.DeepCopy(), LimitRange: t.limitRange.DeepCopy()}
		for _, c := range p.selected {
			if _, conflict := p.conflicts[c]; !conflict {
				candidates = append(candidates, c)
			}
		}
	} else if a := st.Applied; a != nil {
		tgt = &target{workspace: a.Workspace, generation: a.Generation, hard: a.Hard, limitRange: a.LimitRange}
		for _, c := range st.Clusters {
			if c.Placed && c.Phase != tenancyv1.NamespaceRemoving && (p.allowed == nil || p.allowed[c.Name]) {
				candidates = append(candidates, c.Name)
			}
		}
	}
	next := time.Time{}
	later := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	var work, leaving []string
	if tgt != nil {
		for _, c := range candidates {
			due, at := r.state.due(nsq.Name, nsq.UID, c, tgt.digest(), r.watches.watched(c), r.resync(), now)
			if due {
				work = append(work, c)
			} else {
				later(at)
			}
		}
	}
	switch {
	case p.apply:
		for _, c := range st.Clusters {
			if !selected[c.Name] {
				leaving = append(leaving, c.Name)
			}
		}
	case p.allowed != nil:
		// Not applied, but a cluster it may no longer be in (out of its selection or of the
		// workspace, or its MemberCluster going) is cleaned up anyway.
		for _, c := range st.Clusters {
			if !p.allowed[c.Name] {
				leaving = append(leaving, c.Name)
			}
		}
	}
	if len(p.conflicts) > 0 {
		// The holder may let go (deleted, or out of the cluster): looked at again.
		later(now.Add(30 * time.Second))
	}
	results := make([]tenancyv1.NamespaceClusterStatus, len(work))
	forEachCluster(work, func(i int, c string) {
		pc, had := prev[c]
		if u := r.state.createdUID(nsq.Name, nsq.UID, c); u != "" && pc.NamespaceUID == "" {
			// Created by an earlier pass whose status this copy does not show yet.
			pc.Created, pc.NamespaceUID = true, u
		}
		digest := tgt.digest()
		inPlace := had && pc.Phase == tenancyv1.NamespaceActive && r.state.applied(nsq.Name, nsq.UID, c) == digest
		begun := r.state.begin(nsq.Name, c)
		res, written, failed := r.syncCluster(ctx, nsq, *tgt, c, pc, inPlace)
		if res.Created && res.NamespaceUID != "" {
			r.state.createdHere(nsq.Name, nsq.UID, c, res.NamespaceUID)
		}
		r.state.done(nsq.Name, nsq.UID, c, digest, failed, written, begun, time.Now())
		results[i] = res
	})
	for _, c := range work {
		// The next pass over the clusters worked on now: a retry, the resync, or the backstop.
		_, at := r.state.due(nsq.Name, nsq.UID, c, tgt.digest(), r.watches.watched(c), r.resync(), time.Now())
		later(at)
	}
	removed := make([]bool, len(leaving))
	leftMsg := make([]string, len(leaving))
	forEachCluster(leaving, func(i int, c string) {
		removed[i], leftMsg[i] = r.cleanupCluster(ctx, nsq, c, prev[c])
		if removed[i] {
			r.state.forget(nsq.Name, c)
		}
	})

	// Status: the selected clusters, worked on now or as they were, then the clusters left
	// from before (being removed; or, while the spec is not applied, kept as they are).
	byName := map[string]tenancyv1.NamespaceClusterStatus{}
	for i, c := range work {
		byName[c] = results[i]
	}
	var clusters []tenancyv1.NamespaceClusterStatus
	for _, c := range p.selected {
		cs, ok := byName[c]
		switch {
		case ok:
		case p.conflicts[c] != "":
			cs = tenancyv1.NamespaceClusterStatus{Name: c, Phase: tenancyv1.NamespaceFailed, Message: p.conflicts[c]}
			if pc, had := prev[c]; had {
				// What it placed there before (an older holder took the cluster) is not lost.
				cs.Created, cs.NamespaceUID = pc.Created, pc.NamespaceUID
			}
		default:
			if cs, ok = prev[c]; !ok {
				msg := "waiting for the workspace's budget to admit this spec"
				if p.verdict != nil {
					msg = p.verdict.msg
				}
				cs = tenancyv1.NamespaceClusterStatus{Name: c, Phase: tenancyv1.NamespacePending, Message: truncate(msg, 1024)}
			}
		}
		clusters = append(clusters, withTransition(cs, prev, now))
	}
	for i, c := range leaving {
		if !removed[i] {
			cs := prev[c]
			cs.Phase, cs.Message, cs.Placed = tenancyv1.NamespaceRemoving, leftMsg[i], false
			clusters = append(clusters, withTransition(cs, prev, now))
			later(now.Add(10 * time.Second))
		}
	}
	if !p.apply {
		isLeaving := map[string]bool{}
		for _, c := range leaving {
			isLeaving[c] = true
		}
		for _, c := range st.Clusters {
			if !selected[c.Name] && !isLeaving[c.Name] {
				if cs, ok := byName[c.Name]; ok {
					c = withTransition(cs, prev, now)
				}
				clusters = append(clusters, c)
			}
		}
	}
	if len(clusters) > tenancyv1.MaxWorkspaceNamespaces {
		clusters = clusters[:tenancyv1.MaxWorkspaceNamespaces]
	}
	r.events(nsq, prev, clusters)
	st.Clusters = clusters
	st.Hard, st.Used = corev1.ResourceList{}, corev1.ResourceList{}
	active, pending := 0, 0
	failed := map[string]string{}
	for _, c := range clusters {
		if c.Phase == tenancyv1.NamespaceActive || c.Phase == tenancyv1.NamespaceUnreachable || c.Phase == tenancyv1.NamespacePending {
			// What the members enforce and count (an unreachable one as last read).
			addTo(st.Hard, c.Hard)
			addTo(st.Used, c.Used)
		}
		if !selected[c.Name] {
			continue
		}
		switch c.Phase {
		case tenancyv1.NamespaceActive:
			active++
		case tenancyv1.NamespaceFailed:
			failed[c.Name] = c.Message
		default:
			pending++
		}
	}
	st.ClusterSummary = fmt.Sprintf("%d/%d", active, len(p.selected))
	v := p.verdict
	switch {
	case v != nil:
	case len(failed) > 0:
		v = &verdict{reason: tenancyv1.ReasonClustersFailed, stalled: true,
			msg: fmt.Sprintf("%d of %d clusters failed: %s", len(failed), len(p.selected), listFailures(failed))}
	case pending > 0 || len(leaving) > 0 && slices.Contains(removed, false):
		v = &verdict{reason: tenancyv1.ReasonProgressing, reconciling: true,
			msg: fmt.Sprintf("namespace %s is in place in %d of %d clusters", nsq.Spec.Namespace, active, len(p.selected))}
	default:
		v = &verdict{ready: true, reason: tenancyv1.ReasonSucceeded,
			msg: fmt.Sprintf("namespace %s and its quota are in place in %d clusters", nsq.Spec.Namespace, active)}
	}
	ctrl.LoggerFrom(ctx).V(1).Info("NamespaceQuota pass", "generation", nsq.Generation, "apply", p.apply, "worked", work,
		"leaving", leaving, "active", active, "selected", len(p.selected), "reason", v.reason)
	setConditions(&st.Conditions, nsq.Generation, *v)
	st.ObservedGeneration = nsq.Generation
	if !equality.Semantic.DeepEqual(orig.Status, nsq.Status) {
		// With a lock: a pass that read an older copy (the cache behind its own last write) must
		// not write back what that copy said.
		if err := r.Client.Status().Patch(ctx, nsq, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			r.state.redo(nsq.Name, work)
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	if next.IsZero() {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{RequeueAfter: max(time.Until(next), time.Second)}, nil
}

// withTransition stamps the entry's lastTransitionTime when its phase changed.
func withTransition(st tenancyv1.NamespaceClusterStatus, prev map[string]tenancyv1.NamespaceClusterStatus, now time.Time) tenancyv1.NamespaceClusterStatus {
	if p, ok := prev[st.Name]; ok && p.Phase == st.Phase && p.LastTransitionTime != nil {
		st.LastTransitionTime = p.LastTransitionTime
		return st
	}
	t := metav1.NewTime(now.Truncate(time.Second))
	st.LastTransitionTime = &t
	return st
}

// events tells of clusters whose phase changed to Active or Failed.
func (r *NamespaceQuotaReconciler) events(nsq *tenancyv1.NamespaceQuota, prev map[string]tenancyv1.NamespaceClusterStatus, now []tenancyv1.NamespaceClusterStatus) {
	if r.Recorder == nil {
		return
	}
	for _, c := range now {
		p, had := prev[c.Name]
		if had && p.Phase == c.Phase && p.Message == c.Message {
			continue
		}
		switch c.Phase {
		case tenancyv1.NamespaceActive:
			if !had || p.Phase != tenancyv1.NamespaceActive {
				r.Recorder.Eventf(nsq, memberRef(c.Name), corev1.EventTypeNormal, "Applied", "Apply", "namespace %s and its quota are in place in %s", nsq.Spec.Namespace, c.Name)
			}
		case tenancyv1.NamespaceFailed:
			r.Recorder.Eventf(nsq, memberRef(c.Name), corev1.EventTypeWarning, "ApplyFailed", "Apply", "%s: %s", c.Name, c.Message)
		}
	}
}

// plan decides, from the management cluster only, where the namespace goes and whether it may be
// written now.
func (r *NamespaceQuotaReconciler) plan(ctx context.Context, nsq *tenancyv1.NamespaceQuota) (*plan, error) {
	p := &plan{conflicts: map[string]string{}}
	refuse := func(reason, msg string) (*plan, error) {
		p.verdict = &verdict{reason: reason, msg: msg, stalled: true}
		return p, nil
	}
	ws := &tenancyv1.Workspace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: nsq.Spec.Workspace}, ws); err != nil {
		if apierrors.IsNotFound(err) {
			return refuse(tenancyv1.ReasonWorkspaceNotFound, fmt.Sprintf("workspace %q does not exist; nothing is applied until it does", nsq.Spec.Workspace))
		}
		return nil, err
	}
	selected, err := selectClusters(ctx, r.Client, nsq.Spec.Clusters, "spec.clusters")
	var selErr *fleet.SelectorError
	if errors.As(err, &selErr) {
		return refuse(ReasonInvalidSelector, selErr.Error())
	}
	if err != nil {
		return nil, err
	}
	p.selected = selected
	wsClusters, err := selectClusters(ctx, r.Client, ws.Spec.Clusters, "spec.clusters")
	if errors.As(err, &selErr) {
		return refuse(tenancyv1.ReasonClustersOutsideWorkspace, fmt.Sprintf("workspace %s selects no clusters: %v", ws.Name, selErr))
	}
	if err != nil {
		return nil, err
	}
	p.allowed = map[string]bool{}
	inWS := map[string]bool{}
	for _, c := range wsClusters {
		inWS[c] = true
	}
	for _, c := range selected {
		if inWS[c] {
			p.allowed[c] = true
		}
	}
	if out := outside(selected, wsClusters); len(out) > 0 {
		return refuse(tenancyv1.ReasonClustersOutsideWorkspace, fmt.Sprintf("spec.clusters selects %s, outside workspace %s's clusters; nothing is applied until every selected cluster is inside it",
			strings.Join(firstN(out, 10), ", "), ws.Name))
	}
	if len(selected) == 0 {
		p.apply = true
		p.verdict = &verdict{reason: tenancyv1.ReasonNoClusters, msg: "spec.clusters matches no MemberCluster", stalled: true}
		return p, nil
	}
	if ws.Spec.Quota != nil {
		var alloc *tenancyv1.Allocation
		for i := range ws.Status.Allocations {
			if ws.Status.Allocations[i].NamespaceQuota == nsq.Name {
				alloc = &ws.Status.Allocations[i]
			}
		}
		if !admittedFor(alloc, nsq, ws.Spec.Quota.Hard.Core(), len(selected)) {
			if ws.Status.Quota != nil {
				for _, ref := range ws.Status.Quota.Refused {
					if ref.NamespaceQuota == nsq.Name && ref.Generation == nsq.Generation {
						msg := "refused by workspace " + ws.Name + "'s quota: " + ref.Message
						if alloc != nil {
							msg += "; the members keep what was admitted before"
						} else {
							msg += "; nothing is applied"
						}
						return refuse(tenancyv1.ReasonExceedsWorkspaceQuota, msg)
					}
				}
			}
			p.verdict = &verdict{reason: tenancyv1.ReasonProgressing, reconciling: true,
				msg: "waiting for workspace " + ws.Name + "'s budget to admit this spec"}
			return p, nil
		}
	}
	p.apply = true
	// Another NamespaceQuota that holds the namespace in a cluster (has placed it there) keeps
	// it; one that only selects it does not block anyone (the member's labels decide a race).
	var same tenancyv1.NamespaceQuotaList
	if err := r.Client.List(ctx, &same, client.MatchingFields{NamespaceIndex: nsq.Spec.Namespace}); err != nil {
		return nil, err
	}
	in := map[string]bool{}
	for _, c := range selected {
		in[c] = true
	}
	for i := range same.Items {
		o := &same.Items[i]
		if o.UID == nsq.UID {
			continue
		}
		for _, c := range o.Status.Clusters {
			if in[c.Name] && (c.Placed || c.Phase == tenancyv1.NamespaceRemoving) {
				p.conflicts[c.Name] = fmt.Sprintf("%s: NamespaceQuota %s manages namespace %s in %s", tenancyv1.ReasonNamespaceConflict, o.Name, nsq.Spec.Namespace, c.Name)
			}
		}
	}
	if len(p.conflicts) > 0 {
		names := make([]string, 0, len(p.conflicts))
		for c := range p.conflicts {
			names = append(names, c)
		}
		sort.Strings(names)
		p.verdict = &verdict{reason: tenancyv1.ReasonNamespaceConflict, stalled: true,
			msg: fmt.Sprintf("another NamespaceQuota manages namespace %s in %s", nsq.Spec.Namespace, strings.Join(firstN(names, 10), ", "))}
	}
	return p, nil
}

// admittedFor says whether the workspace's ledger admitted this very NamespaceQuota (by UID), at
// its current generation, for this many clusters, with the budgeted part of its spec.
func admittedFor(alloc *tenancyv1.Allocation, nsq *tenancyv1.NamespaceQuota, budget corev1.ResourceList, clusters int) bool {
	if alloc == nil || alloc.Generation != nsq.Generation || int(alloc.Clusters) != clusters || (alloc.UID != "" && alloc.UID != nsq.UID) {
		return false
	}
	for name := range budget {
		a, okA := alloc.Hard[name]
		s, okS := nsq.Spec.Hard[name]
		if !okA || !okS || a.Cmp(s) != 0 {
			return false
		}
	}
	return true
}

func firstN(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(append([]string{}, s[:n]...), fmt.Sprintf("and %d more", len(s)-n))
}

// memberTimeout bounds one pass over one cluster.
const memberTimeout = 30 * time.Second

// syncCluster puts the namespace, its quota and its limits in place in one cluster and reads
// back what the member's quota enforces and counts.
// inPlace says the cluster was Active for this very spec at the last pass: whatever must be
// restored now was changed outside Paddock (a DriftCorrected event).
func (r *NamespaceQuotaReconciler) syncCluster(ctx context.Context, nsq *tenancyv1.NamespaceQuota, tgt target, cluster string, prev tenancyv1.NamespaceClusterStatus, inPlace bool) (tenancyv1.NamespaceClusterStatus, map[string]string, bool) {
	st := tenancyv1.NamespaceClusterStatus{Name: cluster, Created: prev.Created, NamespaceUID: prev.NamespaceUID, Placed: prev.Placed, Hard: prev.Hard, Used: prev.Used}
	fail := func(phase tenancyv1.NamespacePhase, msg string) (tenancyv1.NamespaceClusterStatus, map[string]string, bool) {
		st.Phase, st.Message = phase, truncate(msg, 1024)
		if phase == tenancyv1.NamespaceFailed {
			// Not confirmed to hold its quota: no RoleBindings there meanwhile (an unreachable
			// member keeps what it had).
			st.Placed = false
		}
		return st, nil, true
	}
	acc, err := r.Cache.Get(ctx, cluster)
	if err != nil {
		return fail(tenancyv1.NamespaceUnreachable, notUsable(cluster, err))
	}
	if err := r.watches.ensure(ctx, cluster); err != nil {
		ctrl.LoggerFrom(ctx).V(1).Info("Member watches not running; resyncing more often", "member", cluster, "error", err.Error())
	}
	core, err := acc.CoreV1()
	if err != nil {
		return fail(tenancyv1.NamespaceFailed, err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, memberTimeout)
	defer cancel()
	written := map[string]string{}
	name := nsq.Spec.Namespace
	labels := map[string]string{tenancyv1.NamespaceQuotaLabel: nsq.Name, tenancyv1.WorkspaceLabel: tgt.workspace, ManagedByLabel: managedBy}
	memberErr := func(what string, err error) (tenancyv1.NamespaceClusterStatus, map[string]string, bool) {
		if ctx.Err() != nil || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) {
			return fail(tenancyv1.NamespaceUnreachable, what+": "+err.Error())
		}
		return fail(tenancyv1.NamespaceFailed, what+": "+err.Error())
	}
	corrected := false

	// The namespace: created, or adopted unless another NamespaceQuota holds it.
	ns, err := core.Namespaces().Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		ns = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels,
			Annotations: map[string]string{CreatedByAnnotation: string(nsq.UID)}}}
		if ns, err = core.Namespaces().Create(ctx, ns, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
			return memberErr("creating namespace "+name, err)
		}
		// Created by Paddock: this very namespace (by UID) is the one Delete may delete.
		st.Created, st.NamespaceUID = true, string(ns.UID)
		corrected = inPlace
	case err != nil:
		return memberErr("reading namespace "+name, err)
	default:
		if !ns.DeletionTimestamp.IsZero() {
			st.Placed = false
			return fail(tenancyv1.NamespacePending, fmt.Sprintf("namespace %s is being deleted in %s; it is created again once it is gone", name, cluster))
		}
		if owner := ns.Labels[tenancyv1.NamespaceQuotaLabel]; owner != "" && owner != nsq.Name {
			taken, err := r.heldBy(ctx, owner, name)
			if err != nil {
				return fail(tenancyv1.NamespaceFailed, err.Error())
			}
			if taken {
				st.Placed = false
				return fail(tenancyv1.NamespaceFailed, fmt.Sprintf("%s: namespace %s in %s is managed by NamespaceQuota %s", tenancyv1.ReasonNamespaceConflict, name, cluster, owner))
			}
		}
		if ns.Labels[tenancyv1.WorkspaceLabel] != tgt.workspace && !(prev.Placed && ns.Labels[tenancyv1.NamespaceQuotaLabel] == nsq.Name) {
			// A namespace is adopted only when the member offers it to this workspace (or this
			// NamespaceQuota placed it, and moves it): adopting any namespace, or one merely
			// labelled with this name, would let a workspace admin bind roles in namespaces of
			// system components or of other teams.
			st.Placed = false
			return fail(tenancyv1.NamespaceFailed, fmt.Sprintf("namespace %s exists in %s and is not offered to workspace %s: to let Paddock adopt it, a member admin labels it %s=%s",
				name, cluster, tgt.workspace, tenancyv1.WorkspaceLabel, tgt.workspace))
		}
		if !hasAll(ns.Labels, labels) {
			ns = ns.DeepCopy()
			if ns.Labels == nil {
				ns.Labels = map[string]string{}
			}
			for k, v := range labels {
				ns.Labels[k] = v
			}
			if ns, err = core.Namespaces().Update(ctx, ns, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
				return memberErr("labelling namespace "+name, err)
			}
		}
	}
	written[objectKey("namespaces", "", name)] = ns.ResourceVersion
	if st.NamespaceUID != string(ns.UID) {
		// Not the namespace Paddock created (adopted, or created again by someone else).
		st.Created, st.NamespaceUID = false, ""
	}

	// The quota.
	rqLabels := map[string]string{tenancyv1.NamespaceQuotaLabel: nsq.Name, ManagedByLabel: managedBy}
	rq, err := core.ResourceQuotas(name).Get(ctx, QuotaName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		rq = &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: QuotaName, Namespace: name, Labels: rqLabels},
			Spec: corev1.ResourceQuotaSpec{Hard: tgt.hard.DeepCopy()}}
		if rq, err = core.ResourceQuotas(name).Create(ctx, rq, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
			return memberErr("creating ResourceQuota "+QuotaName, err)
		}
		corrected = corrected || inPlace
	case err != nil:
		return memberErr("reading ResourceQuota "+QuotaName, err)
	default:
		if !hasAll(rq.Labels, rqLabels) || !sameList(rq.Spec.Hard, tgt.hard) || rq.Spec.ScopeSelector != nil || len(rq.Spec.Scopes) > 0 {
			rq = rq.DeepCopy()
			if rq.Labels == nil {
				rq.Labels = map[string]string{}
			}
			for k, v := range rqLabels {
				rq.Labels[k] = v
			}
			corrected = corrected || inPlace
			rq.Spec = corev1.ResourceQuotaSpec{Hard: tgt.hard.DeepCopy()}
			if rq, err = core.ResourceQuotas(name).Update(ctx, rq, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
				return memberErr("updating ResourceQuota "+QuotaName, err)
			}
		}
	}
	written[objectKey("resourcequotas", name, QuotaName)] = rq.ResourceVersion
	// Placed once its quota is there: workspace RoleGrants bind only in a limited namespace.
	st.Placed = true

	// The limits.
	lr, err := core.LimitRanges(name).Get(ctx, LimitRangeName, metav1.GetOptions{})
	want := limitRangeSpec(tgt.limitRange)
	switch {
	case err != nil && !apierrors.IsNotFound(err):
		return memberErr("reading LimitRange "+LimitRangeName, err)
	case want == nil && err == nil:
		if lr.Labels[tenancyv1.NamespaceQuotaLabel] == nsq.Name {
			uid := lr.UID
			if err := core.LimitRanges(name).Delete(ctx, LimitRangeName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
				return memberErr("deleting LimitRange "+LimitRangeName, err)
			}
		}
	case want != nil && apierrors.IsNotFound(err):
		lr = &corev1.LimitRange{ObjectMeta: metav1.ObjectMeta{Name: LimitRangeName, Namespace: name, Labels: rqLabels}, Spec: *want}
		if lr, err = core.LimitRanges(name).Create(ctx, lr, metav1.CreateOptions{FieldManager: fieldManager}); err != nil {
			return memberErr("creating LimitRange "+LimitRangeName, err)
		}
		written[objectKey("limitranges", name, LimitRangeName)] = lr.ResourceVersion
	case want != nil:
		if !hasAll(lr.Labels, rqLabels) || !limitsCover(lr.Spec, *want) {
			lr = lr.DeepCopy()
			if lr.Labels == nil {
				lr.Labels = map[string]string{}
			}
			for k, v := range rqLabels {
				lr.Labels[k] = v
			}
			lr.Spec = *want
			if lr, err = core.LimitRanges(name).Update(ctx, lr, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
				return memberErr("updating LimitRange "+LimitRangeName, err)
			}
		}
		written[objectKey("limitranges", name, LimitRangeName)] = lr.ResourceVersion
	}
	if corrected && r.Recorder != nil {
		r.Recorder.Eventf(nsq, memberRef(cluster), corev1.EventTypeWarning, "DriftCorrected", "Apply",
			"namespace %s in %s had been changed outside Paddock; its quota objects were restored", name, cluster)
	}

	// What the member enforces and counts (its quota controller fills status.hard).
	st.Hard, st.Used = rq.Status.Hard.DeepCopy(), rq.Status.Used.DeepCopy()
	if len(st.Hard) == 0 {
		st.Hard, st.Used = nil, nil
	}
	switch {
	case ns.Status.Phase == corev1.NamespaceTerminating:
		st.Phase, st.Message = tenancyv1.NamespacePending, "namespace "+name+" is being deleted"
	case !sameList(rq.Status.Hard, tgt.hard):
		st.Phase, st.Message = tenancyv1.NamespacePending, "waiting for the member's quota controller to enforce the new hard limits"
	default:
		st.Phase, st.Message = tenancyv1.NamespaceActive, ""
	}
	return st, written, false
}

// fieldManager is the field manager of every write to members.
const fieldManager = "paddock-tenancy"

// heldBy says whether NamespaceQuota owner exists, is not being deleted, and manages namespace.
func (r *NamespaceQuotaReconciler) heldBy(ctx context.Context, owner, namespace string) (bool, error) {
	o := &tenancyv1.NamespaceQuota{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: owner}, o); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return o.Spec.Namespace == namespace, nil
}

// limitsCover says whether a LimitRange holds what want sets: one Container item, max and min
// exactly as wanted, and default and defaultRequest with want's quantities (the apiserver fills
// in default from max, and defaultRequest from default or min: those extra entries are its own;
// any other is drift).
func limitsCover(live, want corev1.LimitRangeSpec) bool {
	if len(live.Limits) != 1 || live.Limits[0].Type != corev1.LimitTypeContainer || len(live.Limits[0].MaxLimitRequestRatio) > 0 {
		return false
	}
	l, w := live.Limits[0], want.Limits[0]
	if !sameList(l.Max, w.Max) || !sameList(l.Min, w.Min) {
		return false
	}
	covers := func(got, wanted corev1.ResourceList, from ...corev1.ResourceList) bool {
		for name, q := range wanted {
			if g, ok := got[name]; !ok || g.Cmp(q) != 0 {
				return false
			}
		}
		for name, g := range got {
			if _, ok := wanted[name]; ok {
				continue
			}
			derived := false
			for _, f := range from {
				if q, ok := f[name]; ok && q.Cmp(g) == 0 {
					derived = true
				}
			}
			if !derived {
				return false
			}
		}
		return true
	}
	return covers(l.Default, w.Default, l.Max) && covers(l.DefaultRequest, w.DefaultRequest, l.Default, l.Min)
}

// limitRangeSpec is the LimitRange a spec asks for, or nil.
func limitRangeSpec(d *tenancyv1.LimitRangeDefaults) *corev1.LimitRangeSpec {
	if d == nil {
		return nil
	}
	return &corev1.LimitRangeSpec{Limits: []corev1.LimitRangeItem{{
		Type:           corev1.LimitTypeContainer,
		Default:        d.Default.Core().DeepCopy(),
		DefaultRequest: d.DefaultRequest.Core().DeepCopy(),
		Max:            d.Max.Core().DeepCopy(),
		Min:            d.Min.Core().DeepCopy(),
	}}}
}

func hasAll(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// sameList compares resource lists by value (1000m equals 1).
func sameList(a, b corev1.ResourceList) bool {
	if len(a) != len(b) {
		return false
	}
	for k, q := range a {
		o, ok := b[k]
		if !ok || q.Cmp(o) != 0 {
			return false
		}
	}
	return true
}

// cleanupCluster removes what the NamespaceQuota placed in one cluster: its quota objects, and
// the namespace if Paddock created it and deletionPolicy is Delete (else the namespace only loses
// Paddock's labels). It says whether the cluster is done, else why not.
func (r *NamespaceQuotaReconciler) cleanupCluster(ctx context.Context, nsq *tenancyv1.NamespaceQuota, cluster string, placed tenancyv1.NamespaceClusterStatus) (bool, string) {
	acc, gone, err := cleanupAccessor(ctx, r.Client, r.Cache, cluster)
	if gone {
		return true, ""
	}
	if err != nil {
		return false, notUsable(cluster, err)
	}
	core, err := acc.CoreV1()
	if err != nil {
		return false, err.Error()
	}
	ctx, cancel := context.WithTimeout(ctx, memberTimeout)
	defer cancel()
	name := nsq.Spec.Namespace
	ns, err := core.Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, ""
	}
	if err != nil {
		return false, "reading namespace " + name + ": " + err.Error()
	}
	if ns.Labels[tenancyv1.NamespaceQuotaLabel] != nsq.Name {
		// Not ours (any more): nothing of ours is in it.
		return true, ""
	}
	if nsq.Spec.DeletionPolicy == tenancyv1.NamespaceDelete && placed.Created && placed.NamespaceUID == string(ns.UID) {
		uid := ns.UID
		if err := core.Namespaces().Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return false, "deleting namespace " + name + ": " + err.Error()
		}
		if r.Recorder != nil {
			r.Recorder.Eventf(nsq, memberRef(cluster), corev1.EventTypeNormal, "NamespaceDeleted", "Delete", "deleted namespace %s in %s (deletionPolicy Delete; Paddock created it)", name, cluster)
		}
		return true, ""
	}
	rq, err := core.ResourceQuotas(name).Get(ctx, QuotaName, metav1.GetOptions{})
	if err == nil && rq.Labels[tenancyv1.NamespaceQuotaLabel] == nsq.Name {
		uid := rq.UID
		if err := core.ResourceQuotas(name).Delete(ctx, QuotaName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return false, "deleting ResourceQuota " + QuotaName + ": " + err.Error()
		}
	} else if err != nil && !apierrors.IsNotFound(err) {
		return false, "reading ResourceQuota " + QuotaName + ": " + err.Error()
	}
	lr, err := core.LimitRanges(name).Get(ctx, LimitRangeName, metav1.GetOptions{})
	if err == nil && lr.Labels[tenancyv1.NamespaceQuotaLabel] == nsq.Name {
		uid := lr.UID
		if err := core.LimitRanges(name).Delete(ctx, LimitRangeName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
			return false, "deleting LimitRange " + LimitRangeName + ": " + err.Error()
		}
	} else if err != nil && !apierrors.IsNotFound(err) {
		return false, "reading LimitRange " + LimitRangeName + ": " + err.Error()
	}
	// The namespace stays, out of Paddock's hands; it keeps its workspace label, which offers it
	// to that workspace again (a new NamespaceQuota of the workspace may adopt it).
	patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:null,%q:null},"annotations":{%q:null}}}`,
		tenancyv1.NamespaceQuotaLabel, ManagedByLabel, CreatedByAnnotation))
	if _, err := core.Namespaces().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager}); err != nil && !apierrors.IsNotFound(err) {
		return false, "releasing namespace " + name + ": " + err.Error()
	}
	return true, ""
}

// finalize removes what the NamespaceQuota placed in every cluster it may have placed it in (the
// clusters in its status and those it selects), then lets it go. Never wedged: clusters that
// stay unreachable for the grace period are left (a Warning event names them).
func (r *NamespaceQuotaReconciler) finalize(ctx context.Context, nsq *tenancyv1.NamespaceQuota) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(nsq, tenancyv1.NamespaceQuotaFinalizer) {
		return ctrl.Result{}, nil
	}
	seen := map[string]bool{}
	var clusters []string
	for _, c := range nsq.Status.Clusters {
		if !seen[c.Name] {
			seen[c.Name] = true
			clusters = append(clusters, c.Name)
		}
	}
	if sel, err := selectClusters(ctx, r.Client, nsq.Spec.Clusters, "spec.clusters"); err == nil {
		for _, c := range sel {
			if !seen[c] {
				seen[c] = true
				clusters = append(clusters, c)
			}
		}
	}
	done := make([]bool, len(clusters))
	msgs := make([]string, len(clusters))
	placed := map[string]tenancyv1.NamespaceClusterStatus{}
	for _, c := range nsq.Status.Clusters {
		placed[c.Name] = c
	}
	for _, c := range clusters {
		if u := r.state.createdUID(nsq.Name, nsq.UID, c); u != "" && placed[c].NamespaceUID == "" {
			p := placed[c]
			p.Created, p.NamespaceUID = true, u
			placed[c] = p
		}
	}
	forEachCluster(clusters, func(i int, c string) { done[i], msgs[i] = r.cleanupCluster(ctx, nsq, c, placed[c]) })
	left := map[string]string{}
	for i, c := range clusters {
		if !done[i] {
			left[c] = msgs[i]
		}
	}
	if len(left) > 0 {
		if waited := time.Since(nsq.DeletionTimestamp.Time); waited < r.grace() {
			orig := nsq.DeepCopy()
			var st []tenancyv1.NamespaceClusterStatus
			prev := map[string]tenancyv1.NamespaceClusterStatus{}
			for _, c := range nsq.Status.Clusters {
				prev[c.Name] = c
			}
			for c, msg := range left {
				e := prev[c]
				e.Name, e.Phase, e.Message = c, tenancyv1.NamespaceRemoving, truncate(msg, 1024)
				st = append(st, withTransition(e, prev, time.Now()))
			}
			sort.Slice(st, func(i, j int) bool { return st[i].Name < st[j].Name })
			nsq.Status.Clusters = st
			setConditions(&nsq.Status.Conditions, nsq.Generation, verdict{reason: tenancyv1.ReasonDeleting, reconciling: true,
				msg: fmt.Sprintf("removing the quota objects; %d clusters not reached yet: %s", len(left), listFailures(left))})
			if err := r.Client.Status().Patch(ctx, nsq, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
				return ctrl.Result{}, client.IgnoreNotFound(err)
			}
			return ctrl.Result{RequeueAfter: min(10*time.Second, r.grace()-waited)}, nil
		}
		if r.Recorder != nil {
			r.Recorder.Eventf(nsq, nil, corev1.EventTypeWarning, "CleanupAbandoned", "Delete",
				"gave up removing namespace %s's quota objects after %s from clusters not reachable: %s", nsq.Spec.Namespace, r.grace(), listFailures(left))
		}
	}
	orig := nsq.DeepCopy()
	controllerutil.RemoveFinalizer(nsq, tenancyv1.NamespaceQuotaFinalizer)
	if err := r.Client.Patch(ctx, nsq, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	r.state.forgetOwner(nsq.Name, nil)
	return ctrl.Result{}, nil
}
