package tenancy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
	"github.com/paddock-dev/paddock/internal/clustercache"
)

// ManagedByLabel marks every object the tenancy controllers place in members.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	managedBy      = "paddock"
)

// maxParallelClusters bounds the clusters one reconcile works on at once.
const maxParallelClusters = 16

// verdict is a tenancy object's overall state, for its kstatus conditions.
type verdict struct {
	ready       bool
	reason, msg string
	// stalled: nothing will change without a change of spec or of what it depends on;
	// reconciling: work is under way (or awaited from a member).
	stalled, reconciling bool
}

// setConditions writes Ready, and Reconciling or Stalled only while true (kstatus).
func setConditions(conds *[]metav1.Condition, gen int64, v verdict) {
	status := metav1.ConditionFalse
	if v.ready {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(conds, metav1.Condition{Type: tenancyv1.ReadyCondition, Status: status, Reason: v.reason,
		Message: truncate(v.msg, 32*1024), ObservedGeneration: gen})
	for _, c := range []struct {
		t  string
		on bool
	}{{tenancyv1.StalledCondition, v.stalled}, {tenancyv1.ReconcilingCondition, v.reconciling}} {
		if c.on {
			meta.SetStatusCondition(conds, metav1.Condition{Type: c.t, Status: metav1.ConditionTrue, Reason: v.reason,
				Message: truncate(v.msg, 32*1024), ObservedGeneration: gen})
		} else {
			meta.RemoveStatusCondition(conds, c.t)
		}
	}
}

// forEachCluster runs fn for every cluster, at most maxParallelClusters at once.
func forEachCluster(clusters []string, fn func(i int, cluster string)) {
	sem := make(chan struct{}, maxParallelClusters)
	var wg sync.WaitGroup
	for i, c := range clusters {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(i, c)
		}()
	}
	wg.Wait()
}

// notUsable says why a member cannot be worked on now.
func notUsable(name string, err error) string {
	var nre *clustercache.NotReadyError
	if errors.As(err, &nre) {
		return fmt.Sprintf("member %s is not usable (%s); retried when it is Ready", name, nre.Reason)
	}
	return fmt.Sprintf("member %s is not connected; retried when it is Ready", name)
}

// memberRef is the regarding/related object of events about one member.
func memberRef(cluster string) *clustersv1.MemberCluster {
	return &clustersv1.MemberCluster{
		TypeMeta:   metav1.TypeMeta{APIVersion: clustersv1.GroupVersion.String(), Kind: "MemberCluster"},
		ObjectMeta: metav1.ObjectMeta{Name: cluster}}
}

// cleanupAccessor returns the member's accessor for removing what Paddock placed there: the
// usable connection, or while its MemberCluster is being deleted the cleanup one. gone: the
// MemberCluster no longer exists (nothing is reachable through Paddock any more). A member that
// is not usable and not being deleted fails at once, not after a request's timeout.
func cleanupAccessor(ctx context.Context, c client.Reader, cache clustercache.Reader, name string) (acc *clustercache.Accessor, gone bool, err error) {
	acc, err = cache.Get(ctx, name)
	if err == nil {
		return acc, false, nil
	}
	mc := &clustersv1.MemberCluster{}
	if gerr := c.Get(ctx, client.ObjectKey{Name: name}, mc); gerr != nil {
		return nil, apierrors.IsNotFound(gerr), err
	}
	if mc.DeletionTimestamp.IsZero() {
		return nil, false, err
	}
	acc, err = cache.GetForCleanup(ctx, name)
	return acc, false, err
}

// listFailures formats "cluster: message" for the first few failed clusters.
func listFailures(failed map[string]string) string {
	names := make([]string, 0, len(failed))
	for n := range failed {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for i, n := range names {
		if i == 5 {
			parts = append(parts, fmt.Sprintf("and %d more", len(names)-5))
			break
		}
		parts = append(parts, n+": "+failed[n])
	}
	return strings.Join(parts, "; ")
}

var (
	indexMu    sync.Mutex
	indexed    = map[ctrl.Manager]bool{}
	finalizing = map[ctrl.Manager]bool{}
)

// indexOnce registers the manager's NamespaceQuota indexes once, whichever tenancy controller
// is set up first.
func indexOnce(ctx context.Context, mgr ctrl.Manager) error {
	indexMu.Lock()
	defer indexMu.Unlock()
	if indexed[mgr] {
		return nil
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tenancyv1.NamespaceQuota{}, WorkspaceIndex, quotaWorkspaces); err != nil {
		return fmt.Errorf("indexing NamespaceQuotas by workspace: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tenancyv1.NamespaceQuota{}, NamespaceIndex, func(o client.Object) []string {
		return []string{o.(*tenancyv1.NamespaceQuota).Spec.Namespace}
	}); err != nil {
		return fmt.Errorf("indexing NamespaceQuotas by namespace: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tenancyv1.NamespaceQuota{}, statusClusterIndex, quotaStatusClusters); err != nil {
		return fmt.Errorf("indexing NamespaceQuotas by cluster: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tenancyv1.RoleGrant{}, statusClusterIndex, grantStatusClusters); err != nil {
		return fmt.Errorf("indexing RoleGrants by cluster: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &tenancyv1.RoleGrant{}, GrantWorkspaceIndex, func(o client.Object) []string {
		if ws := o.(*tenancyv1.RoleGrant).Spec.Scope.Workspace; ws != "" {
			return []string{ws}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("indexing RoleGrants by workspace: %w", err)
	}
	indexed[mgr] = true
	return nil
}

// setupMemberFinalizer registers the controller of MemberFinalizer once per manager, whichever
// of the NamespaceQuota and RoleGrant controllers is set up first.
func setupMemberFinalizer(mgr ctrl.Manager, grace time.Duration) error {
	indexMu.Lock()
	defer indexMu.Unlock()
	if finalizing[mgr] {
		return nil
	}
	finalizing[mgr] = true
	return (&memberFinalizer{client: mgr.GetClient(), grace: grace}).setup(mgr)
}
